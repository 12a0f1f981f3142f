import json

import numpy as np
import pytest
from flwr.serverapp.strategy import FedAvg

from fedmosaic.compression import CompressionSpec, compress, decode
from fedmosaic.config import RunConfig
from fedmosaic.server.edge.aggregation import DeviceUpdate, EdgeAggregator, weighted_average
from fedmosaic.server.edge.hierarchy import HierarchicalStrategy
from fedmosaic.server.edge.robust import edge_combiner
from fedmosaic.server.validation import validate_update
from fedmosaic.simulation.inprocess import run_in_process

# Five devices, one coordinate each of "w" (2 values) and "b" (1 value); device 4 is an outlier.
DELTAS = [{"w": np.array([v, -v], np.float32), "b": np.array([10 * v], np.float32)}
          for v in (1.0, 2.0, 3.0, 4.0, 100.0)]
EXAMPLES = [1, 1, 1, 1, 6]


def test_trimmed_mean_at_the_edge_drops_the_extremes_of_each_coordinate_unweighted():
    combine = edge_combiner("trimmed-mean", 0.2)  # floor(0.2 * 5) = 1 cut at each end

    combined = combine(DELTAS, EXAMPLES)

    # w[0]: drop 1 and 100, mean(2, 3, 4) = 3; w[1] likewise -3; b: mean(20, 30, 40) = 30
    np.testing.assert_allclose(combined["w"], [3.0, -3.0])
    np.testing.assert_allclose(combined["b"], [30.0])
    assert combined["w"].dtype == np.float32


def test_median_at_the_edge_is_the_coordinate_wise_median():
    combined = edge_combiner("median", 0.2)(DELTAS[:4], EXAMPLES[:4])

    # an even count: the mean of the two middle values, (2 + 3) / 2
    np.testing.assert_allclose(combined["w"], [2.5, -2.5])
    np.testing.assert_allclose(combined["b"], [25.0])


def test_mean_at_the_edge_is_the_examples_weighted_average():
    assert edge_combiner("mean", 0.2) is weighted_average


@pytest.mark.parametrize(("method", "trim", "message"), [
    ("mode", 0.2, "edge-aggregation must be one of"),
    ("trimmed-mean", 0.5, r"trim_fraction must lie in \[0, 0.5\)"),
])
def test_bad_edge_aggregation_settings_are_refused(method, trim, message):
    with pytest.raises(ValueError, match=message):
        edge_combiner(method, trim)


def test_an_edge_with_a_robust_rule_ignores_an_outlying_device():
    edge = EdgeAggregator(0, CompressionSpec(), validate_update, combine=edge_combiner(
        "median", 0.2))
    reference = {"w": np.zeros(2, np.float32), "b": np.zeros(1, np.float32)}
    updates = [DeviceUpdate(str(i), compress(d, CompressionSpec(), None,
                                             np.random.default_rng(0))[0], n)
               for i, (d, n) in enumerate(zip(DELTAS, EXAMPLES, strict=True))]

    aggregate = edge.aggregate(updates, reference, server_round=1)

    sent = decode(aggregate.payload)
    np.testing.assert_allclose(sent["w"], [3.0, -3.0])  # the median of 1, 2, 3, 4, 100
    assert aggregate.num_examples == sum(EXAMPLES) and aggregate.accepted == 5


def test_the_run_config_reaches_every_simulated_edge():
    config = RunConfig.from_mapping({"num-clients": 10, "num-edges": 2,
                                     "edge-aggregation": "median"})

    edges = HierarchicalStrategy.from_config(FedAvg(), config).edges

    for edge in edges:
        np.testing.assert_allclose(edge.combine(DELTAS, EXAMPLES)["w"], [3.0, -3.0])


def test_a_run_with_trimmed_mean_at_the_edges_under_attack_completes(tmp_path):
    config = run_in_process({"num-clients": 10, "num-edges": 2, "num-server-rounds": 2,
                             "local-epochs": 1, "fraction-evaluate": 0.0,
                             "edge-aggregation": "trimmed-mean", "trim-fraction": 0.2,
                             "attack": "scale-100", "malicious-fraction": 0.2,
                             "out-dir": str(tmp_path), "run-name": "edge-trimmed"})
    summary = json.loads((config.run_dir() / "summary.json").read_text())

    assert len(summary["history"]) == 2
    assert np.isfinite(summary["final_accuracy"])
    assert all(row["bytes_edge_to_cloud"] > 0 for row in summary["history"])
