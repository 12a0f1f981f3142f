"""Seconds of the aggregation kernels against numpy.mean and Flower's own aggregates.

Claim:
    fedmosaic's aggregation rules (``fedmosaic.strategies.kernels``: weighted mean, trimmed
    mean, weighted trimmed mean, median), which the cloud strategies and the edges run, work
    near memory speed: a coordinate-wise trimmed mean of ``n`` updates of ``P`` floats costs
    at most 3x ``numpy.mean`` over the same stacked array, and every rule is faster than
    Flower's own aggregate of the same updates.

Method:
    ``n`` updates of ``P`` float32 values (standard normal, seed 0), 100 x 1,000,000 (400 MB)
    by default. Each rule runs ``--repeats`` times; a figure is the median time. Two views:

    * on the stack: each kernel on the ``(n, P)`` array against ``numpy.mean(stack, axis=0)``
      on the same array (the ``*_vs_numpy_mean`` ratios; one pass of memory is the floor);
    * from the updates, as a server receives them (one array per update): ours
      (``kernels.combine``: lay out, stack, reduce, cut back; for the weighted mean
      ``kernels.weighted_average``, streamed without a stack) against Flower 1.41's
      ``aggregate_trimmed_avg`` and ``aggregate_median`` (``flwr.server.strategy.aggregate``)
      and the weighted mean of ``FedAvg`` (``aggregate_arrayrecords``), both of the latter
      reading the same ``ArrayRecord`` replies (the ``*_speedup_vs_flower`` ratios, Flower's
      seconds over ours).

    Trim fraction 0.2 (20 cut at each end of 100). The order-statistic kernels use one thread
    per CPU (``workers`` in the JSON); ``numpy.mean`` and Flower's aggregates use one. Every
    result is checked against its reference (``max_abs_error``).

Target:
    ``trimmed_mean_vs_numpy_mean`` <= 3. ``--quick``: 20 x 100,000, 2 repeats (CI; indicative
    only). The script measures and reports; it asserts nothing.

Run: ``python benchmarks/aggregation_kernels.py [--quick] [--updates N] [--size P]
[--repeats R] [--out FILE]``.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import common
import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.server.strategy.aggregate import aggregate_median, aggregate_trimmed_avg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from scipy.stats import trim_mean

from fedmosaic.arrays import record_arrays
from fedmosaic.strategies import kernels

NAME = "aggregation_kernels"
TARGET_TRIMMED_VS_MEAN = 3.0
BETA = 0.2


def seconds(call: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall seconds of ``repeats`` calls, and the last call's result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def error(ours: np.ndarray, reference: np.ndarray) -> float:
    """Largest absolute difference between two results."""
    return float(np.max(np.abs(np.asarray(ours, np.float64) - np.asarray(reference, np.float64))))


def main() -> None:
    parser = common.make_parser(NAME, __doc__)
    parser.add_argument("--updates", type=int, default=None, help="n (default 100; quick 20)")
    parser.add_argument("--size", type=int, default=None,
                        help="P, floats per update (default 1,000,000; quick 100,000)")
    parser.add_argument("--repeats", type=int, default=None, help="default 5; quick 2")
    args = parser.parse_args()
    count = args.updates or (20 if args.quick else 100)
    size = args.size or (100_000 if args.quick else 1_000_000)
    repeats = args.repeats or (2 if args.quick else 5)

    rng = np.random.default_rng(0)
    stack = rng.standard_normal((count, size), dtype=np.float32)
    weights = rng.integers(50, 400, size=count).astype(np.float64)
    updates = [{"w": row} for row in stack]

    mean_s, _ = seconds(lambda: np.mean(stack, axis=0), repeats)
    on_stack = {
        "weighted_mean": (lambda: kernels.weighted_mean(stack, weights),
                          lambda: np.average(stack, axis=0, weights=weights)),
        "trimmed_mean": (lambda: kernels.trimmed_mean(stack, BETA),
                         lambda: trim_mean(stack, BETA, axis=0)),
        "weighted_trimmed_mean": (lambda: kernels.trimmed_mean(stack, BETA, weights), None),
        "median": (lambda: kernels.median(stack), lambda: np.median(stack, axis=0)),
    }
    stack_seconds, errors = {"numpy_mean": mean_s}, {}
    for name, (ours, reference) in on_stack.items():
        stack_seconds[name], result = seconds(ours, repeats)
        if reference is not None:
            errors[name] = error(result, reference())

    replies = [RecordDict({"arrays": ArrayRecord({"w": Array(row)}),
                           "metrics": MetricRecord({"num-examples": int(w)})})
               for row, w in zip(stack, weights, strict=True)]
    results = [([row], 1) for row in stack]
    from_updates = {
        "weighted_mean": (
            lambda: kernels.weighted_average([record_arrays(r["arrays"]) for r in replies],
                                             weights),
            lambda: aggregate_arrayrecords(replies, "num-examples")["w"].numpy()),
        "trimmed_mean": (
            lambda: kernels.combine(updates, lambda s: kernels.trimmed_mean(s, BETA)),
            lambda: aggregate_trimmed_avg(results, BETA)[0]),
        "median": (lambda: kernels.combine(updates, kernels.median),
                   lambda: aggregate_median(results)[0]),
    }
    ours_seconds, flower_seconds = {}, {}
    for name, (ours, flowers) in from_updates.items():
        ours_seconds[name], our_result = seconds(ours, repeats)
        flower_seconds[name], flower_result = seconds(flowers, repeats)
        errors[f"{name}_vs_flower"] = error(our_result["w"], flower_result)

    figures: dict[str, Any] = {
        f"{name}_vs_numpy_mean": stack_seconds[name] / mean_s for name in on_stack}
    figures["trimmed_mean_vs_numpy_mean_target"] = TARGET_TRIMMED_VS_MEAN
    figures["trimmed_mean_vs_numpy_mean_target_met"] = (
        figures["trimmed_mean_vs_numpy_mean"] <= TARGET_TRIMMED_VS_MEAN)
    figures.update({f"{name}_speedup_vs_flower": flower_seconds[name] / ours_seconds[name]
                    for name in from_updates})
    path = common.write_result(
        args.out, NAME, args.quick, figures,
        baseline={"numpy_mean_seconds": mean_s, "flower_seconds": flower_seconds},
        config={"updates": count, "size": size, "repeats": repeats, "beta": BETA,
                "dtype": "float32", "workers": os.cpu_count()},
        stack_seconds=stack_seconds, from_updates_seconds=ours_seconds,
        max_abs_error=errors)
    common.print_table(f"{NAME} ({count} x {size:,} float32)", list(figures.items()))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
