"""Error feedback: what compression drops is kept and sent in later rounds."""

import numpy as np
import pytest

from fedmosaic.compression import CompressionSpec, compress, decode

HALF = CompressionSpec(topk_ratio=0.5, bits=32)


def test_hand_computed_two_rounds_of_top_half():
    update = {"w": np.array([5.0, 1.0, -3.0, 0.0], np.float32)}
    zero = {"w": np.zeros(4, np.float32)}
    rng = np.random.default_rng(0)

    first, residual = compress(update, HALF, None, rng)
    assert decode(first)["w"].tolist() == [5.0, 0.0, -3.0, 0.0]
    assert residual["w"].tolist() == [0.0, 1.0, 0.0, 0.0]

    second, residual = compress(zero, HALF, residual, rng)
    # |c| = 0, 1, 0, 0: the 1 is sent, the second place goes to the tie at position 0
    assert decode(second)["w"].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert residual["w"].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_dropped_entries_all_come_back_once_updates_stop():
    rng = np.random.default_rng(3)
    update = {"w": rng.normal(size=100).astype(np.float32)}
    spec = CompressionSpec(topk_ratio=0.1, bits=32)

    payload, residual = compress(update, spec, None, rng)
    total = decode(payload)["w"].astype(np.float64)
    for _ in range(9):  # 10 entries per round: 100 entries in 10 rounds
        payload, residual = compress({"w": np.zeros(100, np.float32)}, spec, residual, rng)
        total += decode(payload)["w"]

    np.testing.assert_allclose(total, update["w"], atol=1e-6)
    assert not residual["w"].any()


@pytest.mark.parametrize("spec", [
    CompressionSpec(topk_ratio=0.01, bits=4), CompressionSpec(topk_ratio=0.1, bits=8),
    CompressionSpec(topk_ratio=1.0, bits=4, block_size=16),
])
def test_sent_plus_residual_equals_the_sum_of_updates_over_rounds(spec):
    rng = np.random.default_rng(4)
    residual = None
    sent = np.zeros((30, 40))
    updates = np.zeros((30, 40))
    for _ in range(20):
        update = rng.normal(size=(30, 40)).astype(np.float32)
        payload, residual = compress({"w": update}, spec, residual, rng)
        sent += decode(payload)["w"]
        updates += update

    # nothing is lost, only delayed: Σ D(P_t) + r_{T+1} = Σ g_t
    np.testing.assert_allclose(sent + residual["w"], updates, atol=1e-4)


def test_without_feedback_the_dropped_mass_would_be_lost():
    update = {"w": np.array([5.0, 1.0, -3.0, 0.0], np.float32)}
    rng = np.random.default_rng(0)

    sent = sum(decode(compress(update, HALF, None, rng)[0])["w"] for _ in range(3))

    assert sent.tolist() == [15.0, 0.0, -9.0, 0.0]  # the 1 never arrives without a residual


def test_the_residual_is_float32_in_the_order_of_the_floating_arrays():
    update = {"b": np.ones(3), "count": np.array(2, np.int64), "a": np.ones(2, np.float32)}

    _, residual = compress(update, CompressionSpec(bits=8), None, np.random.default_rng(0))

    assert list(residual) == ["b", "a"]
    assert all(r.dtype == np.float32 for r in residual.values())


W = {"w": np.ones(4, np.float32)}


@pytest.mark.parametrize(("update", "spec", "residual", "message"), [
    (W, CompressionSpec(), {"v": np.zeros(4)}, "residual must hold"),
    (W, CompressionSpec(), {}, "residual must hold"),
    (W, CompressionSpec(), {"w": np.zeros(3)}, r"residual\['w'\] must have shape \(4,\)"),
    ({"w": [1.0, 2.0]}, CompressionSpec(), None, "NumPy"),
    ({"w": np.array(["a"])}, CompressionSpec(), None, "NumPy"),
    ({1: np.ones(2)}, CompressionSpec(), None, "names must be str"),
    (W, {"topk_ratio": 0.5}, None, "CompressionSpec"),
    ({"w": np.array([1.0, np.nan], np.float32)}, HALF, None, "non-finite"),
    ({"w": np.array([1.0, np.inf], np.float32)}, CompressionSpec(bits=8), None, "non-finite"),
])
def test_bad_input_is_rejected(update, spec, residual, message):
    with pytest.raises(ValueError, match=message):
        compress(update, spec, residual, np.random.default_rng(0))


def test_lossless_spec_passes_non_finite_values_through_for_the_receiver_to_judge():
    update = {"w": np.array([1.0, np.nan], np.float32)}

    payload, _ = compress(update, CompressionSpec(), None, np.random.default_rng(0))

    assert np.isnan(decode(payload)["w"][1])


def test_a_38k_parameter_update_at_topk_001_and_4_bits_is_about_a_kilobyte():
    rng = np.random.default_rng(5)
    update = {"w": rng.normal(size=(150, 250)).astype(np.float32),
              "b": rng.normal(size=500).astype(np.float32)}

    payload, _ = compress(update, CompressionSpec(topk_ratio=0.01, bits=4), None, rng)

    # 380 kept entries: ~1.3 B of varint gap + 0.5 B of code each, 2 scales, headers
    assert 380 * 1.8 < len(payload) < 1200
    assert 4 * 38_000 / len(payload) > 100
