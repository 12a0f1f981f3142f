import pytest
from flwr.serverapp.strategy import FedAvg, FedProx

from fedmosaic.config import RunConfig
from fedmosaic.strategies.registry import build_strategy


def test_fedavg_samples_from_the_run_config():
    strategy = build_strategy(RunConfig.from_mapping(
        {"num-clients": 10, "fraction-train": 0.25, "fraction-evaluate": 0.0}))

    assert type(strategy) is FedAvg
    assert strategy.fraction_train == 0.25
    assert strategy.min_train_nodes == 3  # ceil(0.25 * 10)
    assert strategy.min_evaluate_nodes == 0
    assert strategy.min_available_nodes == 10


def test_fedprox_gets_its_mu():
    strategy = build_strategy(RunConfig.from_mapping({"strategy": "fedprox",
                                                      "proximal-mu": 0.1}))

    assert isinstance(strategy, FedProx)
    assert strategy.proximal_mu == 0.1


def test_unknown_strategy_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown strategy 'krum'; expected one of \['fedavg'"):
        build_strategy(RunConfig.from_mapping({"strategy": "krum"}))
