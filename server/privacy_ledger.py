"""The privacy ledger's stages of the server chain: device spend and budgets, central-DP spend.

:class:`PrivacyLedgerStrategy` sits outside the update validator (which would reject a
refusal's ``num-examples = 0``), so every device that trained has its spend entered, also
when its update is then rejected: it spent the budget all the same. Central DP's clipping
and noise sit inside the validator, so they only ever see validated updates (Flower's
wrapper would clip a wrong-shaped update by broadcasting, and skips the whole round when one
reply is an error), and :class:`CentralDPAccounting` accounts the round from exactly the
replies that were aggregated (the order is ``server/chain.py``'s). Each round the ledger
strategy

* enters every DP-SGD reply into the :class:`~fedmosaic.privacy.ledger.PrivacyLedger` and
  passes on only the replies of devices that trained;
* continues a ledger restored from a checkpoint (``resume-from``, :func:`resume`);
* after a restart, sends every device its segments from before it (``dp-prior-<id>``), so a
  device that lost its own account still counts them against its budget;
* sends a device a new ε budget (``dp-epsilon-budget`` in its training config) after
  :meth:`PrivacyLedgerStrategy.set_epsilon_budget`, copying the message content FedAvg
  shares across its messages before editing it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmosaic import records
from fedmosaic.config import RunConfig
from fedmosaic.privacy.budgets import assigned_epsilon_budget
from fedmosaic.privacy.central import central_epsilon, round_noise_multiplier
from fedmosaic.privacy.ledger import CentralEntry, PrivacyLedger
from fedmosaic.server.validation import MetricRule, RejectedUpdate, Rejections, dp_rules
from fedmosaic.strategies.wrapper import StrategyWrapper

log = logging.getLogger("fedmosaic")


class PrivacyLedgerStrategy(StrategyWrapper):
    """Delegates to ``strategy``; keeps ``ledger`` (module docstring).

    Args:
        strategy: Any Flower strategy (in a run, the next stage of the server chain).
        ledger: The ledger to update (a fresh one, or one restored from a checkpoint).
        round_offset: Rounds already run before this run (resumed from a checkpoint); the
            ledger counts this run's round ``r`` as ``round_offset + r``.
        config: The run config: with ``dp`` every reply must carry complete, consistent DP
            metadata; each device's cap is what the run assigned it
            (:func:`~fedmosaic.privacy.budgets.assigned_epsilon_budget`) or what
            :meth:`set_epsilon_budget` set. ``None``: the budget each device reports is its
            cap, and replies without DP metadata pass.

    """

    def __init__(self, strategy: Strategy, ledger: PrivacyLedger, round_offset: int = 0,
                 config: RunConfig | None = None) -> None:
        super().__init__(strategy)
        self.round_offset = round_offset
        self.ledger = ledger
        self.config = config
        self.rejections = Rejections()
        self._rules = {**dp_rules(config), records.NUM_EXAMPLES: MetricRule(
            0, config.max_examples, integer=True)} if config is not None else {}
        self.epsilon_budgets: dict[int, float] = {}
        self._restored = {pid: dataclasses.replace(entry, segments=list(entry.segments))
                          for pid, entry in ledger.devices.items()} if round_offset else {}
        self._node_partition: dict[int, int] = {}
        self._partition_node: dict[int, int] = {}
        self._connected: set[int] = set()
        self._sent_budgets: dict[int, float] = {}
        if config is not None and config.dp:
            assigned_epsilon_budget(config, 0)  # a malformed budgets file fails at start

    def set_epsilon_budget(self, partition_id: int, epsilon_budget: float) -> None:
        """Send device ``partition_id`` the ε budget from its next training message on.

        Raises:
            ValueError: If ``epsilon_budget`` is not finite and > 0.

        """
        if not 0.0 < epsilon_budget < float("inf"):
            raise ValueError(f"epsilon_budget must be finite and > 0, got {epsilon_budget}")
        self.epsilon_budgets[partition_id] = float(epsilon_budget)

    def partition_of(self, node_id: int) -> int | None:
        """The partition node ``node_id`` trained as (``None`` before its first DP reply)."""
        return self._node_partition.get(node_id)

    def cap_of(self, partition_id: int) -> float:
        """Device ``partition_id``'s cap: the budget last sent to it, else the assigned one."""
        if partition_id in self._sent_budgets:
            return self._sent_budgets[partition_id]
        return (assigned_epsilon_budget(self.config, partition_id) if self.config is not None
                else math.inf)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Configure through ``strategy``; add per-device budgets to copies of the content."""
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        # every connected node (an asynchronous dispatch shows the aggregator only its own)
        self._connected = (set(getattr(grid, "population", None) or grid.get_node_ids())
                           if grid is not None else set())
        priors = self._prior_segments()
        for message in messages:
            partition_id = self._node_partition.get(message.metadata.dst_node_id)
            budget = (self.epsilon_budgets.get(partition_id) if partition_id is not None
                      else None)
            if budget is None and not priors:
                continue
            content = RecordDict(dict(message.content.items()))
            own_config = ConfigRecord({**content.config_records.get(records.CONFIG, {}),
                                       **priors})
            if budget is not None:
                own_config[records.DP_EPSILON_BUDGET] = budget
                self._sent_budgets[partition_id] = budget  # type: ignore[index]
            content[records.CONFIG] = own_config
            message.content = content
        return messages

    def _prior_segments(self) -> dict[str, list[float]]:
        """After a restart: each device's segments from before it (``dp-prior-<id>``)."""
        if self.round_offset == 0:
            return {}
        return {f"{records.DP_PRIOR_PREFIX}{pid}": [float(v) for segment in entry.segments
                                                     for v in segment]
                for pid, entry in self._restored.items() if entry.segments}

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Enter the replies; drop refusals and what the ledger refuses; aggregate the rest.

        The ledger refuses (``dp-metadata``) a reply of a DP run without complete, consistent
        DP metadata (a refusal has ``num-examples = 0`` and no steps, a trained round at least
        one of each; a node keeps its partition), and (``dp-over-cap``) one whose ε, composed
        by the ledger from the reported ``(σ, q, steps)``, exceeds the device's cap, whatever
        the device claims.
        """
        trained = []
        for reply in replies:
            metrics = (reply.content.metric_records.get(records.METRICS)
                       if not reply.has_error() else None)
            dp_reply = metrics is not None and records.DP_EPSILON_SPENT in metrics
            dp_run = self.config.dp if self.config is not None else dp_reply
            if reply.has_error() or not dp_run:  # without DP, validation judges DP metrics
                trained.append(reply)
                continue
            try:
                outcome = self._enter(server_round, reply, metrics)
            except RejectedUpdate as rejection:
                self.rejections.add(server_round, rejection.reason,
                                    node=reply.metadata.src_node_id)
                log.warning("round %d: the privacy ledger refused the update of node %d: %s",
                            server_round, reply.metadata.src_node_id, rejection)
                continue
            if outcome == "trained":
                trained.append(reply)
        if not trained:
            log.warning("round %d: no device trained; the global model is kept", server_round)
            return None, None
        return self.strategy.aggregate_train(server_round, trained)

    def _enter(self, server_round: int, reply: Message,
               metrics: MetricRecord | None) -> str:
        """Check a DP reply's metadata, enter it in the ledger, return the ledger's outcome.

        Raises:
            RejectedUpdate: ``dp-metadata`` or ``dp-over-cap``.
        """
        if metrics is None:
            raise RejectedUpdate("dp-metadata", f"a reply of a DP-SGD run needs the metrics "
                                                f"{list(records.DP_METRICS)}, got none")
        check_dp_metadata(metrics, self._rules)
        if self.config is not None:
            check_dp_plan(metrics, self.config)
        partition = int(metrics[records.PARTITION_ID])  # type: ignore[arg-type]
        node = reply.metadata.src_node_id
        if self._node_partition.setdefault(node, partition) != partition:
            raise RejectedUpdate("dp-metadata", f"node {node} reported partition "
                                                f"{self._node_partition[node]} before, now "
                                                f"{partition}")
        holder = self._partition_node.setdefault(partition, node)
        if holder != node and holder in self._connected:
            raise RejectedUpdate("dp-metadata", f"node {node} claims partition {partition}, "
                                                f"which node {holder} holds")
        self._partition_node[partition] = node  # a reconnected device may have a new node id
        cap = self.cap_of(partition)
        try:
            outcome = self.ledger.record_reply(self.round_offset + server_round, metrics, cap)
        except (ArithmeticError, ValueError, MemoryError) as error:
            raise RejectedUpdate("dp-metadata", f"the reported (σ, q, steps) cannot be "
                                                f"accounted ({type(error).__name__}: {error})"
                                 ) from None
        if outcome == "refused":
            log.info("round %d: partition %s did not train (ε budget %.3g would be exceeded; "
                     "spent %.3g)", server_round, partition, metrics[records.DP_EPSILON_BUDGET],
                     metrics[records.DP_EPSILON_SPENT])
        if outcome == "over-cap":
            entry = self.ledger.devices[partition]
            raise RejectedUpdate("dp-over-cap", f"partition {partition}: the ledger's own "
                                                f"account of the reported (σ, q, steps) is "
                                                f"ε = {entry.epsilon_spent:.4g}, above its cap "
                                                f"{min(cap, entry.epsilon_budget):.4g} "
                                                f"(the device reported ε = "
                                                f"{entry.epsilon_reported:.4g})")
        return outcome


MIN_NOISE_MULTIPLIER = 1e-3
"""Smallest σ a trained DP-SGD round may report (smaller ones cannot be accounted)."""


def check_dp_plan(metrics: Mapping[str, Any], config: RunConfig) -> None:
    r"""Raise ``dp-metadata`` unless a trained round's (σ, q, steps) is one an honest device runs.

    An honest device samples with :math:`q = 1/b`, :math:`b = \lceil n/B \rceil` batches of
    its :math:`n \le` ``max-examples`` examples, and takes ``local-epochs`` × b steps
    (:func:`~fedmosaic.privacy.accounting.poisson_plan`); σ is at least
    :data:`MIN_NOISE_MULTIPLIER`. Anything else is refused before it reaches the accountant.
    """
    if metrics[records.DP_REFUSED]:
        return
    rate, steps = float(metrics[records.DP_SAMPLE_RATE]), int(metrics[records.DP_STEPS])
    batches = round(1.0 / rate)
    most = math.ceil(config.max_examples / config.batch_size)
    if not (1 <= batches <= most and math.isclose(rate, 1.0 / batches, rel_tol=1e-9)
            and steps == config.local_epochs * batches
            and metrics[records.DP_NOISE_MULTIPLIER] >= MIN_NOISE_MULTIPLIER):
        raise RejectedUpdate("dp-metadata", f"a trained round must report q = 1/b for b in "
                                            f"[1, {most}], local-epochs x b steps and σ >= "
                                            f"{MIN_NOISE_MULTIPLIER}, got q={rate!r}, "
                                            f"steps={steps!r}, "
                                            f"σ={metrics[records.DP_NOISE_MULTIPLIER]!r}")


def check_dp_metadata(metrics: Mapping[str, Any], rules: Mapping[str, MetricRule]) -> None:
    """Raise :class:`RejectedUpdate` (``dp-metadata``) unless a DP reply's metadata is sound.

    Sound: complete, within ``rules`` (each key's rule if given, else finite) and consistent.
    """
    missing = [k for k in (*records.DP_METRICS, records.NUM_EXAMPLES) if k not in metrics]
    if missing:
        raise RejectedUpdate("dp-metadata", f"a DP-SGD reply needs the metrics {missing}, got "
                                            f"{sorted(metrics)[:12]}")
    for key in (*records.DP_METRICS, records.NUM_EXAMPLES):
        rules.get(key, MetricRule()).check(key, metrics[key], "dp-metadata")
    refused = metrics[records.DP_REFUSED]
    trained_steps, examples = metrics[records.DP_STEPS], metrics[records.NUM_EXAMPLES]
    if refused not in (0, 1):
        raise RejectedUpdate("dp-metadata", f"{records.DP_REFUSED} must be 0 or 1, got "
                                            f"{refused!r}")
    if refused and (trained_steps != 0 or examples != 0):
        raise RejectedUpdate("dp-metadata", f"a refusal must report 0 steps and 0 examples, got "
                                            f"{trained_steps!r} and {examples!r}")
    if not refused and not (trained_steps >= 1 and examples >= 1 and
                            metrics[records.DP_NOISE_MULTIPLIER] > 0 and
                            0 < metrics[records.DP_SAMPLE_RATE] <= 1):
        raise RejectedUpdate("dp-metadata", "a trained DP-SGD round must report >= 1 step, "
                                            ">= 1 example, σ > 0 and 0 < q <= 1, got "
                                            f"steps={trained_steps!r}, examples={examples!r}, "
                                            f"σ={metrics[records.DP_NOISE_MULTIPLIER]!r}, "
                                            f"q={metrics[records.DP_SAMPLE_RATE]!r}")


class CentralDPAccounting(StrategyWrapper):
    r"""Accounts each central-DP release in the ledger, from the replies it aggregated.

    Wraps Flower's central-DP wrapper (:func:`~fedmosaic.privacy.central.wrap_central_dp`).
    A round whose aggregate comes back is a Gaussian mechanism with effective noise
    multiplier :func:`~fedmosaic.privacy.central.round_noise_multiplier` of ``z``, the
    sampled count ``m`` and the aggregated replies' weights; the spend over all rounds is
    :func:`~fedmosaic.privacy.central.central_epsilon`.

    Args:
        strategy: The central-DP wrapper.
        ledger: The run's ledger; its ``central`` entry is created if absent.
        mode: ``central-dp`` (``server`` or ``client``).
        noise_multiplier: ``z``.
        sampled: ``m``, devices sampled per round.
        delta: δ of the reported ε.

    """

    def __init__(self, strategy: Strategy, ledger: PrivacyLedger, mode: str,
                 noise_multiplier: float, sampled: int, delta: float) -> None:
        super().__init__(strategy)
        self.ledger = ledger
        self.noise_multiplier, self.sampled, self.delta = noise_multiplier, sampled, delta
        if ledger.central is None:
            ledger.central = CentralEntry(mode=mode, delta=delta)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate through the central-DP wrapper; account the release if there is one."""
        replies = list(replies)
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        weights = [w for r in replies if not r.has_error() for w in aggregation_weights(r)]
        if arrays is not None and weights:
            entry = self.ledger.central
            entry.round_noise_multipliers.append(  # type: ignore[union-attr]
                round_noise_multiplier(self.noise_multiplier, self.sampled, weights))
            entry.epsilon_spent = central_epsilon(  # type: ignore[union-attr]
                entry.round_noise_multipliers, self.delta)  # type: ignore[union-attr]
        return arrays, metrics


def aggregation_weights(reply: Message) -> list[float]:
    """The positive weights a reply's update entered the aggregate with.

    Its ``num-examples``; for secure aggregation's one aggregate reply, each device's weight
    (its ``secure-aggregation`` record's ``weights``), so central DP's accounting sees the
    largest single share, not the whole aggregate as one device.
    """
    secure = reply.content.config_records.get(records.SECURE_AGGREGATION)
    if secure is not None and "weights" in secure:
        return [float(w) for w in secure["weights"] if float(w) > 0]  # type: ignore[union-attr]
    metrics = reply.content.metric_records.get(records.METRICS)
    examples = float(metrics.get(records.NUM_EXAMPLES, 0)) if metrics is not None else 0.0
    return [examples] if examples > 0 else []


def resume(checkpoint: Path, model: torch.nn.Module) -> tuple[PrivacyLedger, int]:
    """Load a checkpoint's global weights into ``model``; return its ledger and round.

    The ledger is empty if the checkpoint has none (a run without privacy state).

    Raises:
        ValueError: If ``checkpoint`` is not a file or its model state does not fit ``model``.

    """
    if not checkpoint.is_file():
        raise ValueError(f"resume-from must name a checkpoint file (runs/<run>/checkpoints/"
                         f"round-NNN.pt), got {str(checkpoint)!r}, which does not exist")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    try:
        model.load_state_dict(saved["model_state"])
    except (KeyError, RuntimeError) as err:
        raise ValueError(f"resume-from {checkpoint}: its model state does not fit this run's "
                         f"model ({err})") from err
    state = saved.get("server_state", {}).get("privacy")
    log.info("resuming from %s (round %s)", checkpoint, saved.get("round"))
    ledger = PrivacyLedger.from_state_dict(state) if state is not None else PrivacyLedger()
    return ledger, int(saved.get("round", 0))
