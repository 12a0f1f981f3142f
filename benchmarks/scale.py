"""Start-up, round time and memory of fedmosaic against bare Flower as the population grows.

Claim:
    A fedmosaic simulation's memory follows the devices sampled a round, not the population:
    10,000 synthetic devices with 100 sampled a round fit in 4 GiB summed over every process
    of the run on a 2-core machine, a round costs at most 1.2x bare Flower's with the same
    population, sample and model, and 100,000 registered devices (10 sampled) run to the end.

Method:
    For each population N and sample S (100/100, 1,000/100, 10,000/100, 100,000/10), one
    fedmosaic run (``fedmosaic run``: synthetic data, ``fraction-train`` S/N, no federated
    evaluation, ``--rounds`` rounds of one local epoch on ``--samples`` samples per device,
    every other setting at its default, so risk perception and the partition report run) and
    one bare Flower FedAvg run of the same model, data, sampling and training loop
    (``benchmarks/flower_baseline/``), on the same Ray simulation runtime, one after the
    other (``flower_comparison.py``). Per run: start-up seconds (launch to the end of round
    1, less one median round: Ray, N virtual SuperNodes, data, model), median seconds of
    rounds 2..R, and the peak of the summed resident memory of every process of the run
    (launcher, ServerApp, Ray's GCS, raylet and workers; ``psutil``, every 0.5 s).

Figures and targets:
    ``rss_gib_10k`` <= 4 (ours, N = 10,000), ``round_time_ratio_10k`` (ours / baseline median
    round) <= 1.2, ``completed_100k`` true; per population the same figures in ``populations``.
    ``--quick``: N = 100 and 1,000 with 10 sampled, 2 rounds (CI; indicative only). With
    ``--repeats K`` each side runs K times per population, ours and the baseline alternating
    (so a slow spell of the machine falls on both); seconds are the median over the K runs,
    memory the largest peak, and ``round_time_ratios`` lists each pair's ratio. The script
    measures and reports; it asserts nothing.

Run: ``python benchmarks/scale.py [--quick] [--rounds R] [--samples K] [--repeats K]
[--populations N:S,...] [--out FILE]``.
"""

from __future__ import annotations

from typing import Any

import common
from flower_comparison import run_baseline, run_ours

from fedmosaic.config import RunConfig

NAME = "scale"
POPULATIONS = ((100, 100), (1_000, 100), (10_000, 100), (100_000, 10))
QUICK_POPULATIONS = ((100, 10), (1_000, 10))
TARGETS = {"rss_gib_10k": 4.0, "round_time_ratio_10k": 1.2}


def population_config(population: int, sampled: int, rounds: int, samples: int,
                      seed: int) -> RunConfig:
    """The run config of one population: ``sampled`` of ``population`` devices a round."""
    return RunConfig.from_mapping({
        "dataset": "synthetic", "num-clients": population,
        "fraction-train": sampled / population, "fraction-evaluate": 0.0,
        "num-server-rounds": rounds, "local-epochs": 1, "samples-per-client": samples,
        "seed": seed})


def figures_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's figures, each beside its target, from the per-population results."""
    by_population = {r["population"]: r for r in results}
    figures: dict[str, Any] = {}
    if 10_000 in by_population:
        ten_k = by_population[10_000]
        figures["rss_gib_10k"] = ten_k["ours"]["peak_rss_gib"]
        figures["round_time_ratio_10k"] = ten_k["round_time_ratio"]
        for name, target in TARGETS.items():
            figures[f"{name}_target"] = target
            figures[f"{name}_target_met"] = (ten_k["ours"]["completed"]  # every repeat
                                             and figures[name] is not None
                                             and figures[name] <= target)
    if 100_000 in by_population:
        figures["completed_100k"] = by_population[100_000]["ours"]["completed"]
        figures["completed_100k_target"] = True
        figures["completed_100k_target_met"] = figures["completed_100k"]
    return figures


def measure(population: int, sampled: int, rounds: int, samples: int, seed: int,
            runs_dir: Any, repeats: int = 1) -> dict[str, Any]:
    """Ours and the baseline at one population, ``repeats`` times, the two sides alternating."""
    config = population_config(population, sampled, rounds, samples, seed)
    row: dict[str, Any] = {"population": population, "sampled": sampled}
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "baseline": []}
    for repeat in range(repeats):
        for side, run in (("ours", run_ours), ("baseline", run_baseline)):
            label = f"{side}-{population}" + (f"-{repeat + 1}" if repeats > 1 else "")
            print(f"{population:,} devices, {sampled} sampled: {label} ...", flush=True)
            try:
                result = run(config, runs_dir / label)
                result["completed"] = True
            except Exception as error:  # a population that does not fit is a result
                result = {"completed": False,
                          "error": f"{type(error).__name__}: {error}"[-2000:]}
            runs[side].append(result)
            print(f"  {result.get('startup_seconds')} s start-up, "
                  f"{result.get('median_round_seconds')} s/round, "
                  f"{result.get('peak_rss_gib')} GiB", flush=True)
    for side, results in runs.items():
        row[side] = combined(results)
    row["round_time_ratio"] = common.ratio(row["ours"].get("median_round_seconds"),
                                           row["baseline"].get("median_round_seconds"))
    row["round_time_ratios"] = [common.ratio(o.get("median_round_seconds"),
                                             b.get("median_round_seconds"))
                                for o, b in zip(runs["ours"], runs["baseline"], strict=True)]
    row["rss_ratio"] = common.ratio(row["ours"].get("peak_rss_gib"),
                                    row["baseline"].get("peak_rss_gib"))
    return row


def combined(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's repeats as one result: median seconds, largest peak memory, each run kept.

    One run is returned as it is. A side completes when every repeat did.
    """
    if len(results) == 1:
        return results[0]
    done = [r for r in results if r["completed"]]
    return {
        "completed": len(done) == len(results),
        "median_round_seconds": common.median([r["median_round_seconds"] for r in done]),
        "startup_seconds": common.median([r["startup_seconds"] for r in done]),
        "peak_rss_gib": max((r["peak_rss_gib"] for r in done), default=None),
        "repeats": results,
    }


def main() -> None:
    parser = common.make_parser(NAME, __doc__)
    parser.add_argument("--rounds", type=int, default=None, help=">= 2 (default 3; quick 2)")
    parser.add_argument("--samples", type=int, default=32,
                        help="training samples per synthetic device (default %(default)s)")
    parser.add_argument("--populations", default=None,
                        help="N:S,... (default 100:100,1000:100,10000:100,100000:10)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each side per population, alternating; seconds are the "
                             "median over them (default %(default)s)")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 3)
    if rounds < 2:
        parser.error(f"need --rounds >= 2 (round 1 is start-up), got {rounds}")
    populations = (tuple(tuple(int(v) for v in pair.split(":"))
                         for pair in args.populations.split(","))
                   if args.populations else QUICK_POPULATIONS if args.quick else POPULATIONS)
    seed = args.seed if args.seed is not None else 0
    runs_dir = common.run_folder(NAME, args.runs_dir)

    if args.repeats < 1:
        parser.error(f"need --repeats >= 1, got {args.repeats}")
    results = [measure(n, s, rounds, args.samples, seed, runs_dir, args.repeats)
               for n, s in populations]
    figures = figures_of(results)
    path = common.write_result(
        args.out, NAME, args.quick, figures,
        baseline={"what": "bare Flower FedAvg quickstart-style app (benchmarks/flower_baseline)"
                          " with the same population, sample, model, data and training loop",
                  "per_population": {r["population"]: r["baseline"] for r in results}},
        config={"rounds": rounds, "samples_per_client": args.samples, "seed": seed,
                "repeats": args.repeats,
                "populations": [list(p) for p in populations], "local_epochs": 1,
                "timed_rounds": f"2..{rounds}"},
        populations=results)
    common.print_table(f"{NAME} ({rounds} rounds)", [
        *((f"{r['population']:,}/{r['sampled']} ours s/round, GiB",
           (r["ours"].get("median_round_seconds"), r["ours"].get("peak_rss_gib")))
          for r in results),
        *((f"{r['population']:,}/{r['sampled']} Flower s/round, GiB",
           (r["baseline"].get("median_round_seconds"), r["baseline"].get("peak_rss_gib")))
          for r in results),
        *figures.items()])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
