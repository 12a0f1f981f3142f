"""Modality-aware aggregation of a mixture-of-experts model (MoEFusion).

Client ``i`` reports ``n_i`` training examples, which modalities it holds (``h_{i,m} ∈ {0, 1}``,
metric ``modalities-held``) and the mean variance ``v_i`` of its probabilistic embeddings
(``embedding-variance``), whose inverse is its confidence. A parameter ``θ`` of modality
``m``'s expert (its encoder, embedding head and first-level experts) is averaged only over the
clients that hold ``m``, weighted by examples and confidence:

    θ ← Σ_{i: h_{i,m}=1} (n_i / v_i) θ_i / Σ_{i: h_{i,m}=1} (n_i / v_i),

and stays at its global value if no sampled client holds ``m`` (an expert nobody trained is
not pulled towards the random drift of clients that never saw its modality). Every other
parameter (second-level gate, fusion, classifier) is the example-weighted average over all
clients, as in FedAvg. With ``beta > 0`` each of these averages is a coordinate-wise weighted
trimmed mean (:func:`~fedmosaic.strategies.kernels.trimmed_mean`), which also
withstands Byzantine clients. The per-modality averaging follows the modality-wise aggregation
of FedMSplit / "Cross-Modal Federated Human Activity Recognition" (Chen and Zhang 2022,
arXiv:2209.03898) and the uncertainty weighting of probabilistic embeddings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedmosaic import records
from fedmosaic.arrays import record_arrays
from fedmosaic.strategies import kernels


def modality_of(key: str, modality_prefixes: Mapping[str, Sequence[str]]) -> int | None:
    """Index (in ``modality_prefixes`` order) of the modality owning ``key``, or ``None``."""
    for index, prefixes in enumerate(modality_prefixes.values()):
        if any(key.startswith(prefix) for prefix in prefixes):
            return index
    return None


class MoEFusion(FedAvg):
    """FedAvg's sampling with modality-aware, confidence-weighted (optionally trimmed) fusion.

    Args:
        modality_prefixes: per modality, in the order of the ``modalities-held`` metric, the
            state-dict key prefixes of its expert (``MultimodalModel.modality_parameter_prefixes``).
        beta: trim fraction of every average, in ``[0, 0.5)`` (0: plain weighted mean).
        **kwargs: any ``FedAvg`` argument.

    A client that does not report ``modalities-held`` counts as holding every modality; one
    without a positive finite ``embedding-variance`` gets confidence 1.
    """

    def __init__(self, modality_prefixes: Mapping[str, Sequence[str]], beta: float = 0.0,
                 **kwargs: object) -> None:
        if not modality_prefixes:
            raise ValueError("modality_prefixes must name at least one modality, got none")
        if not 0.0 <= beta < 0.5:
            raise ValueError(f"beta must lie in [0, 0.5), got {beta}")
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.modality_prefixes = {name: tuple(p) for name, p in modality_prefixes.items()}
        self.beta = beta
        self._global: dict[str, np.ndarray] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global arrays (kept for experts nobody holds), then configure."""
        self._global = {key: array.numpy() for key, array in arrays.items()}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Fuse the valid replies as in the module docstring."""
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        examples = np.array([self._metric(m, self.weighted_by_key) for m in valid], float)
        confidence = np.array([self._confidence(m) for m in valid])
        held = np.array([self._held(m) for m in valid], dtype=bool)
        updates = [record_arrays(m.content[self.arrayrecord_key]) for m in valid]
        groups: dict[int | None, list[str]] = {}
        for key in updates[0]:
            groups.setdefault(modality_of(key, self.modality_prefixes), []).append(key)
        fused: dict[str, np.ndarray] = {}
        for modality, keys in groups.items():  # one kernel call per modality's parameters
            rows = np.ones(len(valid), dtype=bool) if modality is None else held[:, modality]
            if not rows.any():
                missing = [key for key in keys if key not in self._global]
                if missing:
                    raise RuntimeError(f"no global value of {missing}: configure_train must "
                                       "run before aggregate_train in the same round")
                fused.update({key: self._global[key].copy() for key in keys})
                continue
            weights = examples[rows] if modality is None else (examples * confidence)[rows]
            fused.update(kernels.combine(
                [{key: update[key] for key in keys} for update, use in zip(updates, rows,
                                                                          strict=True) if use],
                lambda stack, weights=weights: kernels.trimmed_mean(stack, self.beta, weights)))
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        return ArrayRecord({key: Array(fused[key]) for key in updates[0]}), metrics

    def _metric(self, reply: Message, key: str) -> object:
        return next(iter(reply.content.metric_records.values())).get(key)

    def _confidence(self, reply: Message) -> float:
        variance = self._metric(reply, records.EMBEDDING_VARIANCE)
        if isinstance(variance, (int, float)) and 0 < variance < float("inf"):
            return 1.0 / float(variance)
        return 1.0

    def _held(self, reply: Message) -> list[bool]:
        held = self._metric(reply, records.MODALITIES_HELD)
        count = len(self.modality_prefixes)
        if not isinstance(held, list) or len(held) != count:
            return [True] * count
        return [bool(h) for h in held]
