"""The server chain: every stage a training round's replies pass through, built from the config.

A stage is a :class:`~fedmosaic.strategies.wrapper.StrategyWrapper` (or Flower's own wrapper)
around the next one; the aggregation strategy (``strategy``,
:func:`~fedmosaic.strategies.registry.build_aggregator`) is the innermost. :func:`build_chain`
lists the stages outermost first, in the order a reply meets them, one line each; a stage the
config does not ask for is ``None`` and left out. Adding a stage is one line there.

======================  ======================================================================
stage                   what it does to a round
======================  ======================================================================
node loss               ``mode = sync``: waits a bounded time for nodes, samples from those
                        online, attributes error replies to their node, turns a missing reply
                        into a ``timeout`` failure (``round-timeout``, ``node-wait``)
metering                counts the serialized bytes of every message, both directions
simulated clock         times rounds on simulated device latencies (``straggler-fraction``,
                        ``latency-sigma``)
risk perception         scores each device from what the server observed of its round
                        (``risk-perception``, flat synchronous federations)
anonymizer              sends the generator and each device's knobs; takes out and k-anonymizes
                        released records (``anonymize-training``, ``anonymizer-release``)
controller              between rounds: each device's spend share and knobs from its
                        observation, audited (``controller``)
edge tier               devices' compressed deltas → one reply per edge (``num-edges > 0``)
privacy ledger          enters each DP-SGD reply's spend; drops refusals; sends budgets
staleness filter        ``mode = async``: drops replies older than ``max-staleness`` (outside
                        the edge tier when there is one, which has no DP-SGD to enter)
colluding attacker      simulation only: crafts ALIE / IPM updates (``attack=alie|ipm``)
secure aggregation      ``secure-aggregation``: SecAgg+ key exchange before training; unmasks
                        the sum of the masked replies and passes on one aggregate reply
                        (deployed edges run it among their own devices instead)
validation              drops malformed or out-of-bounds updates, logs why, skips a short round
central-DP accounting   accounts each central-DP release in the ledger (``central-dp``)
central DP              Flower's fixed-clipping wrapper: clip, aggregate, add noise
aggregator              the ``strategy`` itself (FedAvg, trimmed mean, MoEFusion, ...)
======================  ======================================================================

Why this order: the ledger sits outside validation, so a device whose update is rejected still
has its spend entered; the colluding attacker sits outside validation, so the defences see the
crafted updates; central DP sits inside validation, so it only clips and accounts what is
aggregated (``server/privacy_ledger.py``). Secure aggregation sits inside the ledger, which
reads each device's DP metadata (sent in the clear), and outside validation, which then checks
the one aggregate it unmasked. The controller sits inside the anonymizer stage, so
the knobs it sets reach the same round's messages, and outside the ledger, whose account it
reads.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from flwr.serverapp.strategy import Strategy

from fedmosaic.config import COLLUDING_ATTACKS, RunConfig
from fedmosaic.privacy.anonymizer.generator import MultimodalAnonymizer
from fedmosaic.privacy.anonymizer.knobs import AnonymizerKnobs
from fedmosaic.privacy.central import wrap_central_dp
from fedmosaic.privacy.controller.policies import build_policy
from fedmosaic.privacy.ledger import PrivacyLedger
from fedmosaic.privacy.risk.perception import RiskPerception
from fedmosaic.privacy.risk.sensitivity import SensitivityTable, parse_sensitivities
from fedmosaic.server.anonymizer_stage import AnonymizerStage
from fedmosaic.server.async_rounds import StalenessFilter
from fedmosaic.server.collusion import CollusionSimulation
from fedmosaic.server.controller_stage import AUDIT_FILE, ControllerSettings, ControllerStage
from fedmosaic.server.edge.configured import cloud_config
from fedmosaic.server.edge.hierarchy import HierarchicalStrategy
from fedmosaic.server.latency import SimulatedClock
from fedmosaic.server.node_loss import NodeLossStage
from fedmosaic.server.privacy_ledger import CentralDPAccounting, PrivacyLedgerStrategy
from fedmosaic.server.risk_stage import RiskStage
from fedmosaic.server.secure_aggregation import SecureAggregationServer, SecureAggregationStage
from fedmosaic.server.traffic import MeteredStrategy
from fedmosaic.server.validation import ReplyContract, ValidatingStrategy
from fedmosaic.strategies.registry import build_aggregator
from fedmosaic.task import cached_dataset

Stage = Callable[[Strategy], Strategy]
"""Wraps the next stage of the chain (the inner strategy) and returns the wrapping strategy."""
StageT = TypeVar("StageT", bound=Strategy)


@dataclass(frozen=True)
class ServerChain:
    """The built chain, outermost first: ``stages[i]`` wraps ``stages[i + 1]``.

    ``stages[0]`` is the strategy the ServerApp runs, ``stages[-1]`` the aggregator.
    """

    stages: tuple[Strategy, ...]

    @classmethod
    def around(cls, aggregator: Strategy, stages: Sequence[Stage | None]) -> ServerChain:
        """Wrap ``aggregator`` in ``stages`` (outermost first; ``None`` entries are skipped)."""
        built = [aggregator]
        for stage in reversed([s for s in stages if s is not None]):
            built.insert(0, stage(built[0]))
        return cls(tuple(built))

    @property
    def strategy(self) -> Strategy:
        """The outermost stage: what ``start`` is called on."""
        return self.stages[0]

    def find(self, kind: type[StageT]) -> StageT | None:
        """The stage of type ``kind``, or ``None`` if the config left it out."""
        return next((s for s in self.stages if isinstance(s, kind)), None)

    def get(self, kind: type[StageT]) -> StageT:
        """The stage of type ``kind``.

        Raises:
            LookupError: if the chain has no such stage.
        """
        stage = self.find(kind)
        if stage is None:
            raise LookupError(f"the server chain has no {kind.__name__}; its stages are "
                              f"{[type(s).__name__ for s in self.stages]}")
        return stage


def device_contract(config: RunConfig) -> ReplyContract:
    """What a device's training reply carries under ``config``."""
    return ReplyContract.for_devices(config, len(cached_dataset(config).specs))


def cloud_contract(config: RunConfig) -> ReplyContract:
    """The replies the cloud validates: aggregates (edges', secure aggregation's) or devices'."""
    if config.num_edges or config.secure_aggregation:
        return ReplyContract.for_edge_aggregates(config)
    return device_contract(config)


def build_chain(config: RunConfig, ledger: PrivacyLedger, round_offset: int = 0,
                rounds_done: int = 0, anonymizer: MultimodalAnonymizer | None = None,
                run_dir: Path | None = None,
                anonymizer_signal: Mapping[str, float] | None = None) -> ServerChain:
    """The server chain of ``config`` (module docstring), around ``config``'s aggregator.

    Args:
        config: The run config.
        ledger: The run's privacy ledger (fresh, or restored by ``resume-from``).
        round_offset: Rounds run before a resume; the ledger counts round ``r`` as
            ``round_offset + r``.
        rounds_done: Rounds a continued run completed (``server/continuation.py``; 0 for a
            new run): the controller decides for round ``rounds_done + r`` of the run.
        anonymizer: The trained generator (needed by ``anonymize-training`` and
            ``anonymizer-release``).
        run_dir: The run folder (released records go to its ``releases/``, the controller's
            audit log to ``controller-audit.jsonl``).
        anonymizer_signal: The anonymizer's last federated round (its update norms), for the
            controller's observation.

    Raises:
        ValueError: If the config uses the anonymizer and none is given, or a controller
            and no run folder.
    """
    uses_anonymizer = config.anonymize_training or config.anonymizer_release > 0
    if uses_anonymizer and anonymizer is None:
        raise ValueError("anonymize-training / anonymizer-release need a trained anonymizer, "
                         "got none")
    if config.controller != "none" and run_dir is None:
        raise ValueError(f"controller={config.controller} writes an audit log: give run_dir")
    central = config.central_dp != "none"
    colluding = config.attack in COLLUDING_ATTACKS and config.malicious_fraction > 0
    risk = (config.risk_perception and not config.num_edges and config.mode == "sync"
            and not config.secure_aggregation)  # its channel reads each update
    asynchronous = config.mode == "async"
    chain = ServerChain.around(build_aggregator(cloud_config(config)), [
        functools.partial(NodeLossStage, node_wait=config.node_wait,
                          round_timeout=config.round_timeout) if not asynchronous else None,
        MeteredStrategy,
        functools.partial(SimulatedClock, config=config, synchronous=not asynchronous)
        if config.simulated_latency else None,
        functools.partial(RiskStage, specs=cached_dataset(config).specs,
                          perception=RiskPerception(sensitivity=SensitivityTable(
                              parse_sensitivities(config.risk_sensitivities),
                              specs=cached_dataset(config).specs))) if risk else None,
        functools.partial(AnonymizerStage, generator=anonymizer,
                          knobs=AnonymizerKnobs.from_mapping(config.to_mapping()),
                          num_classes=cached_dataset(config).num_classes,
                          release_dir=run_dir / "releases" if run_dir else None,
                          release_k=config.release_k, most=config.anonymizer_release)
        if uses_anonymizer else None,
        functools.partial(ControllerStage, policy=build_policy(
            config.controller, AnonymizerKnobs.from_mapping(config.to_mapping()),
            config.controller_policy, config.seed), settings=ControllerSettings(
            config.num_server_rounds, config.controller_privacy_weight,
            config.controller_epsilon_weight, dict(anonymizer_signal or {})),
            audit_path=run_dir / AUDIT_FILE, resumed=round_offset > 0,  # type: ignore[operator]
            rounds_done=rounds_done)
        if config.controller != "none" else None,
        StalenessFilter if asynchronous and config.num_edges else None,  # sees device replies
        functools.partial(HierarchicalStrategy.from_config, config=config)
        if config.num_edges else None,
        functools.partial(PrivacyLedgerStrategy, ledger=ledger, round_offset=round_offset,
                          config=config),
        StalenessFilter if asynchronous and not config.num_edges else None,
        functools.partial(CollusionSimulation, attack=config.attack) if colluding else None,
        functools.partial(SecureAggregationStage, protocol=SecureAggregationServer(
            config.secure_aggregation_clip, config.secure_aggregation_max_weight,
            config.device_bits, config.round_timeout,
            contract=ReplyContract.for_edge_aggregates(config) if config.num_edges
            else device_contract(config), relayed=config.num_edges > 0))
        if config.secure_aggregation and config.edge_role == "simulated" else None,
        functools.partial(ValidatingStrategy, max_norm=config.max_update_norm or math.inf,
                          min_replies=config.min_valid_replies, contract=cloud_contract(config),
                          evaluate_contract=ReplyContract.for_evaluation(
                              config, [s.name for s in cached_dataset(config).specs])),
        functools.partial(CentralDPAccounting, ledger=ledger, mode=config.central_dp,
                          noise_multiplier=config.central_noise_multiplier,
                          sampled=config.train_nodes, delta=config.delta) if central else None,
        functools.partial(wrap_central_dp, mode=config.central_dp,
                          noise_multiplier=config.central_noise_multiplier,
                          clipping_norm=config.central_clipping_norm,
                          num_sampled_clients=config.train_nodes) if central else None,
    ])
    risk_stage = chain.find(RiskStage)
    if risk_stage is not None:  # a device's rejections are part of its channel
        risk_stage.rejections = [chain.get(PrivacyLedgerStrategy).rejections,
                                 chain.get(ValidatingStrategy).rejections]
    controller = chain.find(ControllerStage)
    if controller is not None:
        controller.ledger_stage = chain.get(PrivacyLedgerStrategy)
        controller.risk_stage, controller.anonymizer_stage = risk_stage, chain.find(
            AnonymizerStage)
    return chain
