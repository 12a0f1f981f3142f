"""Real smartwatch motion data: two sensor modalities, one federated client per subject.

Source: ``seglearn.datasets.load_watch()`` (ships inside the seglearn package, no download):
140 recordings of 10 subjects doing 7 shoulder-rehabilitation exercises, 6 channels at 50 Hz
(accelerometer ``ax ay az`` and gyroscope ``wx wy wz``).

Preprocessing:

* each recording is cut in time: its first ``1 - TEST_TAIL`` share feeds training windows,
  its last ``TEST_TAIL`` share feeds held-out windows, so no window straddles the cut and the
  held-out set covers every subject and every exercise;
* windows of ``window_seconds`` (50 Hz) with 50 % overlap, channels standardised with the mean
  and standard deviation of the training windows;
* modalities ``accelerometer`` (3, T) and ``gyroscope`` (3, T);
* partitions come from ``flwr_datasets``' ``NaturalIdPartitioner`` on the ``subject`` column
  (10 subjects, 10 clients). A client's local test set is its own subject's held-out windows;
  the server's central test set is the union over subjects.
"""

from __future__ import annotations

import functools
from collections.abc import Collection

import numpy as np
from flwr_datasets.partitioner import NaturalIdPartitioner
from seglearn.datasets import load_watch

from fedmosaic.config import RunConfig
from fedmosaic.data.datasets import (
    FederatedDataset,
    PartitionedArrays,
    register_dataset,
)
from fedmosaic.data.modality import ModalityKind, ModalitySpec, MultimodalArrays

SAMPLE_RATE_HZ = 50
TEST_TAIL = 0.25
NUM_SUBJECTS = 10
NUM_CLASSES = 7
CLASS_NAMES = ("PEN", "ABD", "FEL", "IR", "ER", "TRAP", "ROW")


def smartwatch_specs(window_seconds: float) -> tuple[ModalitySpec, ...]:
    """The two modalities for windows of ``window_seconds``."""
    length = window_length(window_seconds)
    return (
        ModalitySpec("accelerometer", ModalityKind.SENSOR, (3, length)),
        ModalitySpec("gyroscope", ModalityKind.SENSOR, (3, length)),
    )


def window_length(window_seconds: float) -> int:
    """Samples per window at 50 Hz; at least 8 so the sensor encoder has something to see."""
    length = int(round(window_seconds * SAMPLE_RATE_HZ))
    if length < 8:
        raise ValueError(f"window-seconds must give >= 8 samples at 50 Hz, got {window_seconds}")
    return length


def _windows(recording: np.ndarray, length: int) -> np.ndarray:
    """Windows of ``length`` with stride ``length // 2``: shape (W, length, channels)."""
    stride = max(1, length // 2)
    starts = range(0, recording.shape[0] - length + 1, stride)
    return np.stack([recording[s : s + length] for s in starts]) if len(starts) else np.empty(
        (0, length, recording.shape[1])
    )


@functools.lru_cache(maxsize=4)
def windowed_watch(window_seconds: float) -> tuple[MultimodalArrays, np.ndarray,
                                                   MultimodalArrays, np.ndarray]:
    """``(train, train_subjects, test, test_subjects)`` windows over all subjects.

    Subjects are renumbered to 0..9.
    """
    length = window_length(window_seconds)
    data = load_watch()
    parts: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    labels: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    subjects: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    subject_ids = {s: i for i, s in enumerate(sorted(set(int(s) for s in data["subject"])))}
    for recording, label, subject in zip(data["X"], data["y"], data["subject"], strict=True):
        cut = int(round(recording.shape[0] * (1.0 - TEST_TAIL)))
        for split, segment in (("train", recording[:cut]), ("test", recording[cut:])):
            windows = _windows(np.asarray(segment, dtype=np.float32), length)
            parts[split].append(windows)
            labels[split].append(np.full(len(windows), int(label), dtype=np.int64))
            subjects[split].append(np.full(len(windows), subject_ids[int(subject)]))
    train_windows = np.concatenate(parts["train"])
    mean = train_windows.mean(axis=(0, 1), keepdims=True)
    std = train_windows.std(axis=(0, 1), keepdims=True) + 1e-6

    def to_arrays(split: str) -> MultimodalArrays:
        windows = ((np.concatenate(parts[split]) - mean) / std).transpose(0, 2, 1)
        windows = np.ascontiguousarray(windows, dtype=np.float32)
        return MultimodalArrays(
            inputs={"accelerometer": windows[:, :3], "gyroscope": windows[:, 3:]},
            mask=np.ones((windows.shape[0], 2), dtype=bool),
            labels=np.concatenate(labels[split]),
        )

    return (
        to_arrays("train"),
        np.concatenate(subjects["train"]),
        to_arrays("test"),
        np.concatenate(subjects["test"]),
    )


class SmartwatchDataset(FederatedDataset):
    """Ten clients, one per subject, with the subject's held-out windows as local test."""

    num_classes = NUM_CLASSES
    sensitive_attribute = "subject"
    num_sensitive_values = NUM_SUBJECTS

    def __init__(self, window_seconds: float = 2.0) -> None:
        self.specs = smartwatch_specs(window_seconds)
        train, train_subjects, self._test, self._test_subjects = windowed_watch(window_seconds)
        self._train = PartitionedArrays(
            pool=train,
            test=self._test,
            specs=self.specs,
            num_classes=NUM_CLASSES,
            partitioner=NaturalIdPartitioner(partition_by="subject"),
            columns={"subject": train_subjects},
            test_fraction=0.0,
            seed=0,
            shuffle=False,  # partition p stays the p-th subject in recording order
        )
        self._train.bind(seed=0, test_fraction=0.0)

    @property
    def num_partitions(self) -> int:
        """One partition per subject."""
        return self._train.num_partitions

    def partition(self, partition_id: int) -> tuple[MultimodalArrays, MultimodalArrays]:
        """The subject's training windows and its own held-out windows."""
        train, _ = self._train.partition(partition_id)
        subject = self.subject_of(partition_id)
        return train, self._test.subset(self._test_subjects == subject)

    def subject_of(self, partition_id: int) -> int:
        """The subject (0..9) whose recordings form partition ``partition_id``."""
        self.check_partition_id(partition_id)
        index = self._train.partitioner.load_partition(partition_id)["subject"]
        return int(index[0])

    sensitive_value = subject_of

    def central_test(self) -> MultimodalArrays:
        """Held-out windows of all subjects."""
        return self._test

    def central_test_without(self, partitions: Collection[int]) -> MultimodalArrays:
        """Held-out windows of every subject but those of ``partitions``."""
        excluded = [self.subject_of(p) for p in partitions]
        return self._test.subset(~np.isin(self._test_subjects, excluded))


@register_dataset("smartwatch")
def smartwatch_dataset(config: RunConfig) -> FederatedDataset:
    """The smartwatch dataset; with ``num-clients < 10`` only the first subjects take part.

    The ``unseen-devices`` held out of training are the subjects after them, then the
    ``public-devices`` (consented donors).
    """
    if config.num_partitions > NUM_SUBJECTS:
        raise ValueError(
            f"dataset 'smartwatch' has one client per subject: num-clients + unseen-devices + "
            f"public-devices must be at most {NUM_SUBJECTS}, got {config.num_clients} + "
            f"{config.unseen_devices} + {config.public_devices}"
        )
    return SmartwatchDataset(config.window_seconds)
