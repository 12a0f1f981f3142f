import math

import dp_accounting
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmosaic import records
from fedmosaic.privacy.accounting import (
    Segment,
    calibrate_noise_multiplier,
    epsilon_spent,
    least_round_epsilon,
    poisson_plan,
)
from fedmosaic.privacy.ledger import PrivacyLedger
from fedmosaic.privacy.renyi_filter import FILTER_ORDERS, admits, filter_epsilon

DELTA = 1e-5


def google_filter_epsilon(segments, delta):
    """The filter ε from Google's dp-accounting RDP (an independent implementation), by hand."""
    accountant = dp_accounting.rdp.RdpAccountant(orders=list(FILTER_ORDERS))
    for sigma, q, steps in segments:
        accountant.compose(dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps))
    rdp = np.asarray(accountant._rdp)  # S(α) at every order, as that library composed it
    orders = np.asarray(FILTER_ORDERS)
    return float(np.min(rdp + math.log(len(orders) / delta) / (orders - 1.0)))


@pytest.mark.parametrize("segments", [
    [(1.0, 0.1, 30)],
    [(0.7, 0.2, 10), (3.0, 0.2, 10), (1.4, 0.2, 10)],  # σ chosen round by round
    [(25.0, 1 / 3, 6), (0.9, 1 / 3, 6)],
])
def test_the_filter_epsilon_matches_an_independent_rdp_composition(segments):
    ours = epsilon_spent([Segment(*s) for s in segments], DELTA, "filter")

    assert ours == pytest.approx(google_filter_epsilon(segments, DELTA), rel=1e-6)


def test_the_filter_costs_more_than_the_non_adaptive_rdp_conversion():
    history = [Segment(1.1, 0.2, 25)] * 4

    adaptive, fixed = (epsilon_spent(history, DELTA, a) for a in ("filter", "rdp"))

    assert fixed < adaptive < 1.6 * fixed  # the price of adaptivity, bounded here


def test_filter_epsilon_by_hand_for_a_two_order_grid():
    # S = (1, 0.5) at orders (2, 11): min(1 + log(2/δ)/1, 0.5 + log(2/δ)/10)
    expected = 0.5 + math.log(2 / DELTA) / 10

    assert filter_epsilon([1.0, 0.5], DELTA, orders=(2.0, 11.0)) == pytest.approx(expected)
    assert admits([1.0, 0.5], DELTA, cap=expected, orders=(2.0, 11.0))
    assert not admits([1.0, 0.5], DELTA, cap=0.99 * expected, orders=(2.0, 11.0))


@pytest.mark.parametrize("rdp, delta, orders, match", [
    ([1.0], 0.0, (2.0,), "delta"),
    ([1.0, 2.0], DELTA, (2.0,), "one Rényi DP value per order"),
    ([1.0], DELTA, (1.0,), "orders must be > 1"),
])
def test_bad_filter_inputs_are_refused(rdp, delta, orders, match):
    with pytest.raises(ValueError, match=match):
        filter_epsilon(rdp, delta, orders)


def device_round(history, share, cap, rate, steps):
    """What an honest device does with a controller's share: σ for this round, or refusal."""
    least = least_round_epsilon(history, rate, steps, DELTA, "filter")
    target = least + share * (cap - least)
    try:
        sigma = calibrate_noise_multiplier(target, DELTA, rate, steps, tuple(history), "filter",
                                           max(1e-9, 0.01 * (target - least)))
    except ValueError:
        return None
    segment = Segment(sigma, rate, steps)
    return segment if epsilon_spent([*history, segment], DELTA, "filter") <= cap else None


def reply(partition, segment, cap):
    return {records.PARTITION_ID: partition, records.DP_EPSILON_SPENT: 0.0,
            records.DP_EPSILON_BUDGET: cap, records.DP_DELTA: DELTA,
            records.DP_NOISE_MULTIPLIER: segment.noise_multiplier, records.DP_REFUSED: 0,
            records.DP_SAMPLE_RATE: segment.sample_rate, records.DP_STEPS: segment.steps}


@settings(max_examples=40, deadline=None)
@given(cap=st.sampled_from([1.0, 3.0, 8.0]),
       shares=st.lists(st.floats(0.001, 1.0), min_size=1, max_size=12),
       cheat=st.lists(st.floats(0.05, 1.0), min_size=12, max_size=12))
def test_the_cap_holds_under_any_sequence_of_shares_and_lying_devices(cap, shares, cheat):
    rate, steps, _ = poisson_plan(200, 32, 1, 1)
    ledger = PrivacyLedger(accountant="filter")
    honest, liar = [], []
    for server_round, (share, factor) in enumerate(zip(shares, cheat, strict=False), start=1):
        segment = device_round(honest, share, cap, rate, steps)
        if segment is not None:
            assert ledger.record_reply(server_round, reply(0, segment, cap), cap) == "trained"
            honest.append(segment)
        # an adversarial device trains with less noise than it was told: the ledger catches it
        # as soon as its own account passes the cap
        planned = device_round(liar, 1.0, cap, rate, steps)
        if planned is not None:
            lying = Segment(planned.noise_multiplier * factor, rate, steps)
            if ledger.record_reply(server_round, reply(1, lying, cap), cap) == "trained":
                liar.append(lying)
    for admitted in (honest, liar):  # what was aggregated composes within the cap
        assert epsilon_spent(admitted, DELTA, "filter") <= cap * (1 + 1e-6)
    assert not ledger.devices.get(0) or not ledger.devices[0].over_cap
