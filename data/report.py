r"""What each device holds, before training: samples, label histogram, modalities; and warnings.

:func:`partition_report` reads every partition of a :class:`FederatedDataset` (the first
:data:`MAX_REPORTED` of a larger federation) and :func:`partition_warnings` flags what makes a
run go wrong without a word:

* a device with no training sample, or whose training samples are all of one class;
* a modality no device holds;
* with an IID partitioner (its class name says ``Iid``), a device whose label distribution is
  far from the pool's: total variation distance
  :math:`\mathrm{TV}(p, q) = \frac{1}{2}\sum_c |p_c - q_c|` above :data:`IID_TV_LIMIT` (a
  label-sorted pool cut into contiguous chunks gives TV near 1; a shuffled one near
  :math:`\sqrt{C / n}` for :math:`n` samples per device).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from fedmosaic.data.datasets import FederatedDataset, PartitionedArrays
from fedmosaic.data.modality import MultimodalArrays

MAX_REPORTED = 1000
"""Devices a report covers at most (reading every partition of a huge federation is slow)."""
IID_TV_LIMIT = 0.3
"""Total variation from the pool's label distribution above which an IID device is flagged."""


@dataclass(frozen=True)
class DevicePartition:
    """One device's local data.

    Attributes:
        partition_id: The device.
        train_samples: Samples it trains on.
        test_samples: Samples it keeps for its own evaluation.
        label_counts: Training samples per class, ``num_classes`` entries.
        modalities_held: Per modality, the training samples that have it.
    """

    partition_id: int
    train_samples: int
    test_samples: int
    label_counts: list[int]
    modalities_held: list[int]


@dataclass(frozen=True)
class PartitionReport:
    """Every reported device's partition, with the names it needs to be read.

    Attributes:
        devices: One entry per reported device.
        classes: ``num_classes``.
        modalities: The modality names, in the mask's order.
        partitioner: The partitioner's class name (``None`` for a dataset without one).
        total_devices: Devices in the federation (may exceed ``len(devices)``).
    """

    devices: list[DevicePartition]
    classes: int
    modalities: list[str]
    partitioner: str | None
    total_devices: int

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (``summary.json``'s ``partitions``)."""
        return asdict(self)

    def table(self) -> str:
        """A compact text table: one line per device."""
        width = len(str(max((d.train_samples for d in self.devices), default=0)))
        lines = [f"partitions ({self.partitioner or 'dataset-defined'}; "
                 f"{len(self.devices)} of {self.total_devices} devices): "
                 f"train/test, labels 0..{self.classes - 1}, modalities "
                 f"{'/'.join(self.modalities)}"]
        for d in self.devices:
            lines.append(f"  device {d.partition_id:>4}: {d.train_samples:>{width}}/"
                         f"{d.test_samples:<{width}} labels {d.label_counts} modalities "
                         f"{d.modalities_held}")
        return "\n".join(lines)


def partition_report(dataset: FederatedDataset, num_devices: int | None = None,
                     held: Callable[[MultimodalArrays, int], MultimodalArrays] | None = None
                     ) -> PartitionReport:
    """Read the first ``num_devices`` partitions of ``dataset`` (at most :data:`MAX_REPORTED`).

    ``num_devices`` leaves out the partitions after them (held-out and public devices, which
    never train); by default every partition is a device. ``held(arrays, partition_id)``, if
    given, is what the device holds of a split (the run's
    :func:`~fedmosaic.data.absent_modalities.as_held`: without a modality it lacks).

    Raises:
        ValueError: If a partition cannot be made, naming it.
    """
    devices = []
    count = (dataset.num_partitions if num_devices is None
             else min(num_devices, dataset.num_partitions))
    for partition_id in range(min(count, MAX_REPORTED)):
        try:
            train, test = (held(split, partition_id) if held else split
                           for split in dataset.partition(partition_id))
        except (IndexError, KeyError, ValueError) as error:
            raise ValueError(f"partition {partition_id} of {dataset.num_partitions} could not "
                             f"be made ({type(error).__name__}: {error}); does the "
                             "partitioner ask for more partitions than the data allows?"
                             ) from error
        devices.append(DevicePartition(
            partition_id=partition_id,
            train_samples=len(train),
            test_samples=len(test),
            label_counts=np.bincount(train.labels, minlength=dataset.num_classes)
            .astype(int).tolist(),
            modalities_held=train.mask.sum(axis=0).astype(int).tolist(),
        ))
    partitioner = (type(dataset.partitioner).__name__ if isinstance(dataset, PartitionedArrays)
                   else None)
    return PartitionReport(devices, dataset.num_classes, [s.name for s in dataset.specs],
                           partitioner, count)


def partition_warnings(report: PartitionReport) -> list[str]:
    """What in ``report`` deserves a warning (module docstring); empty if nothing."""
    found = []
    for d in report.devices:
        if d.train_samples == 0:
            found.append(f"device {d.partition_id} has no training sample")
        elif sum(c > 0 for c in d.label_counts) == 1:
            found.append(f"device {d.partition_id} holds one class only "
                         f"({int(np.argmax(d.label_counts))}, {d.train_samples} samples)")
    held = np.sum([d.modalities_held for d in report.devices], axis=0) if report.devices else []
    for name, count in zip(report.modalities, held, strict=False):
        if count == 0:
            found.append(f"modality {name!r} is held by no device")
    if report.partitioner and "iid" in report.partitioner.lower():
        pool = np.sum([d.label_counts for d in report.devices], axis=0).astype(float)
        pool /= max(pool.sum(), 1.0)
        for d in report.devices:
            if d.train_samples:
                share = np.asarray(d.label_counts, float) / d.train_samples
                distance = 0.5 * float(np.abs(share - pool).sum())
                if distance > IID_TV_LIMIT:
                    found.append(f"device {d.partition_id}'s labels are far from the pool's "
                                 f"under {report.partitioner} (total variation "
                                 f"{distance:.2f} > {IID_TV_LIMIT}): is the pool sorted and "
                                 "left unshuffled?")
    return found
