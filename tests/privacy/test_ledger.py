import json

import pytest

from fedmosaic import records
from fedmosaic.privacy.accounting import Segment, epsilon_spent
from fedmosaic.privacy.ledger import CentralEntry, PrivacyLedger


def reply_metrics(partition, spent, refused=0, budget=5.0):
    return {records.PARTITION_ID: partition, records.DP_EPSILON_SPENT: spent,
            records.DP_EPSILON_BUDGET: budget, records.DP_DELTA: 1e-5,
            records.DP_NOISE_MULTIPLIER: 1.2, records.DP_REFUSED: refused,
            records.DP_SAMPLE_RATE: 0.2, records.DP_STEPS: 0 if refused else 5}


def test_replies_accumulate_rounds_and_refusals_per_device():
    ledger = PrivacyLedger()

    ledger.record_reply(1, reply_metrics(0, 1.5))
    ledger.record_reply(2, reply_metrics(0, 2.9))
    outcome = ledger.record_reply(3, reply_metrics(0, 2.9, refused=1))
    ledger.record_reply(1, reply_metrics(4, 0.7))

    entry = ledger.devices[0]
    composed = epsilon_spent([Segment(1.2, 0.2, 10)], 1e-5)  # two rounds of 5 steps
    assert outcome == "refused"
    assert (entry.epsilon_reported, entry.rounds_joined, entry.refusals) == (2.9, [1, 2], [3])
    assert entry.segments == [[1.2, 0.2, 5], [1.2, 0.2, 5]]
    assert entry.epsilon_spent == pytest.approx(composed)
    assert ledger.devices[4].rounds_joined == [1]
    assert ledger.scalars()["privacy/epsilon_spent_max"] == pytest.approx(composed)
    assert ledger.scalars()["privacy/refusals"] == 1.0


def test_a_reply_without_dp_metrics_changes_nothing():
    ledger = PrivacyLedger()

    outcome = ledger.record_reply(1, {records.NUM_EXAMPLES: 10})

    assert outcome == "no-dp" and ledger.devices == {}


def test_the_ledger_refuses_an_update_its_own_account_puts_over_the_cap():
    # the device claims it stays within budget 1.0; sigma 0.5, q 0.2, 50 steps say otherwise
    claims = {**reply_metrics(0, 0.9, budget=1.0), records.DP_NOISE_MULTIPLIER: 0.5,
              records.DP_STEPS: 50}
    ledger = PrivacyLedger()

    outcome = ledger.record_reply(1, claims)

    entry = ledger.devices[0]
    assert outcome == "over-cap"
    assert entry.epsilon_spent == pytest.approx(epsilon_spent([Segment(0.5, 0.2, 50)], 1e-5))
    assert entry.epsilon_spent > 1.0
    assert (entry.over_cap, entry.rounds_joined) == ([1], [])
    assert ledger.scalars()["privacy/over_cap"] == 1.0


def test_the_server_cap_wins_over_a_larger_budget_the_device_reports():
    ledger = PrivacyLedger()

    within = ledger.record_reply(1, reply_metrics(0, 0.5, budget=100.0), cap=100.0)
    capped = ledger.record_reply(2, reply_metrics(0, 0.5, budget=100.0), cap=0.01)

    assert (within, capped) == ("trained", "over-cap")


def test_state_dict_round_trips_through_json():
    ledger = PrivacyLedger(central=CentralEntry(mode="server", epsilon_spent=1.0, delta=1e-5,
                                                round_noise_multipliers=[1.0]))
    ledger.record_reply(1, reply_metrics(2, 0.5))

    restored = PrivacyLedger.from_state_dict(json.loads(json.dumps(ledger.state_dict())))

    assert restored == ledger


@pytest.mark.parametrize("metrics, message", [
    ({records.DP_EPSILON_SPENT: 1.0}, "partition-id"),
    ({records.DP_EPSILON_SPENT: -1.0, records.PARTITION_ID: 0}, ">= 0"),
])
def test_malformed_dp_replies_are_rejected(metrics, message):
    with pytest.raises(ValueError, match=message):
        PrivacyLedger().record_reply(1, metrics)


def test_state_without_devices_is_rejected():
    with pytest.raises(ValueError, match="devices"):
        PrivacyLedger.from_state_dict({"central": None})
