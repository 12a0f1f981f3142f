import math

import pytest
import torch

from fedmosaic.models.fusion import HierarchicalMoEFusion, ModalityExperts, masked_softmax

E1, E3 = math.exp(1.0), math.exp(3.0)


@pytest.mark.parametrize(
    ("logits", "mask", "expected"),
    [
        ([1.0, 2.0, 3.0], [True, False, True], [E1 / (E1 + E3), 0.0, E3 / (E1 + E3)]),
        ([0.0, 0.0, 0.0], [True, True, True], [1 / 3, 1 / 3, 1 / 3]),
        ([5.0, -2.0, 9.0], [False, True, False], [0.0, 1.0, 0.0]),
        ([float("inf"), 0.0, 0.0], [False, True, True], [0.0, 0.5, 0.5]),
    ],
)
def test_masked_softmax_table(logits, mask, expected):
    weights = masked_softmax(torch.tensor([logits]), torch.tensor([mask]))

    torch.testing.assert_close(weights, torch.tensor([expected]))


def test_masked_softmax_gives_masked_entries_exactly_zero_gradient():
    logits = torch.tensor([[0.3, -1.0, 2.0]], requires_grad=True)
    mask = torch.tensor([[True, False, True]])

    (masked_softmax(logits, mask) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()

    assert logits.grad[0, 1].item() == 0.0
    assert logits.grad[0, 0].item() != 0.0


def test_masked_softmax_rejects_an_all_false_row():
    mask = torch.tensor([[True, False], [False, False]])

    with pytest.raises(ValueError, match="all-False row"):
        masked_softmax(torch.zeros(2, 2), mask)


def test_masked_softmax_rejects_non_bool_mask():
    with pytest.raises(ValueError, match="torch.bool"):
        masked_softmax(torch.zeros(1, 2), torch.ones(1, 2))


def _fusion_inputs(batch_size=4, modalities=3, dim=5):
    torch.manual_seed(0)
    z = torch.randn(batch_size, modalities, dim)
    logvar = torch.randn(batch_size, modalities, dim)
    return z, logvar


def test_fusion_shapes_and_zero_weight_for_missing_modalities():
    fusion = HierarchicalMoEFusion(num_modalities=3, embed_dim=5, num_experts=2)
    z, logvar = _fusion_inputs()
    mask = torch.tensor(
        [[True, True, True], [True, False, True], [False, False, True], [False, True, False]]
    )

    fused, weights = fusion(z, logvar, mask)

    assert fused.shape == (4, 5)
    assert weights.shape == (4, 3)
    assert (weights[~mask] == 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(4))


def test_fusion_does_not_leak_non_finite_values_of_missing_modalities():
    fusion = HierarchicalMoEFusion(num_modalities=2, embed_dim=5, num_experts=2)
    z, logvar = _fusion_inputs(modalities=2)
    z = z.clone()
    z[:, 1] = float("nan")
    logvar[:, 1] = float("inf")
    z.requires_grad_(True)
    mask = torch.tensor([[True, False]] * 4)

    fused, weights = fusion(z, logvar, mask)
    fused.sum().backward()

    assert torch.isfinite(fused).all()
    torch.testing.assert_close(weights, torch.tensor([[1.0, 0.0]] * 4))
    assert (z.grad[:, 1] == 0).all()
    for name, parameter in fusion.named_parameters():
        assert torch.isfinite(parameter.grad).all(), name
    assert all((p.grad == 0).all() for p in fusion.level1[1].parameters())


def test_fusion_rejects_all_false_mask_row():
    fusion = HierarchicalMoEFusion(num_modalities=2, embed_dim=5, num_experts=1)
    z, logvar = _fusion_inputs(batch_size=2, modalities=2)

    with pytest.raises(ValueError, match="all-False row"):
        fusion(z, logvar, torch.tensor([[True, False], [False, False]]))


def test_fusion_rejects_wrong_shapes():
    fusion = HierarchicalMoEFusion(num_modalities=2, embed_dim=5, num_experts=1)
    z, logvar = _fusion_inputs(batch_size=2, modalities=3)

    with pytest.raises(ValueError, match="z and logvar must have shape"):
        fusion(z, logvar, torch.ones(2, 3, dtype=torch.bool))


@pytest.mark.parametrize("argument", ["num_modalities", "embed_dim", "num_experts"])
def test_fusion_rejects_non_positive_sizes(argument):
    sizes = {"num_modalities": 2, "embed_dim": 4, "num_experts": 2, argument: 0}

    with pytest.raises(ValueError, match=f"{argument} must be >= 1"):
        HierarchicalMoEFusion(**sizes)


@pytest.mark.parametrize(("embed_dim", "num_experts"), [(0, 2), (4, 0)])
def test_modality_experts_reject_non_positive_sizes(embed_dim, num_experts):
    with pytest.raises(ValueError, match="must be >= 1"):
        ModalityExperts(embed_dim, num_experts)
