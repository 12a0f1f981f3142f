"""Updates as vectors of integers modulo ``2**bits``, so that masks can hide them and sums add up.

A device ``u`` with weight ``n_u`` (its ``num-examples``) encodes its update ``Δ_u`` (the flat
float vector ``w_u − w_global``) as ``d + 1`` integers in ``[0, T]``:

* its weight share ``ρ_u = q_u / T`` with ``q_u = round(T · min(n_u, W) / W)`` (``W`` =
  ``secure-aggregation-max-weight``); ``q_u`` is the last coordinate;
* ``ρ_u · Δ_u`` clipped to ``[−c, c]`` per coordinate (``c`` = ``secure-aggregation-clip``)
  and quantized with stochastic rounding to ``T`` levels, Flower's ``quantize``:
  ``code = round_stochastic((clip(ρΔ) + c) · T / (2c))``.

Summed over ``m`` devices (at most the cohort's ``n``, so the sum stays below ``2**bits``)
the codes decode to the examples-weighted mean update

    Σ ρ_u Δ_u = (2c / T) · Σ code − m · c,      Δ̄ = Σ ρ_u Δ_u / Σ ρ_u,

FedAvg's weighted mean up to the rounding of ``ρ`` and one quantization step ``2c / T`` per
device and coordinate (Bonawitz et al. 2017, §3; Flower's SecAgg+ weights the same way).

``T`` follows the device hop's ``device-bits``: with 8 or 4 bits, ``2L`` for the ``L`` levels
of the existing quantizer (``compression/quantize.py``, 254 or 14) and the smallest modulus
that holds ``n · T``, so masked words are 16 bits for small cohorts; with 32 bits, the largest
``T`` for which ``n · T < 2**32`` (at most ``2**30``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from flwr.common.secure_aggregation.quantization import quantize

from fedmosaic.compression.quantize import levels

MAX_LEVELS = 1 << 30
"""Largest ``T`` (Flower's stochastic rounding works in ``int32``)."""


@dataclass(frozen=True)
class FieldEncoding:
    """How a cohort's updates become integers modulo ``2**bits`` (module docstring).

    Attributes:
        clip: ``c``, the bound on each weighted coordinate.
        levels: ``T``, the largest code.
        max_weight: ``W``, the ``num-examples`` that counts fully.
        bits: the modulus is ``2**bits``.
    """

    clip: float
    levels: int
    max_weight: int
    bits: int

    def __post_init__(self) -> None:
        if not 0.0 < self.clip < math.inf:
            raise ValueError(f"the clipping range must be finite and > 0, got {self.clip}")
        if not 1 <= self.levels <= MAX_LEVELS:
            raise ValueError(f"levels must lie in [1, {MAX_LEVELS}], got {self.levels}")
        if self.max_weight < 1:
            raise ValueError(f"the max weight must be >= 1, got {self.max_weight}")
        if not 1 <= self.bits <= 32:
            raise ValueError(f"the modulus has 1 to 32 bits, got {self.bits}")

    @classmethod
    def for_cohort(cls, cohort: int, clip: float, max_weight: int,
                   device_bits: int) -> FieldEncoding:
        """The encoding of a cohort of ``cohort`` devices whose sum must not wrap around.

        Raises:
            ValueError: if ``cohort < 1``.
        """
        if cohort < 1:
            raise ValueError(f"a cohort has at least 1 device, got {cohort}")
        if device_bits == 32:
            top = min(MAX_LEVELS, ((1 << 32) - 1) // cohort)
            return cls(clip, top, max_weight, 32)
        top = 2 * levels(device_bits)
        return cls(clip, top, max_weight, (cohort * top).bit_length())

    @property
    def modulus(self) -> int:
        """``2**bits``."""
        return 1 << self.bits

    @property
    def dtype(self) -> np.dtype:
        """The unsigned type a masked vector travels in: 16 bits when the modulus fits."""
        return np.dtype(np.uint16 if self.bits <= 16 else np.uint32)

    def encode(self, update: np.ndarray, num_examples: int) -> np.ndarray:
        """The ``d + 1`` codes (``uint64``) of a device's flat update and weight."""
        weight = round(self.levels * min(num_examples, self.max_weight) / self.max_weight)
        share = weight / self.levels
        codes = quantize([np.asarray(update, dtype=np.float64) * share], self.clip,
                         self.levels)[0]
        return np.append(codes.astype(np.uint64), np.uint64(weight))

    def decode(self, total: np.ndarray, count: int) -> tuple[np.ndarray, float]:
        """The weighted mean update and ``Σ ρ`` of the unmasked sum of ``count`` devices' codes.

        Raises:
            ValueError: if the weights sum to zero (every device had weight 0).
        """
        weights = float(total[-1]) / self.levels
        if weights <= 0.0:
            raise ValueError("the devices' weights sum to 0: nothing to average")
        weighted = total[:-1].astype(np.float64) * (2 * self.clip / self.levels) - count * self.clip
        return weighted / weights, weights
