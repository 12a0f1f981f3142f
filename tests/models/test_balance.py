import pytest
import torch

from fedmosaic.models.balance import gate_balance_loss


def test_equal_shares_cost_nothing():
    weights = torch.full((4, 2), 0.5)
    mask = torch.ones(4, 2, dtype=torch.bool)

    assert gate_balance_loss(weights, mask).item() == pytest.approx(0.0)


def test_collapsed_gate_costs_the_squared_coefficient_of_variation():
    # importance I = (0.9, 0.1): var = 0.16, mean^2 = 0.25 -> CV^2 = 0.64
    weights = torch.tensor([[0.9, 0.1], [0.9, 0.1]])
    mask = torch.ones(2, 2, dtype=torch.bool)

    assert gate_balance_loss(weights, mask).item() == pytest.approx(0.64)


def test_importance_averages_only_over_samples_holding_the_modality():
    # modality 0: (1 + 0.5 + 0.5) / 3 samples; modalities 1 and 2: 0.5 / 1 sample
    weights = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5]])
    mask = torch.tensor([[True, False, False], [True, True, False], [True, False, True]])
    importance = torch.tensor([2 / 3, 0.5, 0.5])
    expected = importance.var(unbiased=False) / importance.mean() ** 2

    assert gate_balance_loss(weights, mask).item() == pytest.approx(expected.item())


def test_modality_absent_from_the_batch_is_left_out_and_gets_no_gradient():
    logits = torch.tensor([[0.3, 9.0, -0.2], [0.1, 9.0, 0.4]], requires_grad=True)
    mask = torch.tensor([[True, False, True], [True, False, True]])
    weights = torch.softmax(torch.where(mask, logits, float("-inf")), dim=1)

    gate_balance_loss(weights, mask).backward()

    assert logits.grad[:, 1].abs().sum().item() == 0.0


def test_single_modality_gives_zero_attached_to_the_graph():
    weights = torch.ones(3, 1, requires_grad=True)

    loss = gate_balance_loss(weights, torch.ones(3, 1, dtype=torch.bool))
    loss.backward()

    assert loss.item() == 0.0 and weights.grad is not None


@pytest.mark.parametrize(("weights", "mask"), [
    (torch.ones(2, 3), torch.ones(2, 2, dtype=torch.bool)),
    (torch.ones(2, 2), torch.ones(2, 2)),
])
def test_bad_shapes_or_dtypes_are_rejected(weights, mask):
    with pytest.raises(ValueError, match="must be \\(B, M\\) tensors"):
        gate_balance_loss(weights, mask)
