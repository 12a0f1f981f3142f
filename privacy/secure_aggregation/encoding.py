"""Updates as vectors of integers modulo ``2**bits``, so that masks can hide them and sums add up.

A device ``u`` with weight ``n_u`` (its ``num-examples``) encodes its update ``Δ_u`` (the flat
float vector ``w_u − w_global``, every value finite) as ``d + 1`` integers:

* its weight ``m_u = min(n_u, W)`` (``W`` = ``secure-aggregation-max-weight``), exactly, as
  the last coordinate;
* ``ρ_u · Δ_u`` with ``ρ_u = m_u / W``, clipped to ``[−c, c]`` per coordinate (``c`` =
  ``secure-aggregation-clip``) and quantized with stochastic rounding to codes in ``[0, T]``,
  Flower's ``quantize``: ``code = round_stochastic((clip(ρΔ) + c) · T / (2c))``.

Summed over ``m`` devices (at most the cohort's ``n``; the modulus holds ``n · T`` and
``n · W``, so the sum never wraps around) the codes decode to the examples-weighted mean update

    Σ ρ_u Δ_u = (2c / T) · Σ code − m · c,      Δ̄ = Σ ρ_u Δ_u / Σ ρ_u,   Σ ρ_u = Σ m_u / W,

FedAvg's weighted mean (with weights capped at ``W``) up to the rounding: each device adds at
most one step ``2c / T`` to ``Σ ρ_u Δ_u``, so the mean's error per coordinate is at most
``(2c / T) · m / Σ ρ_u = (2c / T) · W / mean(m_u)`` for ``m`` devices (Bonawitz et al. 2017,
§3; Flower's SecAgg+ weights the same way). With 32-bit words the step is negligible; with
8 or 4 bits, keep ``W`` near the devices' ``num-examples`` (a small ``W / mean(m_u)``).
The weights are exact, so central DP accounts the very weights the sum used.

``T`` follows the device hop's ``device-bits``: with 8 or 4 bits, ``2L`` for the ``L`` levels
of the existing quantizer (``compression/quantize.py``, 254 or 14) and the smallest modulus
that holds ``n · T`` and ``n · W`` (16-bit words for 10 devices); with 32 bits, the largest
``T`` for which ``n · T < 2**32``: ``min(2**30, (2**32 − 1) // n)``.
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
        max_weight: ``W``, the ``num-examples`` that counts fully (a device's weight is
            ``min(num-examples, W)``).
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
            ValueError: if ``cohort < 1``, or ``cohort · max_weight`` does not fit 32 bits.
        """
        if cohort < 1:
            raise ValueError(f"a cohort has at least 1 device, got {cohort}")
        if (cohort * max_weight).bit_length() > 32:
            raise ValueError(f"{cohort} devices' weights of up to {max_weight} do not fit 32-bit "
                             "words: lower secure-aggregation-max-weight")
        if device_bits == 32:
            top = min(MAX_LEVELS, ((1 << 32) - 1) // cohort)
            return cls(clip, top, max_weight, 32)
        top = 2 * levels(device_bits)
        return cls(clip, top, max_weight,
                   max((cohort * top).bit_length(), (cohort * max_weight).bit_length()))

    @property
    def modulus(self) -> int:
        """``2**bits``."""
        return 1 << self.bits

    @property
    def dtype(self) -> np.dtype:
        """The unsigned type a masked vector travels in: 16 bits when the modulus fits."""
        return np.dtype(np.uint16 if self.bits <= 16 else np.uint32)

    def weight(self, num_examples: int) -> int:
        """``m = min(num_examples, W)``, a device's weight in the sum.

        Raises:
            ValueError: if ``num_examples < 1``.
        """
        if num_examples < 1:
            raise ValueError(f"num-examples must be >= 1, got {num_examples}")
        return min(num_examples, self.max_weight)

    def encode(self, update: np.ndarray, num_examples: int) -> np.ndarray:
        """The ``d + 1`` codes (``uint64``) of a device's flat update and weight.

        Raises:
            ValueError: if a value of ``update`` is NaN or infinite (its codes would be
                garbage that no tier can see), or ``num_examples < 1``.
        """
        update = np.asarray(update, dtype=np.float64)
        if not np.isfinite(update).all():
            raise ValueError(f"the update has {int((~np.isfinite(update)).sum())} non-finite "
                             "values: it cannot be encoded")
        weight = self.weight(num_examples)
        codes = quantize([update * (weight / self.max_weight)], self.clip, self.levels)[0]
        # (c + c) · T / 2c can round past T in floating point
        codes = np.clip(codes, 0, self.levels).astype(np.uint64)
        return np.append(codes, np.uint64(weight))

    def decode(self, total: np.ndarray, count: int) -> tuple[np.ndarray, float]:
        """The weighted mean update and ``Σ ρ`` of the unmasked sum of ``count`` devices' codes.

        Raises:
            ValueError: if the weights sum to zero (every device had weight 0).
        """
        weights = float(total[-1]) / self.max_weight
        if weights <= 0.0:
            raise ValueError("the devices' weights sum to 0: nothing to average")
        weighted = total[:-1].astype(np.float64) * (2 * self.clip / self.levels) - count * self.clip
        return weighted / weights, weights
