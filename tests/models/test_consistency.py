import pytest
import torch

from fedmosaic.models.consistency import cross_modal_consistency


def test_identical_embeddings_are_fully_consistent():
    mu = torch.tensor([1.0, -2.0, 0.5])
    mus = torch.stack([mu, 3 * mu]).unsqueeze(0)

    loss = cross_modal_consistency(mus, torch.ones(1, 2, dtype=torch.bool))

    torch.testing.assert_close(loss, torch.tensor(0.0))


def test_orthogonal_embeddings_have_disagreement_one():
    mus = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])

    loss = cross_modal_consistency(mus, torch.ones(1, 2, dtype=torch.bool))

    torch.testing.assert_close(loss, torch.tensor(1.0))


def test_averages_over_present_pairs_and_counts_samples_without_a_pair_as_zero():
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    mus = torch.tensor([[e1, e2, e1], [e1, [-1.0, 0.0], e2], [e1, e2, e2]])
    mask = torch.tensor([[True, True, True], [True, True, False], [False, True, False]])
    # sample 0: pairs (0,1)=1, (0,2)=0, (1,2)=1 -> 2/3; sample 1: (0,1) = 1 - (-1) = 2;
    # sample 2 has one present modality and adds 0: the mean is over the batch, so no sample's
    # gradient depends on how many others have a pair (DP-SGD's per-sample bound).
    expected = torch.tensor((2 / 3 + 2.0) / 3)

    torch.testing.assert_close(cross_modal_consistency(mus, mask), expected)


def test_no_pairs_gives_zero_with_graph():
    mus = torch.randn(3, 2, 4, requires_grad=True)
    mask = torch.tensor([[True, False], [False, True], [True, False]])

    loss = cross_modal_consistency(mus, mask)
    loss.backward()

    assert loss.item() == 0.0
    assert (mus.grad == 0).all()


def test_missing_modalities_get_exactly_zero_gradient():
    mus = torch.randn(2, 3, 4, requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, False]])

    cross_modal_consistency(mus, mask).backward()

    assert (mus.grad[:, 2] == 0).all()
    assert (mus.grad[:, :2] != 0).any()


def test_rejects_mask_of_wrong_shape():
    with pytest.raises(ValueError, match="mask must be bool of shape"):
        cross_modal_consistency(torch.zeros(2, 3, 4), torch.ones(2, 2, dtype=torch.bool))
