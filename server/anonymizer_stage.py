"""The anonymizer's stage of the server chain: send the generator and knobs, collect releases.

*Out*, every training message gets the trained generator (``anonymizer`` ArrayRecord) and the
knobs for its device (``anonymizer-knobs``): the run's ``anonymizer-strength``, ``-noise``,
``-discard`` and ``-reframe``, or what :meth:`AnonymizerStage.set_knobs` set for that node
(the controller's per-device action between rounds).

*In*, a reply's released records (``release`` and ``release-meta``, ``anonymizer-release``) are
taken out before the model update goes on to validation and aggregation. The round's releases
are checked against the dataset's modalities (a malformed release is dropped and counted, the
update goes on), tabulated with the metadata an attacker could know (the modalities a record
holds, its label) and the device's pseudonym, and every equivalence class of that metadata
with fewer than ``release-k`` records or a single pseudonym is suppressed
(:func:`~fedmosaic.privacy.anonymization.suppress_small_classes`). What remains is written to
``releases/round-NNN.npz`` and ``.csv`` in the run folder and passes
:func:`~fedmosaic.privacy.anonymization.check_release`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmosaic import records
from fedmosaic.data.modality import ModalityKind, ModalitySpec
from fedmosaic.privacy.anonymization import check_release, suppress_small_classes
from fedmosaic.privacy.anonymizer.generator import MultimodalAnonymizer
from fedmosaic.privacy.anonymizer.knobs import AnonymizerKnobs
from fedmosaic.server.validation import Rejections
from fedmosaic.strategies.wrapper import StrategyWrapper

log = logging.getLogger("fedmosaic")

QUASI_IDENTIFIERS = ("modalities", "label")
"""Released metadata an attacker may know from elsewhere."""


@dataclass
class ReleaseCounts:
    """Released records per round: received, suppressed for k-anonymity, written."""

    received: dict[int, int] = field(default_factory=dict)
    suppressed: dict[int, int] = field(default_factory=dict)
    written: dict[int, int] = field(default_factory=dict)


class AnonymizerStage(StrategyWrapper):
    """Send the generator and per-device knobs; collect and k-anonymize releases.

    Args:
        strategy: The next stage.
        generator: The trained generator devices apply.
        knobs: The knobs of a device without its own.
        num_classes: Task classes (released labels lie in ``[0, num_classes)``).
        release_dir: Where released records go (``None``: releases are not expected).
        release_k: ``k`` of the released metadata.
        most: Most records one device may release per round (``anonymizer-release``).
    """

    def __init__(self, strategy: Strategy, generator: MultimodalAnonymizer,
                 knobs: AnonymizerKnobs, num_classes: int, release_dir: Path | None = None,
                 release_k: int = 5, most: int = 0) -> None:
        super().__init__(strategy)
        self.generator_arrays = ArrayRecord(generator.state_dict())
        self.specs: tuple[ModalitySpec, ...] = generator.specs
        self.knobs = knobs
        self.node_knobs: dict[int, AnonymizerKnobs] = {}
        self.release_dir = release_dir
        self.release_k = release_k
        self.num_classes = num_classes
        self.most = most
        self.releases = ReleaseCounts()
        self.rejections = Rejections()

    def set_knobs(self, node_id: int, knobs: AnonymizerKnobs) -> None:
        """Use ``knobs`` for node ``node_id`` from the next round on."""
        self.node_knobs[node_id] = knobs

    def round_releases(self, server_round: int) -> dict[str, int]:
        """``released``, ``release_suppressed`` records and ``release_rejected`` releases."""
        return {"released": self.releases.written.get(server_round, 0),
                "release_suppressed": self.releases.suppressed.get(server_round, 0),
                "release_rejected": self.rejections.count(server_round)}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Configure through ``strategy``; add the generator and the device's knobs."""
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        for message in messages:
            knobs = self.node_knobs.get(message.metadata.dst_node_id, self.knobs)
            content = RecordDict(dict(message.content.items()))
            content[records.ANONYMIZER] = self.generator_arrays
            content[records.ANONYMIZER_KNOBS] = ConfigRecord(knobs.to_mapping())
            message.content = content
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Take the releases out of the replies, store them, aggregate the rest inward."""
        replies = list(replies)
        rows: list[dict] = []
        samples: list[dict[str, np.ndarray]] = []
        for reply in replies:
            if reply.has_error():
                continue
            content = reply.content
            release = content.array_records.get(records.RELEASE)
            meta = content.config_records.get(records.RELEASE_META)
            if release is None and meta is None:
                continue
            stripped = RecordDict({k: v for k, v in content.items()
                                   if k not in (records.RELEASE, records.RELEASE_META)})
            reply.content = stripped
            try:
                arrays, name = self._check_release(release, meta)
            except Exception as error:  # noqa: BLE001 - any malformed release is dropped
                self.rejections.add(server_round, "release", node=reply.metadata.src_node_id)
                log.warning("round %d: dropped the release of node %d: %s", server_round,
                            reply.metadata.src_node_id, error)
                continue
            for index in range(len(arrays["labels"])):
                held = "+".join(s.name for j, s in enumerate(self.specs)
                                if arrays["mask"][index, j])
                rows.append({"pseudonym": name, "modalities": held,
                             "label": int(arrays["labels"][index])})
                samples.append({k: v[index] for k, v in arrays.items()})
        if rows:
            self._store(server_round, pd.DataFrame(rows), samples)
        return self.strategy.aggregate_train(server_round, replies)

    def _check_release(self, release: ArrayRecord | None, meta: ConfigRecord | None
                       ) -> tuple[dict[str, np.ndarray], str]:
        """The release's arrays and pseudonym, or ``ValueError`` saying what is wrong."""
        if release is None or meta is None or not isinstance(meta.get(records.PSEUDONYM), str):
            raise ValueError(f"a release needs the records {records.RELEASE!r} and "
                             f"{records.RELEASE_META!r} with a string {records.PSEUDONYM!r}")
        expected = [s.name for s in self.specs] + ["mask", "labels"]
        if list(release) != expected:
            raise ValueError(f"a release needs the arrays {expected}, got {list(release)[:10]}")
        arrays = {k: a.numpy() for k, a in release.items()}
        labels = arrays["labels"]
        if labels.ndim != 1 or labels.dtype != np.int64 or not 0 < len(labels) <= self.most:
            raise ValueError(f"released labels must be int64 of shape (n,) with 0 < n <= "
                             f"{self.most} (anonymizer-release), got {labels.dtype} "
                             f"{labels.shape}")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"released labels must lie in [0, {self.num_classes}), got "
                             f"{labels.min()} to {labels.max()}")
        count = len(labels)
        for spec in self.specs:
            value = arrays[spec.name]
            if value.shape != (count, *spec.shape) or value.dtype != np.dtype(spec.dtype):
                raise ValueError(f"released {spec.name!r} must be {spec.dtype} of shape "
                                 f"{(count, *spec.shape)}, got {value.dtype} {value.shape}")
            if np.issubdtype(value.dtype, np.floating) and np.isinf(value).any():
                raise ValueError(f"released {spec.name!r} holds infinite values")
            if spec.kind == ModalityKind.TOKENS and (value.min() < 0
                                                    or value.max() >= spec.vocab_size):
                raise ValueError(f"released {spec.name!r} tokens must lie in "
                                 f"[0, {spec.vocab_size}), got {value.min()} to {value.max()}")
        if arrays["mask"].shape != (count, len(self.specs)) or arrays["mask"].dtype != bool:
            raise ValueError(f"released mask must be bool of shape {(count, len(self.specs))}, "
                             f"got {arrays['mask'].dtype} {arrays['mask'].shape}")
        return arrays, str(meta[records.PSEUDONYM])

    def _store(self, server_round: int, table: pd.DataFrame,
               samples: list[dict[str, np.ndarray]]) -> None:
        """Suppress small classes, check the rest, write it to ``releases/``."""
        kept = suppress_small_classes(table, QUASI_IDENTIFIERS, self.release_k,
                                      sensitive="pseudonym", l_distinct=2)
        self.releases.received[server_round] = len(table)
        self.releases.suppressed[server_round] = len(table) - len(kept)
        self.releases.written[server_round] = len(kept)
        if kept.empty or self.release_dir is None:
            return
        check_release(kept, QUASI_IDENTIFIERS, self.release_k, sensitive="pseudonym",
                      l_distinct=2)
        self.release_dir.mkdir(parents=True, exist_ok=True)
        stem = self.release_dir / f"round-{server_round:03d}"
        chosen = [samples[i] for i in kept.index]
        np.savez_compressed(stem.with_suffix(".npz"),
                            **{k: np.stack([s[k] for s in chosen]) for k in chosen[0]})
        kept.reset_index(drop=True).to_csv(stem.with_suffix(".csv"), index=False)
