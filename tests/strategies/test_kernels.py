import numpy as np
import pytest
from flwr.server.strategy.aggregate import aggregate_median, aggregate_trimmed_avg
from scipy.stats import trim_mean

from fedmosaic.strategies import kernels


def stable_trimmed_mean(stack, beta, weights):
    """Reference: stable sort per coordinate, cut k each end, weighted mean of the rest."""
    cut = int(beta * len(stack))
    order = np.argsort(stack, axis=0, kind="stable")[cut:len(stack) - cut]
    values = np.take_along_axis(stack, order, axis=0).astype(np.float64)
    kept = np.asarray(weights, dtype=np.float64)[order]
    return (values * kept).sum(axis=0) / kept.sum(axis=0)


def test_hand_computed_trimmed_mean_drops_the_extremes():
    stack = np.array([[1.0], [2.0], [3.0], [100.0], [-50.0]])

    # beta = 0.2 of 5 cuts one value at each end: mean(1, 2, 3) = 2
    assert kernels.trimmed_mean(stack, 0.2)[0] == pytest.approx(2.0)
    # weights 1, 1, 2 on the kept values 1, 2, 3: (1 + 2 + 6) / 4
    assert kernels.trimmed_mean(stack, 0.2, np.array([1, 1, 2, 9, 9]))[0] == pytest.approx(2.25)
    # a stack of integers: averaged in float64, cut back to the stack's dtype
    assert kernels.trimmed_mean((stack * 2).astype(np.int64), 0.2).tolist() == [4]


def test_unweighted_equals_scipy_on_any_shape():
    stack = np.random.default_rng(1).normal(size=(9, 5, 2))

    np.testing.assert_allclose(kernels.trimmed_mean(stack, 0.3), trim_mean(stack, 0.3, axis=0))


@pytest.mark.parametrize("beta", [0.1, 0.2, 0.45])
def test_weighted_trimmed_mean_cuts_ties_in_row_order(beta):
    rng = np.random.default_rng(2)
    # few distinct values, so most bounds are tied; more columns than one block
    stack = rng.integers(-3, 4, size=(23, kernels.BLOCK_COLUMNS + 77)).astype(np.float32)
    weights = rng.random(23) + 0.1

    np.testing.assert_allclose(kernels.trimmed_mean(stack, beta, weights),
                               stable_trimmed_mean(stack, beta, weights), rtol=1e-5, atol=1e-6)


def test_zero_trim_is_the_weighted_mean():
    rng = np.random.default_rng(3)
    stack, weights = rng.normal(size=(6, 40)), rng.random(6) + 0.5

    np.testing.assert_allclose(kernels.trimmed_mean(stack, 0.0, weights),
                               np.average(stack, axis=0, weights=weights))
    np.testing.assert_allclose(kernels.trimmed_mean(stack, 0.0), stack.mean(axis=0))


@pytest.mark.parametrize("count", [1, 4, 7])
def test_median_equals_numpy(count):
    stack = np.random.default_rng(count).normal(size=(count, 3, kernels.BLOCK_COLUMNS + 5))

    np.testing.assert_allclose(kernels.median(stack), np.median(stack, axis=0))


def test_weighted_mean_equals_numpy_average_in_the_stacks_dtype():
    rng = np.random.default_rng(4)
    stack, weights = rng.normal(size=(8, 2, 50)).astype(np.float32), [3, 1, 4, 1, 5, 9, 2, 6]

    mean = kernels.weighted_mean(stack, weights)

    assert mean.dtype == np.float32 and mean.shape == (2, 50)
    np.testing.assert_allclose(mean, np.average(stack, axis=0, weights=weights), rtol=1e-5,
                               atol=1e-6)


def test_kernels_equal_flowers_aggregates_on_named_arrays():
    rng = np.random.default_rng(5)
    updates = [{"conv": rng.normal(size=(4, 3)).astype(np.float32),
                "bias": rng.normal(size=(3,)).astype(np.float32)} for _ in range(11)]
    results = [([u["conv"], u["bias"]], 1) for u in updates]

    trimmed = kernels.combine(updates, lambda stack: kernels.trimmed_mean(stack, 0.2))
    median = kernels.combine(updates, kernels.median)

    for ours, flowers in ((trimmed, aggregate_trimmed_avg(results, 0.2)),
                          (median, aggregate_median(results))):
        np.testing.assert_allclose(ours["conv"], flowers[0], rtol=1e-6)
        np.testing.assert_allclose(ours["bias"], flowers[1], rtol=1e-6)
        assert ours["conv"].dtype == np.float32 and ours["conv"].shape == (4, 3)


def test_threads_do_not_change_the_result():
    stack = np.random.default_rng(6).normal(size=(10, 5 * kernels.BLOCK_COLUMNS + 3))

    np.testing.assert_array_equal(kernels.trimmed_mean(stack, 0.2, workers=1),
                                  kernels.trimmed_mean(stack, 0.2, workers=3))


def test_layout_round_trips_names_shapes_and_dtypes():
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "steps": np.array(7, np.int64)}
    layout = kernels.ArrayLayout.of(arrays)

    row = layout.stack([arrays])[0]
    back = layout.unflatten(row)

    assert layout.size == 7 and list(back) == ["w", "steps"]
    np.testing.assert_array_equal(back["w"], arrays["w"])
    assert back["steps"].dtype == np.int64 and int(back["steps"]) == 7


@pytest.mark.parametrize(("call", "message"), [
    (lambda: kernels.trimmed_mean(np.ones((2, 1)), 0.7), r"beta must lie in \[0, 0.5\)"),
    (lambda: kernels.trimmed_mean(np.ones((2, 1)), 0.1, np.array([1.0, 0.0])),
     "weights must be 2 finite values > 0"),
    (lambda: kernels.trimmed_mean(np.ones((2, 1)), 0.1, np.array([1.0])),
     "weights must be 2 finite values > 0"),
    (lambda: kernels.weighted_mean(np.ones((2, 1)), [1.0, np.nan]),
     "weights must be 2 finite values > 0"),
    (lambda: kernels.combine([], kernels.median), "at least one update"),
    (lambda: kernels.combine([{"w": np.zeros(2)}, {"w": np.zeros(3)}], kernels.median),
     r"array 'w' must have shape \(2,\), got \(3,\)"),
    (lambda: kernels.combine([{"w": np.zeros(2)}, {"v": np.zeros(2)}], kernels.median),
     "must hold the arrays"),
])
def test_bad_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
