import math

import pytest
import torch

from fedmosaic.models.probabilistic import LOGVAR_MAX, ProbabilisticHead, gaussian_kl


def test_gaussian_kl_is_zero_for_the_prior():
    kl = gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3))

    torch.testing.assert_close(kl, torch.zeros(2))


def test_gaussian_kl_matches_closed_form_by_hand():
    mu = torch.tensor([[1.0, 2.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)]])
    # 0.5 * [(1 + 1 - 0 - 1) + (4 + 2 - ln 2 - 1)] = 0.5 * (6 - ln 2)
    expected = torch.tensor([0.5 * (6.0 - math.log(2.0))])

    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)


def test_gaussian_kl_is_non_negative():
    generator = torch.Generator().manual_seed(0)
    mu = 3 * torch.randn(50, 4, generator=generator)
    logvar = 3 * torch.randn(50, 4, generator=generator)

    assert (gaussian_kl(mu, logvar) >= 0).all()


def test_gaussian_kl_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 4))


def test_head_is_deterministic_in_eval_and_samples_in_training():
    torch.manual_seed(0)
    head = ProbabilisticHead(hidden_dim=6, embed_dim=4)
    features = torch.randn(3, 6)

    head.eval()
    z_eval, mu_eval, _ = head(features)
    z_eval_again, _, _ = head(features)
    head.train()
    z_a, mu_train, _ = head(features)
    z_b, _, _ = head(features)

    torch.testing.assert_close(z_eval, mu_eval)
    torch.testing.assert_close(z_eval, z_eval_again)
    torch.testing.assert_close(mu_train, mu_eval)
    assert not torch.equal(z_a, z_b)


def test_head_clamps_log_variance():
    head = ProbabilisticHead(hidden_dim=2, embed_dim=3)
    with torch.no_grad():
        head.log_variance.weight.zero_()
        head.log_variance.bias.fill_(100.0)

    _, _, logvar = head(torch.randn(4, 2))

    torch.testing.assert_close(logvar, torch.full((4, 3), LOGVAR_MAX))


@pytest.mark.parametrize(("hidden_dim", "embed_dim"), [(0, 3), (3, 0)])
def test_head_rejects_non_positive_sizes(hidden_dim, embed_dim):
    with pytest.raises(ValueError, match="must be >= 1"):
        ProbabilisticHead(hidden_dim, embed_dim)
