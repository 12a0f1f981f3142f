import math

import dp_accounting
import pytest

from fedmosaic.privacy.accounting import (
    RDP_ORDERS,
    Segment,
    calibrate_noise_multiplier,
    epsilon_spent,
    poisson_plan,
)


def google_rdp_epsilon(segments, delta):
    """ε from Google's dp-accounting (an independent RDP implementation)."""
    accountant = dp_accounting.rdp.RdpAccountant(orders=list(RDP_ORDERS))
    for sigma, q, steps in segments:
        accountant.compose(dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps))
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("segments, delta", [
    ([(1.0, 0.01, 1000)], 1e-5),
    ([(2.2, 0.2, 250)], 1e-5),
    ([(0.8, 0.05, 300)], 1e-6),
    ([(1.1, 1 / 5, 25), (1.1, 1 / 5, 25), (3.0, 1 / 4, 40)], 1e-5),
    ([(5.0, 1.0, 10)], 1e-5),
])
def test_rdp_epsilon_matches_google_dp_accounting_within_one_percent(segments, delta):
    expected = google_rdp_epsilon(segments, delta)

    ours = epsilon_spent([Segment(*s) for s in segments], delta, "rdp")

    assert ours == pytest.approx(expected, rel=0.01)


def test_prv_epsilon_is_at_most_rdp_and_close_to_it():
    history = [Segment(1.0, 0.01, 1000)]

    prv, rdp = epsilon_spent(history, 1e-5, "prv"), epsilon_spent(history, 1e-5, "rdp")

    assert 0.5 * rdp < prv <= rdp


def test_segments_compose_like_one_run():
    split = [Segment(1.5, 0.1, 40)] * 5

    assert epsilon_spent(split, 1e-5) == pytest.approx(epsilon_spent([Segment(1.5, 0.1, 200)],
                                                                      1e-5), rel=1e-9)


def test_empty_history_has_spent_nothing():
    assert epsilon_spent([], 1e-5) == 0.0


@pytest.mark.parametrize("epsilon", [1.0, 3.0, 8.0])
def test_calibrated_noise_meets_the_budget_within_tolerance(epsilon):
    sigma = calibrate_noise_multiplier(epsilon, 1e-5, 0.2, 250)

    spent = epsilon_spent([Segment(sigma, 0.2, 250)], 1e-5)
    assert epsilon - 0.01 <= spent <= epsilon


def test_calibration_after_a_history_spends_only_the_rest():
    history = (Segment(3.0, 0.2, 50),)

    sigma = calibrate_noise_multiplier(8.0, 1e-5, 0.2, 200, history)

    assert 7.99 <= epsilon_spent([*history, Segment(sigma, 0.2, 200)], 1e-5) <= 8.0


def test_calibration_refuses_when_the_history_exhausts_the_budget():
    history = (Segment(0.5, 1.0, 100),)  # far beyond ε = 1

    with pytest.raises(ValueError, match="leaves no room"):
        calibrate_noise_multiplier(1.0, 1e-5, 0.2, 10, history)


def test_poisson_plan_follows_opacus_dp_data_loader():
    # n = 140, B = 32: ceil(140/32) = 5 batches, q = 1/5, 5 steps per epoch
    assert poisson_plan(140, 32, 2, 10) == (0.2, 10, 100)


@pytest.mark.parametrize("call, message", [
    (lambda: epsilon_spent([Segment(1, 0.1, 1)], 0.0), "delta"),
    (lambda: epsilon_spent([Segment(1, 0.1, 1)], 1e-5, "gdp"), "dp-accountant"),
    (lambda: calibrate_noise_multiplier(0.0, 1e-5, 0.1, 10), "epsilon"),
    (lambda: calibrate_noise_multiplier(math.inf, 1e-5, 0.1, 10), "epsilon"),
    (lambda: calibrate_noise_multiplier(1.0, 1e-5, 1.5, 10), "sample_rate"),
    (lambda: calibrate_noise_multiplier(1.0, 1e-5, 0.1, 0), "steps"),
    (lambda: Segment(0.0, 0.1, 1), "noise_multiplier"),
    (lambda: Segment(1.0, 0.0, 1), "sample_rate"),
    (lambda: poisson_plan(0, 32, 1, 1), "num_examples"),
    (lambda: poisson_plan(10, 32, 1, 0), "rounds"),
])
def test_bad_inputs_are_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()
