import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdam,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    QFedAvg,
)

from fedmosaic.config import RunConfig
from fedmosaic.server.app import warn_pointless_settings
from fedmosaic.simulation.inprocess import run_in_process
from fedmosaic.strategies.fedavg import FedAvg, FedAvgM, FedProx
from fedmosaic.strategies.moe_fusion import MoEFusion
from fedmosaic.strategies.registry import STRATEGIES, build_aggregator
from fedmosaic.strategies.trimmed_mean import TrimmedMean
from fedmosaic.task import build_model, cached_dataset

README = Path(__file__).parents[2] / "README.md"


def test_fedavg_samples_from_the_run_config():
    strategy = build_aggregator(RunConfig.from_mapping(
        {"num-clients": 10, "fraction-train": 0.25, "fraction-evaluate": 0.0}))

    assert type(strategy) is FedAvg
    assert strategy.fraction_train == 0.25
    assert strategy.min_train_nodes == 3  # ceil(0.25 * 10)
    assert strategy.min_evaluate_nodes == 0
    assert strategy.min_available_nodes == 10


def test_fedprox_gets_its_mu():
    strategy = build_aggregator(RunConfig.from_mapping({"strategy": "fedprox",
                                                        "proximal-mu": 0.1}))

    assert isinstance(strategy, FedProx)
    assert strategy.proximal_mu == 0.1


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_registered_name_builds_with_the_run_config_sampling(name):
    strategy = build_aggregator(RunConfig.from_mapping({"strategy": name, "num-clients": 10}))

    assert isinstance(strategy, STRATEGIES[name])
    assert strategy.min_available_nodes == 10


@pytest.mark.parametrize(("overrides", "cls", "attribute", "expected"), [
    ({"strategy": "trimmed-mean", "trim-fraction": 0.3}, TrimmedMean, "beta", 0.3),
    ({"strategy": "fedtrimmedavg", "trim-fraction": 0.1}, FedTrimmedAvg, "beta", 0.1),
    ({"strategy": "moe-fusion-trim", "trim-fraction": 0.1}, MoEFusion, "beta", 0.1),
    ({"strategy": "moe-fusion", "trim-fraction": 0.1}, MoEFusion, "beta", 0.0),
    ({"strategy": "krum", "num-malicious-nodes": 2}, Krum, "num_malicious_nodes", 2),
    ({"strategy": "multikrum", "num-malicious-nodes": 3}, MultiKrum, "num_nodes_to_select", 7),
    ({"strategy": "bulyan", "num-malicious-nodes": 1}, Bulyan, "num_malicious_nodes", 1),
    ({"strategy": "qfedavg", "learning-rate": 0.01}, QFedAvg, "client_learning_rate", 0.01),
])
def test_each_strategy_gets_the_arguments_it_takes(overrides, cls, attribute, expected):
    strategy = build_aggregator(RunConfig.from_mapping(overrides))

    assert isinstance(strategy, cls)
    assert getattr(strategy, attribute) == expected


def test_moe_fusion_knows_each_modality_expert():
    strategy = build_aggregator(RunConfig.from_mapping({"strategy": "moe-fusion"}))

    assert list(strategy.modality_prefixes) == ["accelerometer", "gyroscope"]
    assert strategy.modality_prefixes["gyroscope"] == (
        "encoders.gyroscope.", "heads.gyroscope.", "fusion.level1.1.")


def test_module_path_loads_a_user_strategy():
    strategy = build_aggregator(RunConfig.from_mapping(
        {"strategy": "flwr.serverapp.strategy:FedAdam"}))

    assert isinstance(strategy, FedAdam)


@pytest.mark.parametrize(("name", "message"), [
    ("nosuch", r"unknown strategy 'nosuch'; expected one of \['bulyan'"),
    ("no_such_module:Thing", "strategy 'no_such_module:Thing' does not load"),
    ("flwr.serverapp.strategy:Nothing", "does not load"),
    ("fedmosaic.records:ARRAYS", "must be a flwr.serverapp.strategy.Strategy subclass"),
])
def test_unknown_or_unfit_strategies_are_clear_errors(name, message):
    with pytest.raises(ValueError, match=message):
        build_aggregator(RunConfig.from_mapping({"strategy": name}))


def test_readme_example_is_the_tested_file():
    example = (Path(__file__).parent / "my_strategies.py").read_text().split("\n", 2)[2]

    assert f"```python\n{example}```" in README.read_text()
    assert len(example.strip().splitlines()) <= 30


def test_readme_example_runs_a_round_by_module_path(tmp_path):
    config = run_in_process({"strategy": "my_strategies:CoordinateMedian", "num-clients": 3,
                             "num-server-rounds": 1, "local-epochs": 1, "out-dir": str(tmp_path),
                             "run-name": "median", "fraction-evaluate": 0.0})

    summary = json.loads((config.run_dir() / "summary.json").read_text())
    assert summary["rounds"] == 1
    assert summary["history"][0]["replies"] == 3
    assert summary["history"][0]["rejected"] == 0
    assert summary["final_accuracy"] != summary["initial_accuracy"]  # the model was updated


def test_fedavgm_gets_its_server_step_and_momentum():
    strategy = build_aggregator(RunConfig.from_mapping(
        {"strategy": "fedavgm", "server-learning-rate": 0.5, "server-momentum": 0.8}))

    assert isinstance(strategy, FedAvgM)
    assert (strategy.server_learning_rate, strategy.server_momentum) == (0.5, 0.8)


def test_fedavgm_server_step_scales_the_averaged_update_behind_the_server_chain(tmp_path):
    """One round: w = w0 + η (FedAvg's w − w0), through validation and the other stages."""
    base = {"num-clients": 3, "num-server-rounds": 1, "local-epochs": 1,
            "fraction-evaluate": 0.0, "out-dir": str(tmp_path)}
    averaged = run_in_process({**base, "run-name": "fedavg"})
    stepped = run_in_process({**base, "run-name": "half", "strategy": "fedavgm",
                              "server-learning-rate": 0.5})
    initial = build_model(averaged, cached_dataset(averaged)).state_dict()

    def model_after_round_one(config: RunConfig) -> dict[str, torch.Tensor]:
        checkpoint = torch.load(config.run_dir() / "checkpoints" / "round-001.pt")
        return checkpoint["model_state"]

    full, half = model_after_round_one(averaged), model_after_round_one(stepped)
    assert any(not torch.equal(full[k], initial[k]) for k in initial)
    for key, start in initial.items():
        torch.testing.assert_close(half[key], start + 0.5 * (full[key] - start),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("settings", "warned"), [
    ({"strategy": "fedavg", "server-momentum": 0.5}, "have no effect with strategy=fedavg"),
    ({"strategy": "fedavgm", "server-momentum": 0.5}, None),
    ({"strategy": "flwr.serverapp.strategy:FedAvgM", "server-learning-rate": 2.0}, None),
])
def test_server_step_settings_warn_only_where_no_strategy_takes_them(settings, warned, caplog):
    warn_pointless_settings(RunConfig.from_mapping(settings))

    if warned is None:
        assert "server-momentum" not in caplog.text
    else:
        assert warned in caplog.text


def test_central_dp_refuses_a_server_step_it_does_not_cover():
    with pytest.raises(ValueError, match="central-dp='server' with fedavgm's server-learning"):
        RunConfig.from_mapping({"strategy": "fedavgm", "server-momentum": 0.8,
                                "central-dp": "server"})


def test_fedavgm_steps_from_the_model_the_server_sends():
    """The momentum step starts from the arrays of configure_train, not its own last output."""
    strategy = build_aggregator(RunConfig.from_mapping(
        {"strategy": "fedavgm", "server-momentum": 0.5, "num-clients": 2}))
    sent = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})

    class Nodes:
        def get_node_ids(self):
            return [1, 2]

    strategy.configure_train(1, sent, ConfigRecord(), Nodes())
    assert strategy.current_arrays is sent
    elsewhere = ArrayRecord({"w": Array(np.ones(3, dtype=np.float32))})
    strategy.configure_train(2, elsewhere, ConfigRecord(), Nodes())
    assert strategy.current_arrays is elsewhere
