r"""The adaptive privacy controller as a stage of the server chain: observe, decide, audit.

Between rounds, for every device the inner strategy sampled, the stage

1. builds the device's :class:`~fedmosaic.privacy.controller.observation.ControllerObservation`
   from what the server holds: the ledger's account of its spend and its cap, the risk stage's
   score and criteria of its last round, the change of the central evaluation, the leakage
   probe below, its update statistics and the anonymizer's last averaged update norms;
2. rewards the device's previous action
   (:func:`~fedmosaic.privacy.controller.reward.controller_reward`; a learning policy learns);
3. asks the policy for an action, decodes it and sends it: ``dp-spend-share`` in a copy of the
   device's training config, the knobs through the anonymizer stage (which sits outside this
   one and adds them to the same message);
4. appends the decision to the run's hash-chained audit log (``controller-audit.jsonl``):
   round, the device's pseudonym, the observation's digest, the action, the cap check and the
   policy's hash.

The *leakage probe* is a linkage attack the server can run on what it receives (DP-SGD's
outputs, so it costs no privacy): how much more a device's update resembles its own previous
update than the other devices' previous updates,
:math:`\ell_i = \cos(\Delta_i^t, \Delta_i^{t-1}) - \operatorname{mean}_{j \ne i}
\cos(\Delta_i^t, \Delta_j^{t-1})`. Noisier rounds (a smaller spend) and stronger anonymization
make a device's updates less linkable.

Whatever the policy says, the ledger stage (inside this one) refuses a round that would take
the device past its cap (:mod:`fedmosaic.privacy.renyi_filter`).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmosaic import records
from fedmosaic.privacy.anonymization import pseudonym
from fedmosaic.privacy.controller.audit import AuditLog
from fedmosaic.privacy.controller.observation import ControllerObservation
from fedmosaic.privacy.controller.policies import Policy
from fedmosaic.privacy.controller.reward import controller_reward, reward_weights
from fedmosaic.privacy.risk.channel import ChannelObservation
from fedmosaic.privacy.risk.perception import RiskScore
from fedmosaic.server.anonymizer_stage import AnonymizerStage
from fedmosaic.server.privacy_ledger import PrivacyLedgerStrategy
from fedmosaic.server.risk_stage import RiskStage, flat_update
from fedmosaic.strategies.wrapper import StrategyWrapper

log = logging.getLogger("fedmosaic")

AUDIT_FILE = "controller-audit.jsonl"
"""The audit log's name in the run folder."""


@dataclass
class Decision:
    """One device's decision in one round, kept to reward it a round later."""

    node: int
    partition: int | None
    action: dict[str, float]
    observation: ControllerObservation
    spent_before: float
    reward: float | None = None


@dataclass
class ControllerSettings:
    """What the stage needs from the run config."""

    num_rounds: int
    privacy_weight: float
    epsilon_weight: float
    anonymizer_signal: Mapping[str, float] = field(default_factory=dict)


class ControllerStage(StrategyWrapper):
    """Decide every sampled device's spend share and knobs each round (module docstring).

    Args:
        strategy: The next stage.
        policy: The policy (:func:`~fedmosaic.privacy.controller.policies.build_policy`).
        settings: Rounds planned, reward weights, the anonymizer's last update norms.
        audit_path: Where the audit log goes (``run folder / controller-audit.jsonl``).
        resumed: A resumed run continues the folder's chain; a new one replaces it.
        rounds_done: Rounds a continued run completed before it stopped
            (``server/continuation.py``): the observation's round fraction, the policy and the
            audit log see the round of the run, ``rounds_done + server_round``.

    The chain wires :attr:`ledger_stage` (required), :attr:`risk_stage` and
    :attr:`anonymizer_stage` after building.
    """

    def __init__(self, strategy: Strategy, policy: Policy, settings: ControllerSettings,
                 audit_path: Path, resumed: bool = False, rounds_done: int = 0) -> None:
        super().__init__(strategy)
        self.rounds_done = rounds_done
        self.policy = policy
        self.settings = settings
        if not resumed:  # a new run in a reused folder starts its own chain
            audit_path.unlink(missing_ok=True)
        self.audit = AuditLog(audit_path, policy.fingerprint())
        self.ledger_stage: PrivacyLedgerStrategy | None = None
        self.risk_stage: RiskStage | None = None
        self.anonymizer_stage: AnonymizerStage | None = None
        self.decisions: dict[int, dict[int, Decision]] = {}
        self.evaluations: dict[int, tuple[float, float]] = {}
        self.leakage: dict[int, float] = {}
        self._key = secrets.token_bytes(32)
        self._global: dict[str, np.ndarray] = {}
        self._previous_updates: dict[int, np.ndarray] = {}
        self.seconds: dict[int, float] = {}

    def observe_evaluation(self, server_round: int, accuracy: float, loss: float) -> None:
        """The central evaluation after ``server_round`` (0: the initial model).

        The round's outcome is complete now (spend, leakage, accuracy): its decisions are
        rewarded.
        """
        self.evaluations[server_round] = (float(accuracy), float(loss))
        self._reward(server_round)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Configure through ``strategy``; decide for each sampled device and send."""
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        started = time.perf_counter()
        self._global = {k: a.numpy() for k, a in arrays.items()}
        decided: dict[int, Decision] = {}
        for message in messages:
            node = message.metadata.dst_node_id
            decision = self._decide(server_round, node)
            decided[node] = decision
            content = RecordDict(dict(message.content.items()))
            content[records.CONFIG] = ConfigRecord({
                **content.config_records.get(records.CONFIG, {}),
                records.DP_SPEND_SHARE: decision.action["spend-share"]})
            message.content = content
        self.decisions[server_round] = decided
        self.seconds[server_round] = self.seconds.get(server_round, 0.0) + (
            time.perf_counter() - started)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Probe the replies' linkage, then aggregate through ``strategy``."""
        replies = list(replies)
        started = time.perf_counter()
        updates = {}
        for reply in replies:
            if not reply.has_error():
                update = flat_update(reply, self._global)
                # a refusal sends the global weights back: no update, nothing to link
                if update is not None and np.all(np.isfinite(update)) and np.any(update):
                    updates[reply.metadata.src_node_id] = update.astype(np.float32)
        self.leakage = {node: linkage(update, node, self._previous_updates)
                        for node, update in updates.items()}  # this round's repliers only
        self._previous_updates = updates
        self.seconds[server_round] = self.seconds.get(server_round, 0.0) + (
            time.perf_counter() - started)
        return self.strategy.aggregate_train(server_round, replies)

    def summary(self) -> dict[str, object]:
        """``summary.json``'s ``controller``: policy, its hash, the audit log's last hash, cost."""
        rewards = [d.reward for round_ in self.decisions.values() for d in round_.values()
                   if d.reward is not None]
        return {"policy": self.policy.name, "policy_hash": self.policy.fingerprint(),
                "audit_file": AUDIT_FILE, "audit_entries": self.audit.entries,
                "audit_last_hash": self.audit.last_hash,
                "mean_reward": float(np.mean(rewards)) if rewards else None,
                "seconds_per_round": float(np.mean(list(self.seconds.values())))
                if self.seconds else 0.0}

    def round_decisions(self, server_round: int) -> dict[str, dict[str, float]]:
        """``{partition-P or node-N: action, risk, budget left, reward}`` of a round."""
        table = {}
        for node, decision in sorted(self.decisions.get(server_round, {}).items()):
            partition = self._ledger_stage().partition_of(node)  # known once it replied
            name = f"partition-{partition}" if partition is not None else f"node-{node}"
            seen = decision.observation
            table[name] = {**decision.action, "risk": seen.risk,
                           "risk-channel": seen.risk_channel,
                           "risk-sensitivity": seen.risk_sensitivity,
                           "risk-context": seen.risk_context,
                           "risk-resources": seen.risk_resources,
                           "budget-left": decision.observation.budget_left,
                           "leakage": decision.observation.leakage,
                           "update-norm": decision.observation.update_norm,
                           "cosine-to-aggregate": decision.observation.cosine_to_aggregate,
                           **({"reward": decision.reward} if decision.reward is not None
                              else {})}
        return table

    def _decide(self, server_round: int, node: int) -> Decision:
        ledger_stage = self._ledger_stage()
        partition = ledger_stage.partition_of(node)
        spent, cap = self._spent_and_cap(partition)
        observation = self._observe(server_round, node, partition, spent, cap)
        action = self.policy.decide(observation, self.rounds_done + server_round,
                                    self.settings.num_rounds, self._pseudonym(node))
        applied = {"spend-share": action.spend_share}  # knobs only where an anonymizer runs
        if self.anonymizer_stage is not None:  # no policy turns reframing: the run's stays
            action = dataclasses.replace(action, knobs=dataclasses.replace(
                action.knobs, reframe=self.anonymizer_stage.knobs.reframe))
            self.anonymizer_stage.set_knobs(node, action.knobs)
            applied = action.to_mapping()
        self.audit.append(self.rounds_done + server_round, self._pseudonym(node),
                          observation.as_array().tolist(),
                          applied, {"cap": cap, "spent": spent, "room": max(0.0, cap - spent)})
        return Decision(node, partition, applied, observation, spent)

    def _observe(self, server_round: int, node: int, partition: int | None, spent: float,
                 cap: float) -> ControllerObservation:
        previous = self.decisions.get(server_round - 1, {}).get(node)
        risk = self._latest_risk(node)
        channel = self._latest_channel(server_round - 1)
        own = channel.get(node)
        norms = [c.update_norm for c in channel.values() if c.update_norm > 0]
        median = float(np.median(norms)) if norms else 0.0
        gained, lost = self._evaluation_change(server_round - 1)
        return ControllerObservation(
            round_fraction=(self.rounds_done + server_round - 1) / self.settings.num_rounds,
            budget_left=max(0.0, 1.0 - spent / cap) if np.isfinite(cap) and cap > 0 else 1.0,
            last_spend=(spent - previous.spent_before) / cap if previous is not None
            and np.isfinite(cap) and cap > 0 else 0.0,
            risk=risk.score if risk else 0.0,
            risk_channel=risk.channel if risk else 0.0,
            risk_sensitivity=risk.sensitivity if risk else 0.0,
            risk_context=risk.context if risk else 0.0,
            risk_resources=risk.resources if risk else 0.0,
            accuracy_change=gained, loss_change=lost,
            leakage=self.leakage.get(node, 0.0),
            update_norm=own.update_norm / median if own is not None and median > 0 else 0.0,
            cosine_to_aggregate=own.cosine_to_aggregate if own is not None else 0.0,
            generator_update_norm=self.settings.anonymizer_signal.get(
                "generator-update-norm", 0.0),
            critics_update_norm=self.settings.anonymizer_signal.get("critics-update-norm", 0.0))

    def _reward(self, server_round: int) -> None:
        """Reward every decision of ``server_round`` (its outcome is known now)."""
        gained, _ = self._evaluation_change(server_round)
        for node, decision in self.decisions.get(server_round, {}).items():
            spent, cap = self._spent_and_cap(decision.partition
                                             if decision.partition is not None
                                             else self._ledger_stage().partition_of(node))
            spend = (spent - decision.spent_before) / cap if np.isfinite(cap) and cap > 0 else 0.0
            weights = reward_weights(decision.observation.round_fraction,
                                     decision.observation.risk, self.settings.privacy_weight,
                                     self.settings.epsilon_weight)
            decision.reward = controller_reward(gained, self.leakage.get(node, 0.0), spend,
                                                weights)
            self.policy.learn(self._pseudonym(node), decision.reward)

    def _evaluation_change(self, server_round: int) -> tuple[float, float]:
        """(accuracy, loss) after ``server_round`` minus before it; zeros if unknown."""
        after, before = self.evaluations.get(server_round), self.evaluations.get(server_round - 1)
        if after is None or before is None:
            return 0.0, 0.0
        return after[0] - before[0], after[1] - before[1]

    def _spent_and_cap(self, partition: int | None) -> tuple[float, float]:
        ledger_stage = self._ledger_stage()
        if partition is None:  # before its first reply: the run's budget
            config = ledger_stage.config
            return 0.0, config.dp_epsilon_budget if config is not None else np.inf
        entry = ledger_stage.ledger.devices.get(partition)
        return (entry.epsilon_spent if entry is not None else 0.0), ledger_stage.cap_of(partition)

    def _latest_risk(self, node: int) -> RiskScore | None:
        if self.risk_stage is None:
            return None
        for server_round in sorted(self.risk_stage.scores, reverse=True):
            if node in self.risk_stage.scores[server_round]:
                return self.risk_stage.scores[server_round][node]
        return None

    def _latest_channel(self, server_round: int) -> dict[int, ChannelObservation]:
        if self.risk_stage is None:
            return {}
        return {node: observation.channel for node, observation in
                self.risk_stage.observations.get(server_round, {}).items()}

    def _pseudonym(self, node: int) -> str:
        return pseudonym(str(node), self._key)[:16]

    def _ledger_stage(self) -> PrivacyLedgerStrategy:
        if self.ledger_stage is None:
            raise RuntimeError("the controller stage needs the chain's privacy ledger stage; "
                               "build it with server/chain.py's build_chain")
        return self.ledger_stage


def controller_scalars(decisions: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """TensorBoard scalars of a round's :meth:`ControllerStage.round_decisions`."""
    values = {}
    for device, decision in decisions.items():
        for key in ("spend-share", "strength", "risk", "budget-left"):
            if key in decision:
                values[f"controller/{key.replace('-', '_')}/{device}"] = float(decision[key])
    if decisions:
        values["controller/spend_share_mean"] = float(np.mean(
            [d["spend-share"] for d in decisions.values()]))
    return values


def linkage(update: np.ndarray, node: int, previous: Mapping[int, np.ndarray]) -> float:
    r"""The linkage probe :math:`\ell_i` (module docstring); 0 without a previous own update."""
    own = previous.get(node)
    others = [u for n, u in previous.items() if n != node and u.shape == update.shape]
    if own is None or own.shape != update.shape or not others:
        return 0.0
    return _cosine(update, own) - float(np.mean([_cosine(update, u) for u in others]))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    scale = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / scale) if scale > 0 else 0.0
