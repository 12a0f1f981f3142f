"""Map the run config's ``strategy`` to a configured aggregation strategy.

Names: ``fedavg`` (McMahan et al. 2017, arXiv:1602.05629), ``fedprox`` (Li et al. 2020,
arXiv:1812.06127; sends ``proximal-mu``, which our ClientApp adds as ``mu/2 ||w - w_global||^2``;
both are Flower's, averaging the arrays the server already decoded: ``strategies/fedavg.py``),
``fedavgm`` (Flower's, stepping from the model the server sends, with ``server-learning-rate``
and ``server-momentum``),
every other Flower built-in (``fedadam``, ``fedadagrad``, ``fedyogi``,
``fedmedian``, ``fedtrimmedavg``, ``krum``, ``multikrum``, ``bulyan``, ``qfedavg``) and ours
(``trimmed-mean``, ``moe-fusion``, ``moe-fusion-trim``). ``package.module:Class`` loads any
``flwr.serverapp.strategy.Strategy`` subclass.

Every strategy is built from the same candidate arguments (sampling, record keys, and the
run config's ``trim-fraction``, ``num-malicious-nodes``, ``proximal-mu``, ``learning-rate``,
the model's modality prefixes); each class receives only those its constructor accepts (all
named along its class hierarchy). MultiKrum keeps ``n - f`` of the ``n`` sampled updates.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from flwr.serverapp.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedMedian,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    QFedAvg,
    Strategy,
)

from fedmosaic import records
from fedmosaic.config import RunConfig
from fedmosaic.strategies.fedavg import FedAvg, FedAvgM, FedProx
from fedmosaic.strategies.moe_fusion import MoEFusion
from fedmosaic.strategies.trimmed_mean import TrimmedMean
from fedmosaic.task import build_model, cached_dataset

STRATEGIES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg, "fedprox": FedProx, "fedavgm": FedAvgM, "fedadam": FedAdam,
    "fedadagrad": FedAdagrad, "fedyogi": FedYogi, "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg, "krum": Krum, "multikrum": MultiKrum, "bulyan": Bulyan,
    "qfedavg": QFedAvg, "trimmed-mean": TrimmedMean, "moe-fusion": MoEFusion,
    "moe-fusion-trim": MoEFusion,
}
TRIMMING = ("fedtrimmedavg", "trimmed-mean", "moe-fusion-trim")
"""Names whose ``beta`` is the run config's ``trim-fraction`` (``moe-fusion`` trims nothing)."""


def build_aggregator(config: RunConfig) -> Strategy:
    """The bare strategy ``config.strategy`` with sampling set from the run config.

    Every sampled round waits for ``RunConfig.train_nodes`` nodes, so round 1 does not start
    before the SuperNodes have connected. The server chain (``server/chain.py``) puts the
    aggregator behind validation and the other stages.
    """
    cls = strategy_class(config.strategy)
    candidates: dict[str, Any] = {
        "fraction_train": config.fraction_train,
        "fraction_evaluate": config.fraction_evaluate,
        "min_train_nodes": config.train_nodes,
        "min_evaluate_nodes": config.evaluate_nodes,
        "min_available_nodes": config.num_clients,
        "weighted_by_key": records.NUM_EXAMPLES,
        "arrayrecord_key": records.ARRAYS,
        "configrecord_key": records.CONFIG,
        "proximal_mu": config.proximal_mu,
        "beta": config.trim_fraction if config.strategy in TRIMMING else 0.0,
        "num_malicious_nodes": config.num_malicious_nodes,
        "num_nodes_to_select": max(1, config.train_nodes - config.num_malicious_nodes),
        "client_learning_rate": config.learning_rate,
        "server_learning_rate": config.server_learning_rate,
        "server_momentum": config.server_momentum,
    }
    if config.mode == "async":  # the asynchronous loop picks each device; take all it shows
        candidates.update(fraction_train=1.0, min_train_nodes=1, min_available_nodes=1)
    if cls is MoEFusion:
        candidates["modality_prefixes"] = modality_prefixes(config)
    return cls(**accepted_kwargs(cls, candidates))


def strategy_class(name: str) -> type[Strategy]:
    """The class a registry name or ``package.module:Class`` path names.

    Raises:
        ValueError: for an unknown name, a path that does not import, or a class that is not a
            ``flwr.serverapp.strategy.Strategy``.
    """
    if name in STRATEGIES:
        return STRATEGIES[name]
    module_name, sep, class_name = name.partition(":")
    if not sep:
        raise ValueError(f"unknown strategy {name!r}; expected one of {sorted(STRATEGIES)} or "
                         "'package.module:Class'")
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"strategy {name!r} does not load: {error}") from error
    if not (inspect.isclass(found) and issubclass(found, Strategy)):
        raise ValueError(f"strategy {name!r} must be a flwr.serverapp.strategy.Strategy "
                         f"subclass, got {found!r}")
    return found


def accepted_kwargs(cls: type, candidates: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``candidates`` that ``cls``'s constructor names.

    A constructor that forwards ``**kwargs`` to its base class also accepts the base's named
    parameters, so the names are collected along the method resolution order.
    """
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        names.update(p.name for p in parameters)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            break
    return {k: v for k, v in candidates.items() if k in names}


def modality_prefixes(config: RunConfig) -> dict[str, tuple[str, ...]]:
    """Per modality of the run's dataset, the state-dict prefixes of its expert."""
    dataset = cached_dataset(config)
    model = build_model(config, dataset)
    return {spec.name: model.modality_parameter_prefixes(spec.name) for spec in dataset.specs}
