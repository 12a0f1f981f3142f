"""Top-k keeps exactly the k largest magnitudes, with ties broken by lowest position."""

import numpy as np
import pytest

from fedmosaic.compression import topk
from fedmosaic.compression.topk import keep_count, topk_indices


@pytest.mark.parametrize(("size", "ratio", "expected"), [
    (30, 0.1, 3),     # 0.1 * 30 = 3.0000000000000004 in binary floating point
    (10, 0.25, 3),    # ceil(2.5)
    (5, 0.01, 1),     # at least one entry
    (7, 1.0, 7),
    (1000, 0.001, 1),
    (1001, 0.001, 2),
    (0, 0.5, 0),
])
def test_keep_count_is_the_ceiling_of_ratio_times_size(size, ratio, expected):
    assert keep_count(size, ratio) == expected


@pytest.mark.parametrize(("size", "ratio"), [(-1, 0.5), (10, 0.0), (10, 1.5)])
def test_keep_count_rejects_bad_arguments(size, ratio):
    with pytest.raises(ValueError):
        keep_count(size, ratio)


def test_hand_computed_case_with_a_tie():
    values = np.array([1.0, -5.0, 3.0, -3.0, 0.0], dtype=np.float32)

    assert topk_indices(values, 1).tolist() == [1]
    assert topk_indices(values, 2).tolist() == [1, 2]      # |3| at 2 and 3: the lower wins
    assert topk_indices(values, 3).tolist() == [1, 2, 3]
    assert topk_indices(values, 5).tolist() == [0, 1, 2, 3, 4]
    assert topk_indices(values, 0).tolist() == []


@pytest.mark.parametrize("seed", range(5))
def test_matches_a_stable_sort_reference_on_random_data_with_ties(seed):
    rng = np.random.default_rng(seed)
    values = np.round(rng.normal(size=2000), 1).astype(np.float32)  # many equal magnitudes
    for k in (1, 7, 200, 1999):
        reference = np.sort(np.argsort(-np.abs(values), kind="stable")[:k])

        kept = topk_indices(values, k)

        assert kept.size == k
        np.testing.assert_array_equal(kept, reference)
        dropped = np.setdiff1d(np.arange(values.size), kept)
        assert np.abs(values[kept]).min() >= np.abs(values[dropped]).max()


@pytest.mark.parametrize(("values", "k"), [
    (np.zeros((2, 2)), 1), (np.zeros(3), 4), (np.zeros(3), -1),
])
def test_rejects_bad_arguments(values, k):
    with pytest.raises(ValueError):
        topk_indices(values, k)


def reference_topk(values, k):
    return np.sort(np.argsort(-np.abs(values), kind="stable")[:k])


@pytest.mark.parametrize("k", [1, 70, 7_000, 70_000, 139_999])
def test_sampled_selection_on_large_arrays_is_exact(k):
    size = 140_000  # above SAMPLED_SELECTION_MIN_SIZE
    values = np.round(np.random.default_rng(k).standard_t(3, size), 2).astype(np.float32)

    np.testing.assert_array_equal(topk_indices(values, k), reference_topk(values, k))


def test_all_equal_magnitudes_keep_the_lowest_positions():
    values = np.tile(np.array([1.0, -1.0], np.float32), 40_000)

    assert topk_indices(values, 5).tolist() == [0, 1, 2, 3, 4]


def test_a_sample_that_overestimates_the_threshold_falls_back_to_exact_selection():
    # the fixed-seed sample lands only on large entries, so too few candidates pass its bound
    size = 100_000
    positions = np.random.default_rng(topk._SAMPLE_SEED).integers(0, size, topk.SAMPLE_SIZE)
    values = np.random.default_rng(1).uniform(0, 1, size).astype(np.float32)
    values[positions] = 100.0 + np.arange(positions.size, dtype=np.float32)
    k = 20_000

    np.testing.assert_array_equal(topk_indices(values, k), reference_topk(values, k))
