"""Check every device update before it is aggregated; drop the bad ones, keep the round going.

Every byte from a device is untrusted. One contract applies at every tier (the cloud's
:class:`ValidatingStrategy`, the edge's intake in ``server/edge/messages.py``, the server
ledger's DP checks): whatever passes it, the wrapped strategy accepts, and no exception from a
device's bytes escapes.

* :class:`ReplyContract`: the metrics a training reply must carry, exactly those keys, each
  with its type and range (``num-examples`` an integer in ``[1, max-examples]``, never above
  the ``dataset-size`` the device declared first, itself at most ``max-examples``; every
  value finite; lists of their fixed length). :meth:`ReplyContract.for_devices` is what an
  honest ClientApp sends under the run config (``records.TRAIN_METRICS``, plus
  ``records.DP_METRICS`` with ``dp``, plus ``edge-id`` below an edge);
  :meth:`ReplyContract.for_edge_aggregates` what an edge sends up.
* :func:`validate_update` ``(update, reference, num_examples, *, metrics=None,
  declared_examples=None, max_norm=inf)`` checks one decoded update (full weights
  ``w = w_global + Δ`` as ``{name: ndarray}``) against the global arrays and returns ``None``,
  or raises :class:`RejectedUpdate` (a ``ValueError``) whose ``reason`` is one of
  :data:`REASONS` and whose message says what was expected and what came.
* :func:`update_validator` ``(config)`` is ``validate_update`` with the run's
  ``max-update-norm`` bound, in the ``validate(update, reference, num_examples)`` form.
* :class:`ValidatingStrategy` wraps any ``flwr.serverapp.strategy.Strategy``: it remembers the
  global arrays each round sends, checks every training reply (:func:`check_reply`), logs
  each rejection with its reason, counts them per round and reason (:class:`Rejections`), and
  hands only the accepted replies to the wrapped strategy. If fewer than ``min_replies``
  remain, the round is skipped: ``aggregate_train`` returns ``(None, None)`` and Flower keeps
  the global model as it was.

Array checks, in order: the same array names as the global model (``keys``); the same shape
(``shape``) and dtype (``dtype``) per array; every value finite (``non-finite``); then the
metrics (``num-examples``, ``metrics``); ``||w − w_global||_2 ≤ max_norm`` over all arrays
together (``norm``). A norm bound is the standard defence against scaled (boosted) updates
(Sun et al. 2019, "Can You Really Backdoor Federated Learning?", arXiv:1911.07963). Without a
contract, the accepted replies of a round are kept only if their metric keys agree with the
round's majority (Flower's FedAvg refuses a round whose replies disagree).
"""

from __future__ import annotations

import functools
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmosaic import records
from fedmosaic.arrays import record_arrays
from fedmosaic.config import RunConfig
from fedmosaic.models.missing_modality import (
    ModalityRemoval,
    mean_over_devices,
    removals_from_metrics,
)
from fedmosaic.strategies.wrapper import StrategyWrapper

log = logging.getLogger("fedmosaic")

Arrays = Mapping[str, np.ndarray]
REASONS = ("keys", "shape", "dtype", "non-finite", "num-examples", "metrics", "norm", "malformed",
           "payload", "dp-metadata", "dp-over-cap", "stale", "unused")
"""Every rejection reason (``payload``: a compressed payload that does not decode or does not
fit the model; ``dp-*``: the privacy ledger's refusals; ``stale``: an asynchronous reply older
than ``max-staleness``; ``unused``: asynchronous work that ended after the last version)."""


class RejectedUpdate(ValueError):
    """An update that must not be aggregated.

    Attributes:
        reason: one of :data:`REASONS`.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}; the update is dropped from this round")
        self.reason = reason


MAX_LOSS = 1e6
"""Largest loss or variance a reply may report: a finite 1e308 would overflow the weighted
means of an edge or of FedAvg's metrics and take honest devices' results down with it."""


class Rejections:
    """Rejected updates of one tier, per round and reason."""

    def __init__(self) -> None:
        self.by_round: dict[int, Counter[str]] = defaultdict(Counter)
        self.by_node: Counter[int] = Counter()

    def add(self, server_round: int, reason: str, count: int = 1,
            node: int | None = None) -> None:
        """Count ``count`` rejections for ``reason`` (of ``node``, if known)."""
        self.by_round[server_round][reason] += count
        if node is not None:
            self.by_node[node] += count

    def count(self, server_round: int) -> int:
        """Rejections in ``server_round``."""
        return sum(self.by_round.get(server_round, Counter()).values())

    def reasons(self, server_round: int) -> dict[str, int]:
        """``{reason: count}`` of ``server_round``, sorted by reason."""
        return dict(sorted(self.by_round.get(server_round, Counter()).items()))


@dataclass(frozen=True)
class MetricRule:
    """What one metric's value must be.

    A finite number (an integer if ``integer``) in ``[low, high]``, or with ``length > 0`` a
    list of ``length`` such numbers.
    """

    low: float = -math.inf
    high: float = math.inf
    integer: bool = False
    length: int = 0

    def check(self, key: str, value: Any, reason: str = "metrics") -> None:
        """Raise :class:`RejectedUpdate` with ``reason`` unless ``value`` obeys the rule."""
        values = value if self.length else [value]
        if self.length and (not isinstance(value, list) or len(value) != self.length):
            raise RejectedUpdate(reason, f"metric {key!r} must be a list of {self.length} "
                                         f"numbers, got {_show(value)}")
        for item in values:
            number = isinstance(item, (int, float)) and not isinstance(item, bool)
            if not number or not math.isfinite(item) or not self.low <= item <= self.high or (
                    self.integer and item != int(item)):
                kind = "an integer" if self.integer else "a finite number"
                raise RejectedUpdate(reason, f"metric {key!r} must be {kind} in "
                                             f"[{self.low}, {self.high}], got {_show(value)}")


def _show(value: Any) -> str:
    """A bounded ``repr`` for error messages (a device may send anything)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class ReplyContract:
    """The metrics a training reply must carry: exactly the keys of ``rules``.

    Attributes:
        rules: ``{metric key: rule}``.
        max_examples: Bound on ``num-examples`` (and on the first declared ``dataset-size``).
        modalities: An evaluation reply's modalities removed at prediction time
            (:meth:`for_evaluation`).
    """

    rules: Mapping[str, MetricRule]
    max_examples: int
    modalities: tuple[str, ...] = ()

    @classmethod
    def for_devices(cls, config: RunConfig, num_modalities: int,
                    below_edge: bool = False) -> ReplyContract:
        """What an honest device's ClientApp sends under ``config`` (module docstring)."""
        rules: dict[str, MetricRule] = {
            records.NUM_EXAMPLES: MetricRule(1, config.max_examples, integer=True),
            records.TRAIN_LOSS: MetricRule(0.0, MAX_LOSS),
            records.EMBEDDING_VARIANCE: MetricRule(0.0, MAX_LOSS),
            records.DATASET_SIZE: MetricRule(1, config.max_examples, integer=True),
            records.MODALITIES_HELD: MetricRule(0, 1, integer=True, length=num_modalities),
            records.CPU_LOAD: MetricRule(0.0, 1.0),
            records.MEMORY_LOAD: MetricRule(0.0, 1.0),
        }
        if config.dp:
            rules |= dp_rules(config)
        if below_edge:
            rules[records.EDGE_ID] = MetricRule(0, config.num_edges - 1, integer=True)
        return cls(rules, config.max_examples)

    @classmethod
    def for_edge_aggregates(cls, config: RunConfig) -> ReplyContract:
        """What an edge sends the cloud: its examples and its devices' averaged metrics."""
        most = config.max_examples * config.num_clients
        rules = {records.NUM_EXAMPLES: MetricRule(1, most, integer=True),
                 records.TRAIN_LOSS: MetricRule(0.0, MAX_LOSS),
                 records.EMBEDDING_VARIANCE: MetricRule(0.0, MAX_LOSS),
                 records.DATASET_SIZE: MetricRule(1, config.max_examples)}
        return cls(rules, most)

    @classmethod
    def for_evaluation(cls, config: RunConfig, modalities: Sequence[str] = ()) -> ReplyContract:
        """What a device's evaluation reply carries (``clients/app.py``).

        With ``modalities``, also each one's removal at prediction time
        (:func:`fedmosaic.records.eval_without`).
        """
        rules = {records.NUM_EXAMPLES: MetricRule(1, config.max_examples, integer=True),
                 records.EVAL_LOSS: MetricRule(0.0, MAX_LOSS),
                 records.EVAL_ACCURACY: MetricRule(0.0, 1.0)}
        for name in modalities:
            samples, accuracy_with, accuracy_without = records.eval_without(name)
            rules |= {samples: MetricRule(0, config.max_examples, integer=True),
                      accuracy_with: MetricRule(0.0, 1.0), accuracy_without: MetricRule(0.0, 1.0)}
        return cls(rules, config.max_examples, tuple(modalities))

    def check_metrics(self, metrics: Mapping[str, Any], declared: int | None = None,
                      keys: Collection[str] | None = None) -> None:
        """Raise :class:`RejectedUpdate` unless ``metrics`` fit the contract.

        Args:
            metrics: The reply's metrics.
            declared: The ``dataset-size`` the device declared first (bounds
                ``num-examples``), or ``None``.
            keys: Check only these keys, which must be present (others are allowed); ``None``:
                exactly the contract's keys.
        """
        wanted = set(self.rules) if keys is None else set(keys)
        missing = sorted(wanted - set(metrics))
        extra = sorted(set(metrics) - set(self.rules)) if keys is None else []
        if missing or extra:
            reason = "num-examples" if records.NUM_EXAMPLES in missing else "metrics"
            raise RejectedUpdate(reason, f"expected the metrics {sorted(wanted)}, missing "
                                         f"{missing}, unexpected {extra[:10]}")
        for key in sorted(wanted):
            self.rules[key].check(key, metrics[key], "num-examples"
                                  if key == records.NUM_EXAMPLES else "metrics")
        examples = metrics.get(records.NUM_EXAMPLES)
        if declared is not None and examples is not None and examples > declared:
            raise RejectedUpdate("num-examples", f"{records.NUM_EXAMPLES} must be <= the "
                                                 f"{declared} the device declared, got "
                                                 f"{_show(examples)}")


def dp_rules(config: RunConfig) -> dict[str, MetricRule]:
    """The rules of ``records.DP_METRICS`` in a run with ``dp``."""
    return {
        records.PARTITION_ID: MetricRule(0, config.num_clients - 1, integer=True),
        records.DP_EPSILON_SPENT: MetricRule(0.0),
        records.DP_EPSILON_BUDGET: MetricRule(1e-12),
        records.DP_DELTA: MetricRule(config.delta, config.delta),
        records.DP_NOISE_MULTIPLIER: MetricRule(0.0),
        records.DP_REFUSED: MetricRule(0, 1, integer=True),
        records.DP_SAMPLE_RATE: MetricRule(0.0, 1.0),
        records.DP_STEPS: MetricRule(0, 2**31 - 1, integer=True),
    }


def validate_update(
    update: Arrays,
    reference: Arrays,
    num_examples: Any,
    *,
    metrics: Mapping[str, Any] | None = None,
    declared_examples: int | None = None,
    max_norm: float = math.inf,
) -> None:
    """Raise :class:`RejectedUpdate` unless ``update`` is an acceptable update of ``reference``.

    Args:
        update: the client's weights ``w`` (``{name: array}``).
        reference: the global weights ``w_global`` the client trained from.
        num_examples: the examples the client says the update is based on.
        metrics: the client's other metrics; each must be a finite number (or a list of them).
        declared_examples: the most examples the client may claim (``None``: no bound).
        max_norm: bound on ``||w − w_global||_2`` over all arrays (``inf``: no bound).

    Raises:
        RejectedUpdate: with the failing check's ``reason``.
    """
    if list(update) != list(reference):
        missing = sorted(set(reference) - set(update))
        extra = sorted(set(update) - set(reference))
        raise RejectedUpdate("keys", f"expected the {len(reference)} arrays of the global model "
                                     f"in order, missing {_show(missing)}, unexpected "
                                     f"{_show(extra)}")
    for name, ref in reference.items():
        value = update[name]
        if value.shape != ref.shape:
            raise RejectedUpdate("shape", f"array {name!r} must have shape {ref.shape}, "
                                          f"got {value.shape}")
        if value.dtype != ref.dtype:
            raise RejectedUpdate("dtype", f"array {name!r} must be {ref.dtype}, got {value.dtype}")
    for name, value in update.items():
        if np.issubdtype(value.dtype, np.inexact) and not np.isfinite(value).all():
            bad = int(value.size - np.isfinite(value).sum())
            raise RejectedUpdate("non-finite", f"array {name!r} has {bad} NaN/Inf values")
    _check_num_examples(num_examples, declared_examples)
    for key, value in (metrics or {}).items():
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise RejectedUpdate("metrics",
                                 f"metric {key!r} must be a finite number, got {value!r}")
    if math.isfinite(max_norm):
        norm = update_norm(update, reference)
        if norm > max_norm:
            raise RejectedUpdate("norm",
                                 f"||w - w_global||_2 must be <= {max_norm}, got {norm:.4g}")


def _check_num_examples(num_examples: Any, declared_examples: int | None) -> None:
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, float)):
        raise RejectedUpdate("num-examples", f"{records.NUM_EXAMPLES} must be a number, got "
                                             f"{num_examples!r}")
    if not math.isfinite(num_examples) or num_examples != int(num_examples) or num_examples <= 0:
        raise RejectedUpdate("num-examples", f"{records.NUM_EXAMPLES} must be an integer > 0, "
                                             f"got {num_examples!r}")
    if declared_examples is not None and num_examples > declared_examples:
        raise RejectedUpdate("num-examples", f"{records.NUM_EXAMPLES} must be <= the "
                                             f"{declared_examples} the client declared, got "
                                             f"{num_examples!r}")


def update_norm(update: Arrays, reference: Arrays) -> float:
    """``||w − w_global||_2`` over all floating-point arrays, in float64."""
    squares = sum(
        float(np.sum((update[k].astype(np.float64) - ref.astype(np.float64)) ** 2))
        for k, ref in reference.items() if np.issubdtype(ref.dtype, np.inexact)
    )
    return math.sqrt(squares)


def update_validator(config: Any) -> functools.partial[None]:
    """``validate_update`` bound to the run config's ``max-update-norm`` (0: no bound)."""
    return functools.partial(validate_update, max_norm=config.max_update_norm or math.inf)


def require_records(content: RecordDict, arrays: str, what: str) -> None:
    """Raise :class:`RejectedUpdate` unless ``content`` has exactly these two records.

    The ArrayRecord ``arrays`` and the MetricRecord ``metrics``; ``what`` names the reply in
    the message.
    """
    if list(content.array_records) != [arrays] or list(
            content.metric_records) != [records.METRICS]:
        raise RejectedUpdate("malformed", f"{what} needs exactly the records {arrays!r} and "
                                          f"{records.METRICS!r}, got {sorted(content.keys())[:10]}")


def check_reply(reply: Message, reference: Arrays, declared: int | None, max_norm: float,
                contract: ReplyContract | None = None) -> None:
    """Raise :class:`RejectedUpdate` unless a training reply carries an acceptable update.

    Args:
        reply: the reply: exactly one ArrayRecord (``arrays``) and one MetricRecord
            (``metrics``), as Flower's FedAvg family requires.
        reference: the global arrays of the round.
        declared: the most examples the node may claim (``None``: no bound).
        max_norm: bound on the update norm.
        contract: the metrics the reply must carry (``None``: any finite metrics).
    """
    content = reply.content
    require_records(content, records.ARRAYS, "a training reply")
    metrics = dict(content.metric_records[records.METRICS])
    if contract is not None:
        contract.check_metrics(metrics, declared)
    if records.NUM_EXAMPLES not in metrics:
        raise RejectedUpdate("num-examples", f"metric {records.NUM_EXAMPLES!r} is missing")
    num_examples = metrics.pop(records.NUM_EXAMPLES)
    try:
        update = record_arrays(content.array_records[records.ARRAYS])
    except Exception as error:  # a payload that does not deserialize  # noqa: BLE001
        raise RejectedUpdate("malformed", f"arrays do not decode ({error})") from error
    validate_update(update, reference, num_examples, metrics=metrics,
                    declared_examples=declared, max_norm=max_norm)


def _dataset_size(reply: Message) -> int | None:
    """The reply's ``dataset-size`` if it is a positive integer, else ``None``."""
    size = reply.content.metric_records.get(records.METRICS, {}).get(records.DATASET_SIZE)
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def dataset_size_bound(declared: Mapping[int, int], reply: Message) -> int | None:
    """The bound on a reply's ``num-examples``.

    Its node's first accepted ``dataset-size``, or the reply's own if the node has none yet;
    every tier keeps ``declared`` across rounds.
    """
    return declared.get(reply.metadata.src_node_id, _dataset_size(reply))


def pin_dataset_size(declared: dict[int, int], reply: Message) -> None:
    """Remember an accepted reply's ``dataset-size`` as its node's, if it is the first."""
    size = _dataset_size(reply)
    if size is not None:
        declared.setdefault(reply.metadata.src_node_id, size)


def check_evaluation(reply: Message, contract: ReplyContract | None) -> None:
    """Raise :class:`RejectedUpdate` unless an evaluation reply is one sound MetricRecord."""
    content = reply.content
    if list(content.metric_records) != [records.METRICS] or content.array_records:
        raise RejectedUpdate("malformed", f"an evaluation reply needs exactly the record "
                                          f"{records.METRICS!r}, got {sorted(content.keys())[:10]}")
    metrics = content.metric_records[records.METRICS]
    if contract is not None:
        contract.check_metrics(metrics)
        for name in contract.modalities:
            samples = records.eval_without(name)[0]
            if metrics[samples] > metrics[records.NUM_EXAMPLES]:
                raise RejectedUpdate("metrics", f"{samples} must be <= the "
                                                f"{metrics[records.NUM_EXAMPLES]} examples "
                                                f"evaluated, got {_show(metrics[samples])}")
        return
    MetricRule(1, math.inf, integer=True).check(records.NUM_EXAMPLES,
                                                metrics.get(records.NUM_EXAMPLES), "num-examples")
    for key, value in metrics.items():
        MetricRule(length=len(value) if isinstance(value, list) else 0).check(key, value)


def majority_keys(replies: list[Message]) -> tuple[list[Message], list[Message]]:
    """Split replies into those whose metric keys are the most common set, and the others.

    Flower's FedAvg family refuses a round whose replies' metric keys differ; keeping the
    majority (the first such set on a tie) keeps the honest devices' round going.
    """
    sets = [frozenset(r.content.metric_records[records.METRICS].keys()) for r in replies]
    if not sets:
        return [], []
    common = Counter(sets).most_common(1)[0][0]
    return ([r for r, k in zip(replies, sets, strict=True) if k == common],
            [r for r, k in zip(replies, sets, strict=True) if k != common])


class ValidatingStrategy(StrategyWrapper):
    """Delegates to ``strategy`` after dropping training replies that fail validation.

    Each node's ``dataset-size`` metric (the training examples it holds), pinned at the first
    value the node reports in an accepted reply, bounds the ``num-examples`` it may claim
    afterwards.

    Args:
        strategy: any Flower strategy.
        max_norm: bound on ``||w − w_global||_2`` (``inf``: no bound).
        min_replies: replies that must survive for the round to aggregate (at least 1).
        contract: the metrics every reply must carry (``None``: any finite metrics, the
            round keeps the majority's keys).
        evaluate_contract: the same for evaluation replies
            (:meth:`ReplyContract.for_evaluation`).

    ``device_accuracies[r]`` keeps each accepted evaluation reply's accuracy in round ``r``
    (the accuracy of the model that device predicts with, on its own held-out data), and
    ``device_missing_modality[r]`` what those models lose with each modality of
    ``evaluate_contract`` removed, each device counting once
    (:func:`~fedmosaic.models.missing_modality.mean_over_devices`); those metrics are taken
    out of the replies before the wrapped strategy averages the rest.
    """

    def __init__(self, strategy: Strategy, max_norm: float = math.inf,
                 min_replies: int = 1, contract: ReplyContract | None = None,
                 evaluate_contract: ReplyContract | None = None) -> None:
        if min_replies < 1:
            raise ValueError(f"min_replies must be >= 1, got {min_replies}")
        if not max_norm > 0:
            raise ValueError(f"max_norm must be > 0 (inf: no bound), got {max_norm}")
        super().__init__(strategy)
        self.max_norm = max_norm
        self.min_replies = min_replies
        self.contract = contract
        self.evaluate_contract = evaluate_contract
        self.rejections = Rejections()
        self.evaluate_rejections = Rejections()
        self.device_accuracies: dict[int, list[float]] = {}
        self.device_missing_modality: dict[int, dict[str, ModalityRemoval]] = {}
        self.declared: dict[int, int] = {}
        self._reference: dict[int, dict[str, np.ndarray]] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the round's global arrays, then configure through the wrapped strategy."""
        self._reference = {server_round: {k: a.numpy() for k, a in arrays.items()}}
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the replies that pass :func:`check_reply`; skip the round if too few do."""
        reference = self._reference.get(server_round)
        failures: list[Message] = []
        accepted: list[Message] = []
        for reply in replies:
            if reply.has_error():
                failures.append(reply)  # counted by the wrapped strategy
                continue
            try:
                if reference is None:
                    raise RejectedUpdate("malformed", f"no global arrays were sent in round "
                                                      f"{server_round}")
                check_reply(reply, reference, dataset_size_bound(self.declared, reply),
                            self.max_norm, self.contract)
            except RejectedUpdate as rejection:
                self._reject(server_round, reply, rejection)
                continue
            accepted.append(reply)
        accepted, disagreeing = majority_keys(accepted)
        for reply in disagreeing:
            self._reject(server_round, reply, RejectedUpdate(
                "metrics", f"metric keys {sorted(reply.content[records.METRICS].keys())[:10]} "
                           "differ from the round's majority"))
        for reply in accepted:
            pin_dataset_size(self.declared, reply)
        if len(accepted) < self.min_replies:
            log.warning("round %d skipped: %d acceptable replies, %d needed (%d rejected); the "
                        "global model stays as it was", server_round, len(accepted),
                        self.min_replies, self.rejections.count(server_round))
            return None, None
        return self.strategy.aggregate_train(server_round, accepted + failures)

    def aggregate_evaluate(self, server_round: int,
                           replies: Iterable[Message]) -> MetricRecord | None:
        """Aggregate the evaluation replies that carry exactly one sound MetricRecord."""
        accepted: list[Message] = []
        failures: list[Message] = []
        for reply in replies:
            if reply.has_error():
                failures.append(reply)
                continue
            try:
                check_evaluation(reply, self.evaluate_contract)
            except RejectedUpdate as rejection:
                self.evaluate_rejections.add(server_round, rejection.reason)
                log.warning("round %d: rejected the evaluation of node %d: %s", server_round,
                            reply.metadata.src_node_id, rejection)
                continue
            accepted.append(reply)
        accepted, disagreeing = majority_keys(accepted)
        for _ in disagreeing:
            self.evaluate_rejections.add(server_round, "metrics")
        self.device_accuracies[server_round] = [
            float(reply.content[records.METRICS][records.EVAL_ACCURACY]) for reply in accepted
            if records.EVAL_ACCURACY in reply.content[records.METRICS]]
        modalities = list(self.evaluate_contract.modalities) if self.evaluate_contract else []
        self.device_missing_modality[server_round] = mean_over_devices([
            removals_from_metrics(reply.content[records.METRICS], modalities)
            for reply in accepted])
        for reply in accepted:  # the wrapped strategy would average them by num-examples
            for key in (key for name in modalities for key in records.eval_without(name)):
                del reply.content[records.METRICS][key]
        if not accepted:
            return None
        return self.strategy.aggregate_evaluate(server_round, accepted + failures)

    def _reject(self, server_round: int, reply: Message, rejection: RejectedUpdate) -> None:
        self.rejections.add(server_round, rejection.reason, node=reply.metadata.src_node_id)
        log.warning("round %d: rejected the update of node %d: %s", server_round,
                    reply.metadata.src_node_id, rejection)
