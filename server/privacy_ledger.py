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
from collections.abc import Iterable
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmosaic import records
from fedmosaic.privacy.central import central_epsilon, round_noise_multiplier
from fedmosaic.privacy.ledger import CentralEntry, PrivacyLedger
from fedmosaic.strategies.wrapper import StrategyWrapper

log = logging.getLogger("fedmosaic")


class PrivacyLedgerStrategy(StrategyWrapper):
    """Delegates to ``strategy``; keeps ``ledger`` (module docstring).

    Args:
        strategy: Any Flower strategy (in a run, the next stage of the server chain).
        ledger: The ledger to update (a fresh one, or one restored from a checkpoint).
        round_offset: Rounds already run before this run (resumed from a checkpoint); the
            ledger counts this run's round ``r`` as ``round_offset + r``.

    """

    def __init__(self, strategy: Strategy, ledger: PrivacyLedger, round_offset: int = 0) -> None:
        super().__init__(strategy)
        self.round_offset = round_offset
        self.ledger = ledger
        self.epsilon_budgets: dict[int, float] = {}
        self._restored = {pid: dataclasses.replace(entry, segments=list(entry.segments))
                          for pid, entry in ledger.devices.items()} if round_offset else {}
        self._node_partition: dict[int, int] = {}

    def set_epsilon_budget(self, partition_id: int, epsilon_budget: float) -> None:
        """Send device ``partition_id`` the ε budget from its next training message on.

        Raises:
            ValueError: If ``epsilon_budget`` is not finite and > 0.

        """
        if not 0.0 < epsilon_budget < float("inf"):
            raise ValueError(f"epsilon_budget must be finite and > 0, got {epsilon_budget}")
        self.epsilon_budgets[partition_id] = float(epsilon_budget)


    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Configure through ``strategy``; add per-device budgets to copies of the content."""
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
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
        """Enter the replies, drop refusals, aggregate the rest."""
        trained = []
        for reply in replies:
            metrics = (reply.content.metric_records.get(records.METRICS)
                       if not reply.has_error() else None)
            if metrics is None or records.DP_EPSILON_SPENT not in metrics:
                trained.append(reply)
                continue
            self._node_partition[reply.metadata.src_node_id] = int(metrics[records.PARTITION_ID])
            if self.ledger.record_reply(self.round_offset + server_round, metrics):
                log.info("round %d: partition %s did not train (ε budget %.3g would be "
                         "exceeded; spent %.3g)", server_round, metrics[records.PARTITION_ID],
                         metrics[records.DP_EPSILON_BUDGET], metrics[records.DP_EPSILON_SPENT])
            else:
                trained.append(reply)
        if not trained:
            log.warning("round %d: no device trained; the global model is kept", server_round)
            return None, None
        return self.strategy.aggregate_train(server_round, trained)


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
        weights = [float(m[records.NUM_EXAMPLES]) for r in replies if not r.has_error()
                   and (m := r.content.metric_records.get(records.METRICS)) is not None
                   and float(m.get(records.NUM_EXAMPLES, 0)) > 0]
        if arrays is not None and weights:
            entry = self.ledger.central
            entry.round_noise_multipliers.append(  # type: ignore[union-attr]
                round_noise_multiplier(self.noise_multiplier, self.sampled, weights))
            entry.epsilon_spent = central_epsilon(  # type: ignore[union-attr]
                entry.round_noise_multipliers, self.delta)  # type: ignore[union-attr]
        return arrays, metrics


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
