"""Modalities and the in-memory container every dataset hands to a model.

A *modality* is one input stream of a device (camera frames, a sensor time series, audio,
device-log tokens). Each sample carries every modality of its dataset plus a boolean
presence mask; a missing modality's tensor is all zeros and its mask entry is ``False``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class ModalityKind(str, enum.Enum):
    """The encoder family a modality needs."""

    IMAGE = "image"  # (channels, height, width), float32
    SENSOR = "sensor"  # (channels, time), float32
    AUDIO = "audio"  # (1, samples), float32 waveform
    TOKENS = "tokens"  # (sequence,), int64 token ids, 0 is padding


@dataclass(frozen=True)
class ModalitySpec:
    """Name, kind and per-sample shape of one modality.

    ``vocab_size`` is required for ``TOKENS`` (ids lie in ``[0, vocab_size)``) and must be
    ``None`` otherwise.
    """

    name: str
    kind: ModalityKind
    shape: tuple[int, ...]
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        expected_rank = {
            ModalityKind.IMAGE: 3,
            ModalityKind.SENSOR: 2,
            ModalityKind.AUDIO: 2,
            ModalityKind.TOKENS: 1,
        }[ModalityKind(self.kind)]
        if not self.name:
            raise ValueError("ModalitySpec.name must be a non-empty string, got ''")
        if len(self.shape) != expected_rank or any(d <= 0 for d in self.shape):
            raise ValueError(
                f"ModalitySpec {self.name!r} of kind {self.kind.value!r} needs a shape of "
                f"{expected_rank} positive sizes, got {self.shape}"
            )
        if (self.kind == ModalityKind.TOKENS) != (self.vocab_size is not None):
            raise ValueError(
                f"ModalitySpec {self.name!r}: vocab_size is required for kind 'tokens' and "
                f"must be None otherwise, got vocab_size={self.vocab_size}"
            )
        if self.vocab_size is not None and self.vocab_size < 2:
            raise ValueError(
                f"ModalitySpec {self.name!r}: vocab_size must be >= 2, got {self.vocab_size}"
            )

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype samples of this modality are stored in."""
        return np.dtype(np.int64 if self.kind == ModalityKind.TOKENS else np.float32)


@dataclass
class MultimodalArrays:
    """A set of samples: one array per modality, a presence mask and integer labels.

    Attributes:
        inputs: ``{modality name: array of shape (N, *spec.shape)}``.
        mask: ``(N, M)`` booleans, column ``j`` is modality ``specs[j]``; every row has at
            least one ``True``.
        labels: ``(N,)`` int64 class ids.
    """

    inputs: dict[str, np.ndarray]
    mask: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def validate(self, specs: tuple[ModalitySpec, ...], num_classes: int) -> None:
        """Raise ``ValueError`` unless the arrays match ``specs`` and ``num_classes``."""
        n = len(self)
        if self.labels.ndim != 1:
            raise ValueError(f"labels must have shape (N,), got {self.labels.shape}")
        if n and (self.labels.min() < 0 or self.labels.max() >= num_classes):
            raise ValueError(
                f"labels must lie in [0, {num_classes}), got range "
                f"[{self.labels.min()}, {self.labels.max()}]"
            )
        if self.mask.shape != (n, len(specs)) or self.mask.dtype != np.bool_:
            raise ValueError(
                f"mask must be bool of shape ({n}, {len(specs)}), got "
                f"{self.mask.dtype} {self.mask.shape}"
            )
        if n and not self.mask.any(axis=1).all():
            raise ValueError("every sample needs at least one present modality")
        names = [s.name for s in specs]
        if sorted(self.inputs) != sorted(names):
            raise ValueError(f"inputs must have modalities {names}, got {list(self.inputs)}")
        for spec in specs:
            array = self.inputs[spec.name]
            if array.shape != (n, *spec.shape):
                raise ValueError(
                    f"modality {spec.name!r} must have shape {(n, *spec.shape)}, "
                    f"got {array.shape}"
                )

    def subset(self, index: np.ndarray) -> MultimodalArrays:
        """The samples at ``index`` (an integer or boolean index array)."""
        return MultimodalArrays(
            inputs={name: array[index] for name, array in self.inputs.items()},
            mask=self.mask[index],
            labels=self.labels[index],
        )

    def with_mask(self, mask: np.ndarray) -> MultimodalArrays:
        """The same samples with presence ``mask`` (the inputs are shared, not copied)."""
        return MultimodalArrays(inputs=self.inputs, mask=mask, labels=self.labels)

    def without_modality(self, column: int) -> MultimodalArrays:
        """The samples with modality ``column`` removed; samples left with none are dropped."""
        mask = self.mask.copy()
        mask[:, column] = False
        return self.with_mask(mask).subset(mask.any(axis=1))

    def drop_modalities(self, probability: float, rng: np.random.Generator) -> MultimodalArrays:
        """Hide each present modality of each sample with ``probability``, keeping one.

        Modality dropout (Neverova et al. 2016, "ModDrop", IEEE TPAMI): a sample that would
        lose every modality keeps one of its present modalities, chosen uniformly.
        """
        if not 0.0 <= probability < 1.0:
            raise ValueError(f"probability must lie in [0, 1), got {probability}")
        kept = self.mask & (rng.random(self.mask.shape) >= probability)
        for row in np.flatnonzero(~kept.any(axis=1)):
            kept[row, rng.choice(np.flatnonzero(self.mask[row]))] = True
        return self.with_mask(kept)

    @staticmethod
    def concatenate(parts: list[MultimodalArrays]) -> MultimodalArrays:
        """Stack several sample sets that share modalities."""
        if not parts:
            raise ValueError("concatenate needs at least one MultimodalArrays, got none")
        return MultimodalArrays(
            inputs={
                name: np.concatenate([p.inputs[name] for p in parts]) for name in parts[0].inputs
            },
            mask=np.concatenate([p.mask for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
        )


def pad_series(series: Sequence[np.ndarray], length: int | None = None) -> np.ndarray:
    """Stack ``(C, T_i)`` series of different lengths into ``(N, C, T)`` float32, NaN-padded.

    Each series is padded at its end with NaN up to ``length`` (default: the longest), which
    the sensor encoder reads as padding (it pools and normalises over the valid steps only).
    Equal-length series come back exactly as ``np.stack`` gives them.

    Raises:
        ValueError: If ``series`` is empty, the channel counts differ, or a series is longer
            than ``length``.
    """
    if not series:
        raise ValueError("pad_series needs at least one series, got none")
    channels = {s.shape[0] for s in series}
    if len(channels) != 1 or any(s.ndim != 2 for s in series):
        raise ValueError(f"every series must be (C, T) with the same C, got shapes "
                         f"{sorted({s.shape for s in series})[:5]}")
    longest = max(s.shape[1] for s in series)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"a series has {longest} steps, more than length={length}")
    padded = np.full((len(series), channels.pop(), length), np.nan, dtype=np.float32)
    for row, values in enumerate(series):
        padded[row, :, :values.shape[1]] = values
    return padded
