"""Top-k sparsification: the ``k`` entries of largest magnitude of one tensor.

Top-k sparsification sends only the ``k`` largest-magnitude entries of an update (Aji and
Heafield 2017, "Sparse Communication for Distributed Gradient Descent", arXiv:1704.05021;
with error feedback it converges like the dense method, Stich et al. 2018, arXiv:1809.07599).
Here ``k`` is chosen per tensor, so every tensor (small bias vectors included) sends at least
one entry.
"""

from __future__ import annotations

import math

import numpy as np


def keep_count(size: int, ratio: float) -> int:
    """``k = ceil(ratio · size)``, at least 1 and at most ``size`` (0 for an empty tensor).

    ``ratio · size`` is rounded to 9 decimals before the ceiling so that binary
    floating-point error (``0.1 · 30 = 3.0000000000000004``) does not add an entry.

    Raises:
        ValueError: if ``size`` is negative or ``ratio`` is not in (0, 1].
    """
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if size == 0:
        return 0
    return min(size, max(1, math.ceil(round(ratio * size, 9))))


SAMPLED_SELECTION_MIN_SIZE = 1 << 16
"""From this size on, the threshold is searched among candidates a sample points to."""
SAMPLE_SIZE = 8192
_SAMPLE_SEED = 0x70C4


def _kth_largest(magnitude: np.ndarray, k: int) -> np.floating:
    """The k-th largest entry of ``magnitude`` (``1 <= k <= size``).

    For large arrays a fixed-seed random sample of ``SAMPLE_SIZE`` entries gives a lower
    bound ``t`` expected to have about ``1.5 k`` entries at or above it (plus four standard
    deviations); if at least ``k`` entries are ``>= t`` the k-th largest is among them and is
    selected there, otherwise (an unlucky sample) among all entries. The result is exact
    either way; the sample only saves time.
    """
    size = magnitude.size
    if size >= SAMPLED_SELECTION_MIN_SIZE:
        expected = SAMPLE_SIZE * k / size
        above = int(1.5 * expected + 4 * np.sqrt(expected) + 8)
        if above < SAMPLE_SIZE:
            positions = np.random.default_rng(_SAMPLE_SEED).integers(0, size, SAMPLE_SIZE)
            sample = magnitude[positions]
            bound = np.partition(sample, SAMPLE_SIZE - above)[SAMPLE_SIZE - above]
            candidates = np.compress(magnitude >= bound, magnitude)
            if candidates.size >= k:
                magnitude = candidates
                size = candidates.size
    return np.partition(magnitude, size - k)[size - k]


def topk_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Sorted flat positions of the ``k`` entries of ``values`` with the largest ``|value|``.

    With ``t`` the k-th largest magnitude, every entry with ``|v| > t`` is kept, and the
    remaining places go to the entries with ``|v| = t`` of lowest position (deterministic
    ties). Runs in ``O(n)``: a selection for ``t`` (:func:`_kth_largest`) and two passes.

    Args:
        values: a 1-D array of finite numbers.
        k: entries to keep, in [0, values.size].

    Returns:
        ``int64`` positions, strictly increasing, ``k`` of them.

    Raises:
        ValueError: if ``values`` is not 1-D or ``k`` is out of range.
    """
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {values.shape}")
    size = values.size
    if not 0 <= k <= size:
        raise ValueError(f"k must be in [0, {size}], got {k}")
    if k == size:
        return np.arange(size, dtype=np.int64)
    if k == 0:
        return np.empty(0, dtype=np.int64)
    magnitude = np.abs(values)
    threshold = _kth_largest(magnitude, k)
    keep = magnitude > threshold
    missing = k - int(np.count_nonzero(keep))
    if missing:
        keep[np.flatnonzero(magnitude == threshold)[:missing]] = True
    return np.flatnonzero(keep).astype(np.int64, copy=False)
