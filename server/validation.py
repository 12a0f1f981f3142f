"""Check every client update before it is aggregated; drop the bad ones, keep the round going.

API (stable; the edge tier calls it too):

* :func:`validate_update` ``(update, reference, num_examples, *, metrics=None,
  declared_examples=None, max_norm=inf)`` checks one decoded update (full weights
  ``w = w_global + Δ`` as ``{name: ndarray}``) against the global arrays and returns ``None``,
  or raises :class:`RejectedUpdate` (a ``ValueError``) whose ``reason`` is one of
  :data:`REASONS` and whose message says what was expected and what came.
* :func:`update_validator` ``(config)`` is ``validate_update`` with the run's
  ``max-update-norm`` bound, in the ``validate(update, reference, num_examples)`` form.
* :class:`ValidatingStrategy` wraps any ``flwr.serverapp.strategy.Strategy``: it remembers the
  global arrays each round sends, checks every training reply with :func:`validate_update`,
  logs each rejection with its reason, counts them per round (``rejected[round]``), and hands
  only the accepted replies to the wrapped strategy. If fewer than ``min_replies`` remain, the
  round is skipped: ``aggregate_train`` returns ``(None, None)`` and Flower keeps the global
  model as it was.

Checks, in order: the same array names as the global model (``keys``); the same shape
(``shape``) and dtype (``dtype``) per array; every value finite (``non-finite``); ``num-examples``
present, an integer ``> 0`` and at most what the client declared (``num-examples``); every metric
finite (``metrics``); ``||w − w_global||_2 ≤ max_norm`` over all arrays together (``norm``).
A norm bound is the standard defence against scaled (boosted) updates (Sun et al. 2019, "Can
You Really Backdoor Federated Learning?", arXiv:1911.07963).
"""

from __future__ import annotations

import functools
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmosaic import records
from fedmosaic.strategies.wrapper import StrategyWrapper

log = logging.getLogger("fedmosaic")

Arrays = Mapping[str, np.ndarray]
REASONS = ("keys", "shape", "dtype", "non-finite", "num-examples", "metrics", "norm", "malformed")
"""Every ``RejectedUpdate.reason``."""


class RejectedUpdate(ValueError):
    """An update that must not be aggregated.

    Attributes:
        reason: one of :data:`REASONS`.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}; the update is dropped from this round")
        self.reason = reason


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
                                     f"in order, missing {missing}, unexpected {extra}")
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


def check_reply(reply: Message, reference: Arrays, declared: Mapping[int, int],
                max_norm: float) -> None:
    """Raise :class:`RejectedUpdate` unless a training reply carries an acceptable update.

    Args:
        reply: the reply (``arrays`` record and ``metrics`` record).
        reference: the global arrays of the round.
        declared: per source node ID, the most examples the node may claim.
        max_norm: bound on the update norm.
    """
    content = reply.content
    if records.ARRAYS not in content.array_records or records.METRICS not in content.metric_records:
        raise RejectedUpdate("malformed", f"a training reply needs the records "
                                          f"{records.ARRAYS!r} and {records.METRICS!r}, got "
                                          f"{sorted(content.keys())}")
    metrics = dict(content.metric_records[records.METRICS])
    if records.NUM_EXAMPLES not in metrics:
        raise RejectedUpdate("num-examples", f"metric {records.NUM_EXAMPLES!r} is missing")
    num_examples = metrics.pop(records.NUM_EXAMPLES)
    try:
        update = {k: a.numpy() for k, a in content.array_records[records.ARRAYS].items()}
    except Exception as error:  # a payload that does not deserialize  # noqa: BLE001
        raise RejectedUpdate("malformed", f"arrays do not decode ({error})") from error
    validate_update(update, reference, num_examples, metrics=metrics,
                    declared_examples=declared.get(reply.metadata.src_node_id),
                    max_norm=max_norm)


class ValidatingStrategy(StrategyWrapper):
    """Delegates to ``strategy`` after dropping training replies that fail validation.

    Each node's ``dataset-size`` metric (the training examples it holds), pinned at the first
    value the node reports, bounds the ``num-examples`` it may claim afterwards.

    Args:
        strategy: any Flower strategy.
        max_norm: bound on ``||w − w_global||_2`` (``inf``: no bound).
        min_replies: replies that must survive for the round to aggregate (at least 1).
    """

    def __init__(self, strategy: Strategy, max_norm: float = math.inf,
                 min_replies: int = 1) -> None:
        if min_replies < 1:
            raise ValueError(f"min_replies must be >= 1, got {min_replies}")
        if not max_norm > 0:
            raise ValueError(f"max_norm must be > 0 (inf: no bound), got {max_norm}")
        super().__init__(strategy)
        self.max_norm = max_norm
        self.min_replies = min_replies
        self.rejected: dict[int, int] = defaultdict(int)
        self.reasons: dict[int, list[str]] = defaultdict(list)
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
        accepted: list[Message] = []
        for reply in replies:
            if reply.has_error() or reference is None:
                accepted.append(reply)  # failures are counted by the wrapped strategy
                continue
            self._declare(reply)
            try:
                check_reply(reply, reference, self.declared, self.max_norm)
            except RejectedUpdate as rejection:
                self.rejected[server_round] += 1
                self.reasons[server_round].append(rejection.reason)
                log.warning("round %d: rejected the update of node %d: %s", server_round,
                            reply.metadata.src_node_id, rejection)
                continue
            accepted.append(reply)
        usable = sum(not r.has_error() for r in accepted)
        if usable < self.min_replies:
            log.warning("round %d skipped: %d acceptable replies, %d needed (%d rejected); the "
                        "global model stays as it was", server_round, usable, self.min_replies,
                        self.rejected[server_round])
            return None, None
        return self.strategy.aggregate_train(server_round, accepted)

    def _declare(self, reply: Message) -> None:
        metrics = reply.content.metric_records.get(records.METRICS, {})
        size = metrics.get(records.DATASET_SIZE)
        node = reply.metadata.src_node_id
        if node not in self.declared and isinstance(size, int) and size > 0:
            self.declared[node] = size
