import numpy as np
import pytest

from fedmosaic.compression.spool import (
    EdgeReply,
    EdgeRequest,
    EdgeSpool,
    SpoolTimeoutError,
)


def test_a_request_round_trips_with_its_array_order(tmp_path):
    spool = EdgeSpool(tmp_path / "spool")
    arrays = {"z.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
              "a.bias": np.array([-1.5], np.float32)}

    spool.put_request(EdgeRequest(1, 3, arrays, {"lr": 0.01, "server-round": 3}, 5))
    request = spool.take_next_request(0, timeout=1.0)

    assert (request.edge_id, request.server_round, request.number) == (1, 3, 5)
    assert list(request.arrays) == ["z.weight", "a.bias"]
    np.testing.assert_array_equal(request.arrays["z.weight"], arrays["z.weight"])
    assert request.config == {"lr": 0.01, "server-round": 3}


def test_a_reply_round_trips_exactly(tmp_path):
    spool = EdgeSpool(tmp_path)

    spool.put_reply(2, EdgeReply(b"\x00\x01payload", {"num-examples": 40, "train-loss": 0.5}))
    reply = spool.take_reply(2, timeout=1.0)

    assert reply == EdgeReply(b"\x00\x01payload", {"num-examples": 40, "train-loss": 0.5})


def test_only_complete_entries_are_visible(tmp_path):
    spool = EdgeSpool(tmp_path)

    spool.put_reply(1, EdgeReply(b"x", {}))

    assert sorted(p.name for p in (tmp_path / "replies").iterdir()) == ["request-0001"]


def test_waiting_for_a_missing_entry_times_out_with_a_clear_error(tmp_path):
    spool = EdgeSpool(tmp_path)

    with pytest.raises(SpoolTimeoutError, match="request-0001 within 0 s"):
        spool.take_reply(1, timeout=0.3)


def test_the_next_request_is_the_lowest_number_above_the_last_and_a_gap_is_skipped(tmp_path):
    spool = EdgeSpool(tmp_path)
    arrays = {"w": np.zeros(2, np.float32)}
    for number in (4, 2):  # request 3 never came (its message was lost on the way)
        spool.put_request(EdgeRequest(0, 1, arrays, {}, number))

    assert spool.take_next_request(0, timeout=1.0).number == 2
    assert spool.take_next_request(2, timeout=1.0).number == 4
    with pytest.raises(SpoolTimeoutError, match="expected a request after number 4"):
        spool.take_next_request(4, timeout=0.3)


def test_an_empty_spool_path_is_rejected():
    with pytest.raises(ValueError, match="non-empty path"):
        EdgeSpool("")
