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

    spool.put_request(EdgeRequest(1, 3, arrays, {"lr": 0.01, "server-round": 3}))
    request = spool.take_request(3, timeout=1.0)

    assert (request.edge_id, request.server_round) == (1, 3)
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

    assert sorted(p.name for p in (tmp_path / "replies").iterdir()) == ["round-0001"]


def test_waiting_for_a_missing_entry_times_out_with_a_clear_error(tmp_path):
    spool = EdgeSpool(tmp_path)

    with pytest.raises(SpoolTimeoutError, match="round-0001 within 0 s"):
        spool.take_reply(1, timeout=0.3)


def test_an_empty_spool_path_is_rejected():
    with pytest.raises(ValueError, match="non-empty path"):
        EdgeSpool("")
