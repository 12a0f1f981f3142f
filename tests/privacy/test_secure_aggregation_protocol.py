"""SecAgg+ without Flower: devices and the server's cohort exchanging in memory, with dropouts."""

from __future__ import annotations

import random

import numpy as np
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedmosaic.privacy.secure_aggregation import Cohort, DeviceSession, FieldEncoding, ProtocolError
from fedmosaic.privacy.secure_aggregation.cohort import circulant_neighbours, degree
from fedmosaic.privacy.secure_aggregation.keys import mask, public_key

DIM = 300


def run_protocol(updates: list[np.ndarray], weights: list[int], drop: dict[str, set[int]],
                 device_bits: int = 32, clip: float = 1.0) -> tuple[np.ndarray, Cohort]:
    """One round over devices with node IDs 100, 101, ...; ``drop[stage]``: node IDs lost there.

    Returns the decoded weighted mean update and the cohort.
    """
    nodes = [100 + i for i in range(len(updates))]
    sessions = {node: DeviceSession.advertise(7) for node in nodes if node not in drop["keys"]}
    keys = {node: (s.encryption.public, s.masking.public) for node, s in sessions.items()}
    cohort = Cohort.form(keys, clip, max_weight=100, device_bits=device_bits,
                         rng=random.Random(1))
    sealed = {}
    for u, node in cohort.nodes.items():
        outbox = sessions[node].share(u, cohort.threshold(u), cohort.neighbourhood(u))
        if node not in drop["share"]:
            sealed[u] = outbox
    inboxes = cohort.route(sealed)
    total = np.zeros(DIM + 1, dtype=np.uint64)
    survivors = set()
    for u in inboxes:
        node = cohort.nodes[u]
        sessions[node].receive(inboxes[u])
        codes = cohort.encoding.encode(updates[node - 100], weights[node - 100])
        masked = sessions[node].mask(codes, cohort.encoding.bits)
        if node not in drop["mask"]:
            survivors.add(u)
            total = (total + masked) % np.uint64(cohort.encoding.modulus)
    alive, dropped = cohort.request(survivors)
    answers = {u: sessions[cohort.nodes[u]].unmask(alive, dropped) for u in alive
               if cohort.nodes[u] not in drop["unmask"]}
    summed = cohort.unmask(total, alive, answers)
    mean, _ = cohort.encoding.decode(summed, len(alive))
    return mean, cohort


def no_drops() -> dict[str, set[int]]:
    return {"keys": set(), "share": set(), "mask": set(), "unmask": set()}


def weighted_mean(updates, weights, included):
    chosen = [i for i in range(len(updates)) if 100 + i in included]
    w = np.array([weights[i] for i in chosen], dtype=float)
    return (np.stack([updates[i] for i in chosen]) * w[:, None]).sum(0) / w.sum()


@pytest.fixture
def federation():
    rng = np.random.default_rng(0)
    updates = [rng.normal(0, 0.05, DIM) for _ in range(10)]
    weights = [int(w) for w in rng.integers(20, 100, 10)]
    return updates, weights


def test_sum_equals_the_plain_weighted_mean_without_dropouts(federation):
    updates, weights = federation
    mean, cohort = run_protocol(updates, weights, no_drops())
    step = 2 * cohort.encoding.clip / cohort.encoding.levels
    np.testing.assert_allclose(mean, weighted_mean(updates, weights, set(range(100, 110))),
                               atol=20 * step + 1e-6)


@pytest.mark.parametrize("stage", ["keys", "share", "mask", "unmask"])
def test_one_device_dropped_at_each_stage(federation, stage):
    updates, weights = federation
    drop = no_drops()
    drop[stage] = {103}
    mean, _ = run_protocol(updates, weights, drop)
    included = set(range(100, 110)) - ({103} if stage != "unmask" else set())
    np.testing.assert_allclose(mean, weighted_mean(updates, weights, included), atol=1e-5)


def test_one_device_dropped_at_every_stage_at_once(federation):
    updates, weights = federation
    drop = {"keys": {101}, "share": {102}, "mask": {103}, "unmask": {104}}
    mean, _ = run_protocol(updates, weights, drop)
    np.testing.assert_allclose(
        mean, weighted_mean(updates, weights, set(range(100, 110)) - {101, 102, 103}), atol=1e-5)


def test_eight_bit_codes_travel_in_sixteen_bits_and_sum_within_a_step(federation):
    updates, weights = federation
    mean, cohort = run_protocol(updates, weights, {**no_drops(), "mask": {105}},
                                device_bits=8, clip=0.2)
    assert cohort.encoding.levels == 254 and cohort.encoding.bits <= 16
    assert cohort.encoding.dtype == np.uint16
    included = set(range(100, 110)) - {105}
    error = np.abs(mean - weighted_mean(updates, weights, included))
    assert error.mean() < 2 * 0.4 / 254  # stochastic rounding errors average out
    assert error.max() < 9 * 0.4 / 254


def test_too_many_dropouts_stop_the_round(federation):
    updates, weights = federation
    with pytest.raises(ProtocolError, match="threshold"):
        run_protocol(updates, weights, {**no_drops(), "mask": set(range(100, 106))})
    with pytest.raises(ProtocolError, match="shares"):
        run_protocol(updates, weights, {**no_drops(), "unmask": set(range(100, 106))})


def test_what_the_server_receives_is_uniform_noise_not_the_update(federation):
    updates, weights = federation
    sessions = [DeviceSession.advertise(1) for _ in range(3)]
    keys = {i: (s.encryption.public, s.masking.public) for i, s in enumerate(sessions)}
    cohort = Cohort.form(keys, 1.0, 100, 32)
    inboxes = cohort.route({u: sessions[cohort.nodes[u]].share(u, cohort.threshold(u),
                                                               cohort.neighbourhood(u))
                            for u in cohort.nodes})
    session = sessions[cohort.nodes[1]]
    session.receive(inboxes[1])
    codes = cohort.encoding.encode(np.zeros(20_000), 50)
    masked = session.mask(codes, cohort.encoding.bits)
    # zero updates encode to the middle code; masked they are uniform over [0, 2^32)
    assert len(np.unique(codes[:-1])) <= 2
    assert abs(masked.mean() / 2**32 - 0.5) < 0.01
    assert abs(masked.std() / 2**32 - 1 / np.sqrt(12)) < 0.01


def test_a_device_never_reveals_both_secrets_or_answers_twice():
    sessions = [DeviceSession.advertise(1) for _ in range(4)]
    keys = {i: (s.encryption.public, s.masking.public) for i, s in enumerate(sessions)}
    cohort = Cohort.form(keys, 1.0, 100, 32)
    inboxes = cohort.route({u: sessions[cohort.nodes[u]].share(u, cohort.threshold(u),
                                                               cohort.neighbourhood(u))
                            for u in cohort.nodes})
    device = sessions[cohort.nodes[1]]
    device.receive(inboxes[1])
    with pytest.raises(ProtocolError, match="both"):
        device.unmask({1, 2, 3}, {3})
    with pytest.raises(ProtocolError, match="not among the survivors"):
        device.unmask({2, 3, 4}, {1})
    device.unmask({1, 2, 3}, {4})
    with pytest.raises(ProtocolError, match="answered already"):
        device.unmask({1, 2, 3, 4}, set())


def test_forged_or_misrouted_shares_are_refused():
    sessions = [DeviceSession.advertise(1) for _ in range(3)]
    keys = {i: (s.encryption.public, s.masking.public) for i, s in enumerate(sessions)}
    cohort = Cohort.form(keys, 1.0, 100, 32)
    outboxes = {u: sessions[cohort.nodes[u]].share(u, cohort.threshold(u),
                                                   cohort.neighbourhood(u))
                for u in cohort.nodes}
    with pytest.raises(ProtocolError, match="decrypt"):
        sessions[cohort.nodes[1]].receive({2: outboxes[3][1]})  # 3's ciphertext under 2's name
    with pytest.raises(ProtocolError, match="not to its neighbours"):
        cohort.route({1: {2: b"x"}})
    with pytest.raises(ProtocolError, match="already"):
        sessions[0].share(1, 2, {})


def test_cohort_needs_two_devices_and_leaves_out_copied_keys():
    sessions = [DeviceSession.advertise(1) for _ in range(4)]
    pairs = [(s.encryption.public, s.masking.public) for s in sessions]
    with pytest.raises(ProtocolError, match="at least 2"):
        Cohort.form({1: pairs[0]}, 1.0, 10, 32)
    with pytest.raises(ProtocolError, match="keys of their own, got 0 of 2"):
        Cohort.form({1: pairs[0], 2: pairs[0]}, 1.0, 10, 32)
    # node 2 copied node 1's masking key, node 5 sends one key twice: both left out with node 1
    cohort = Cohort.form({1: pairs[0], 2: (pairs[1][0], pairs[0][1]), 3: pairs[2],
                          4: pairs[3], 5: (pairs[1][1], pairs[1][1])}, 1.0, 10, 32)
    assert sorted(cohort.nodes.values()) == [3, 4]
    assert cohort.index_of(4) == 2
    with pytest.raises(KeyError, match="not in the cohort"):
        cohort.index_of(1)


def test_public_keys_must_be_compressed_curve_points():
    public = DeviceSession.advertise(1).masking.public
    assert public_key(public) is not None
    uncompressed = public_key(public).public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    for bad in (b"", public[:-1], uncompressed, b"\x02" + bytes(47) + b"\x07", 7, None):
        with pytest.raises(ValueError):
            public_key(bad)


def test_four_bit_weights_are_exact_for_small_devices():
    """With 14 levels a weight share 5/1000 used to round to 0; the weight is now the count."""
    rng = np.random.default_rng(2)
    updates = [rng.normal(0, 0.05, 20_000) for _ in range(10)]
    weights = [5, 8, 13, 21, 34, 3, 9, 17, 2, 30]
    nodes = [100 + i for i in range(10)]
    sessions = {node: DeviceSession.advertise(1) for node in nodes}
    cohort = Cohort.form({n: (s.encryption.public, s.masking.public)
                          for n, s in sessions.items()}, 1.0, 1000, 4)
    assert cohort.encoding.levels == 14 and cohort.encoding.bits == (10 * 1000).bit_length()
    codes = [cohort.encoding.encode(updates[i], weights[i]) for i in range(10)]
    assert [int(c[-1]) for c in codes] == weights
    total = np.sum(codes, axis=0)
    mean, share = cohort.encoding.decode(total, 10)
    assert share == pytest.approx(sum(weights) / 1000)
    # each device's ρΔ is tiny against the 1/7 step, but stochastic rounding is unbiased: the
    # error averaged over 20,000 coordinates has a standard deviation near 0.011
    expected = weighted_mean(updates, weights, set(nodes))
    assert abs(float((mean - expected).mean())) < 0.05


def test_encoding_refuses_non_finite_updates_and_empty_devices():
    encoding = FieldEncoding.for_cohort(3, 1.0, 100, 32)
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="non-finite"):
            encoding.encode(np.array([0.1, bad, 0.2]), 10)
    with pytest.raises(ValueError, match="num-examples must be >= 1"):
        encoding.encode(np.zeros(3), 0)
    with pytest.raises(ValueError, match="do not fit 32-bit"):
        FieldEncoding.for_cohort(5000, 1.0, 10**6, 32)


def test_a_device_masks_once_and_never_after_unmasking():
    sessions = [DeviceSession.advertise(1) for _ in range(3)]
    keys = {i: (s.encryption.public, s.masking.public) for i, s in enumerate(sessions)}
    cohort = Cohort.form(keys, 1.0, 100, 32)
    with pytest.raises(ProtocolError, match="after sharing"):
        sessions[0].mask(np.zeros(4, dtype=np.uint64), 32)
    inboxes = cohort.route({u: sessions[cohort.nodes[u]].share(u, cohort.threshold(u),
                                                               cohort.neighbourhood(u))
                            for u in cohort.nodes})
    first, second = sessions[cohort.nodes[1]], sessions[cohort.nodes[2]]
    first.receive(inboxes[1])
    first.mask(np.zeros(4, dtype=np.uint64), 32)
    with pytest.raises(ProtocolError, match="masks one update"):
        first.mask(np.ones(4, dtype=np.uint64), 32)  # a second vector under the same b_u
    second.receive(inboxes[2])
    second.unmask({1, 2, 3}, set())
    with pytest.raises(ProtocolError, match="before unmasking"):
        second.mask(np.zeros(4, dtype=np.uint64), 32)  # its b_u may be known now


def test_a_device_refuses_a_neighbour_that_reuses_any_key():
    sessions = [DeviceSession.advertise(1) for _ in range(4)]
    own = sessions[0]
    other = (sessions[1].encryption.public, sessions[1].masking.public)
    for neighbours in ({2: (sessions[2].encryption.public, own.masking.public)},
                       {2: other, 3: (sessions[3].encryption.public, other[1])}):
        with pytest.raises(ProtocolError, match="appears twice"):
            own.share(1, len(neighbours) + 1, neighbours)


def test_unmasking_answers_about_unknown_devices_are_ignored(federation):
    updates, weights = federation
    sessions = {node: DeviceSession.advertise(1) for node in range(3)}
    cohort = Cohort.form({n: (s.encryption.public, s.masking.public)
                          for n, s in sessions.items()}, 1.0, 100, 32)
    inboxes = cohort.route({u: sessions[cohort.nodes[u]].share(u, cohort.threshold(u),
                                                               cohort.neighbourhood(u))
                            for u in cohort.nodes})
    total = np.zeros(DIM + 1, dtype=np.uint64)
    for u in cohort.nodes:
        sessions[cohort.nodes[u]].receive(inboxes[u])
        codes = cohort.encoding.encode(updates[u], weights[u])
        total = (total + sessions[cohort.nodes[u]].mask(codes, 32)) % np.uint64(2**32)
    answers = {u: dict(sessions[cohort.nodes[u]].unmask({1, 2, 3}, set())) for u in (1, 2, 3)}
    answers[1][999] = (b"junk", True)  # an owner that is not in the cohort
    summed = cohort.unmask(total, {1, 2, 3}, answers)
    mean, _ = cohort.encoding.decode(summed, 3)
    chosen = [updates[u] * weights[u] for u in (1, 2, 3)]
    np.testing.assert_allclose(mean, sum(chosen) / sum(weights[u] for u in (1, 2, 3)),
                               atol=1e-6)


def test_a_device_refuses_a_threshold_below_a_strict_majority():
    sessions = [DeviceSession.advertise(1) for _ in range(5)]
    keys = {i: (s.encryption.public, s.masking.public) for i, s in enumerate(sessions)}
    cohort = Cohort.form(keys, 1.0, 100, 32)
    with pytest.raises(ProtocolError, match="strict majority of the 5"):
        sessions[cohort.nodes[1]].share(1, 2, cohort.neighbourhood(1))
    with pytest.raises(ProtocolError, match="strict majority"):
        sessions[cohort.nodes[1]].share(1, 6, cohort.neighbourhood(1))


def test_unmasking_needs_enough_surviving_holders_of_each_device():
    """In a sparse graph enough survivors overall can still leave one device short."""
    sessions = {node: DeviceSession.advertise(1) for node in range(30)}
    cohort = Cohort.form({n: (s.encryption.public, s.masking.public)
                          for n, s in sessions.items()}, 1.0, 100, 32, rng=random.Random(4))
    inboxes = cohort.route({u: sessions[cohort.nodes[u]].share(u, cohort.threshold(u),
                                                               cohort.neighbourhood(u))
                            for u in cohort.nodes})
    u = 1
    strangers = set(cohort.nodes) - cohort.neighbours[u] - {u}
    survivors = {u, *sorted(strangers)[:cohort.threshold(u)]}
    assert len(survivors) > cohort.threshold(u)
    with pytest.raises(ProtocolError, match=f"device {u} has 1 surviving share holders"):
        cohort.request(survivors)
    device = sessions[cohort.nodes[u]]
    device.receive(inboxes[u])
    with pytest.raises(ProtocolError, match="1 of this device's share holders"):
        device.unmask(survivors, set(cohort.nodes) - survivors)


def test_sparse_graph_at_fifty_devices_is_regular_and_connected():
    assert degree(10) == 9 and degree(50) == 18 and degree(1000) == 30
    graph = circulant_neighbours(50, random.Random(3))
    assert {len(v) for v in graph.values()} == {18}
    assert all(u in graph[v] for u in graph for v in graph[u])
    seen, frontier = {1}, [1]
    while frontier:
        frontier = [v for u in frontier for v in graph[u] if v not in seen]
        seen.update(frontier)
    assert seen == set(graph)


def test_sparse_fifty_device_round_with_dropouts():
    rng = np.random.default_rng(5)
    updates = [rng.normal(0, 0.05, DIM) for _ in range(50)]
    weights = [50] * 50
    drop = {"keys": {100}, "share": {110, 111}, "mask": {120, 121, 122}, "unmask": {130}}
    mean, cohort = run_protocol(updates, weights, drop)
    assert max(len(n) for n in cohort.neighbours.values()) == 18
    included = set(range(100, 150)) - {100, 110, 111, 120, 121, 122}
    np.testing.assert_allclose(mean, weighted_mean(updates, weights, included), atol=1e-5)


def test_mask_generator_is_chacha20_not_a_32_bit_seed():
    seed_a, seed_b = bytes(32), bytes(31) + b"\x01"
    a, b = mask(seed_a, 1000, 32), mask(seed_b, 1000, 32)
    assert not np.array_equal(a, b)  # seeds differing only above bit 32 give other masks
    assert np.array_equal(a, mask(seed_a, 1000, 32))
    assert mask(seed_a, 10, 12).max() < 2**12


def test_encoding_refuses_nonsense():
    with pytest.raises(ValueError, match="clipping range"):
        FieldEncoding(0.0, 10, 10, 16)
    with pytest.raises(ValueError, match="at least 1 device"):
        FieldEncoding.for_cohort(0, 1.0, 10, 32)
    with pytest.raises(ValueError, match="sum to 0"):
        FieldEncoding.for_cohort(2, 1.0, 10, 32).decode(np.zeros(3, dtype=np.uint64), 2)
