import pytest

from fedmosaic.privacy.accounting import Segment
from fedmosaic.privacy.client_account import ClientPrivacyAccount


def account():
    return ClientPrivacyAccount(history=[Segment(1.1, 0.2, 5), Segment(1.1, 0.2, 5)],
                                epsilon_budget=3.0, noise_multiplier=1.1)


def test_record_round_trip():
    assert ClientPrivacyAccount.from_record(account().to_record()) == account()


def test_file_round_trip_and_missing_file(tmp_path):
    path = tmp_path / "run" / "partition-0-dp.json"

    account().save(path)

    assert ClientPrivacyAccount.load(path) == account()
    assert ClientPrivacyAccount.load(tmp_path / "absent.json") == ClientPrivacyAccount()


def test_spent_after_adds_one_segment():
    spent_two = account().spent(1e-5, "rdp")

    after = account().spent_after(Segment(1.1, 0.2, 5), 1e-5, "rdp")

    assert after > spent_two > 0


@pytest.mark.parametrize("record, message", [
    ({"noise-multiplier": [1.0]}, "lacks keys"),
    ({"noise-multiplier": [1.0], "sample-rate": [], "steps": [1], "epsilon-budget": 1.0,
      "calibrated-noise-multiplier": 1.0}, "equal lengths"),
])
def test_malformed_records_are_rejected(record, message):
    with pytest.raises(ValueError, match=message):
        ClientPrivacyAccount.from_record(record)
