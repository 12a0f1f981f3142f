r"""Aggregation kernels over ``n`` updates of ``P`` values, vectorised, near memory speed.

Every rule here works on one ``(n, P)`` stack, the updates flattened into rows
(:class:`ArrayLayout`), so no rule loops over devices or parameters in Python:

* :func:`weighted_mean`: :math:`\bar w = \sum_i a_i w_i / \sum_i a_i`, one matrix-vector
  product (BLAS) over the stack, accumulated in the stack's precision as Flower's FedAvg does;
  :func:`weighted_average` computes it from the updates without stacking them (one BLAS
  ``axpy`` per update);
* :func:`trimmed_mean`: per coordinate, drop the :math:`k = \lfloor \beta n \rfloor` smallest
  and :math:`k` largest values and average the other :math:`n - 2k`, each weighted by
  :math:`a_i` if weights are given (Yin et al. 2018, "Byzantine-Robust Distributed Learning",
  arXiv:1803.01498); unweighted, it equals ``scipy.stats.trim_mean`` and Flower's
  ``aggregate_trimmed_avg``;
* :func:`median`: the coordinate-wise median (Yin et al. 2018), as ``numpy.median`` for finite
  values (validation rejects non-finite updates before any aggregation).

The order statistics need each coordinate's ``n`` values side by side. The stack is cut into
blocks of :data:`BLOCK_COLUMNS` coordinates; a block is transposed into a cache-resident
``(columns, n)`` buffer and sorted along its contiguous axis (NumPy's SIMD sort), and the
blocks are spread over threads (NumPy and BLAS release the GIL while they sort and sum).
Equal values are kept or cut in the order of their rows (a stable sort), which only matters
when weighted.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy.linalg import blas

BLOCK_COLUMNS = 4096
"""Coordinates per block of an order-statistic kernel (``n`` x 4096 values stay in cache)."""


@dataclass(frozen=True)
class ArrayLayout:
    """Where each named array lives in one flat row: names, shapes and offsets, in order.

    Attributes:
        names: The arrays' names, in row order.
        shapes: Each array's shape.
        dtypes: Each array's dtype (results are cast back to it).
        offsets: ``len(names) + 1`` positions; array ``j`` is ``row[offsets[j]:offsets[j+1]]``.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]
    offsets: tuple[int, ...]

    @classmethod
    def of(cls, arrays: Mapping[str, np.ndarray]) -> ArrayLayout:
        """The layout of ``arrays`` (its key order is the row order)."""
        shapes = tuple(np.shape(a) for a in arrays.values())
        sizes = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
        return cls(tuple(arrays), shapes, tuple(np.asarray(a).dtype for a in arrays.values()),
                   tuple(int(o) for o in sizes))

    @property
    def size(self) -> int:
        """``P``: values in one row."""
        return self.offsets[-1]

    def stack(self, updates: Sequence[Mapping[str, np.ndarray]],
              dtype: np.dtype | type = np.float32) -> np.ndarray:
        """The ``(n, P)`` stack of ``updates``, one row each, in ``dtype``.

        Raises:
            ValueError: If there is no update, or an update lacks an array, has one more, or
                has one of another shape.
        """
        if not updates:
            raise ValueError("an aggregation needs at least one update, got none")
        stack = np.empty((len(updates), self.size), dtype=dtype)
        for row, update in zip(stack, updates, strict=True):
            self.fill(row, update)
        return stack

    def fill(self, row: np.ndarray, update: Mapping[str, np.ndarray]) -> None:
        """Copy ``update``'s arrays into the ``(P,)`` ``row``.

        Raises:
            ValueError: If ``update`` lacks an array, has one more, or has one of another shape.
        """
        for start, end, values in self.pieces(update):
            row[start:end] = values

    def pieces(self, update: Mapping[str, np.ndarray]) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(start, end, values)`` of each of ``update``'s arrays, in row order.

        ``row[start:end]`` is where it goes; ``values`` are flattened (a view where possible).

        Raises:
            ValueError: If ``update`` lacks an array, has one more, or has one of another shape.
        """
        if len(update) != len(self.names) or not all(name in update for name in self.names):
            raise ValueError(f"an update must hold the arrays {list(self.names)}, got "
                             f"{list(update)}")
        for name, shape, start, end in zip(self.names, self.shapes, self.offsets,
                                           self.offsets[1:], strict=False):
            value = np.asarray(update[name])
            if value.shape != shape:
                raise ValueError(f"array {name!r} must have shape {shape}, got {value.shape}")
            yield start, end, value.reshape(-1)

    def unflatten(self, row: np.ndarray) -> dict[str, np.ndarray]:
        """The named arrays of one ``(P,)`` row, each in its own shape and dtype (copies)."""
        return {name: row[start:end].reshape(shape).astype(dtype)
                for name, shape, dtype, start, end in zip(
                    self.names, self.shapes, self.dtypes, self.offsets, self.offsets[1:],
                    strict=False)}


def _check_weights(weights: np.ndarray | Sequence[float] | None, count: int) -> np.ndarray | None:
    if weights is None:
        return None
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (count,) or not (weights > 0).all() or not np.isfinite(weights).all():
        raise ValueError(f"weights must be {count} finite values > 0, got {weights!r}")
    return weights


def weighted_mean(stack: np.ndarray, weights: np.ndarray | Sequence[float]) -> np.ndarray:
    """``Σ_i a_i stack[i] / Σ_i a_i`` over an ``(n, ...)`` stack, in ``stack``'s dtype.

    One BLAS matrix-vector product.

    Raises:
        ValueError: If ``weights`` is not one finite value > 0 per row.
    """
    checked = _check_weights(weights, stack.shape[0])
    assert checked is not None
    flat = stack.reshape(stack.shape[0], -1)
    return ((checked / checked.sum()).astype(stack.dtype) @ flat).reshape(stack.shape[1:])


def _cut(count: int, beta: float) -> int:
    if not 0.0 <= beta < 0.5:
        raise ValueError(f"beta must lie in [0, 0.5), got {beta}")
    cut = int(beta * count)
    if count - 2 * cut < 1:
        raise ValueError(f"trimming {cut} of {count} values at each end leaves none")
    return cut


BlockRule = Callable[[np.ndarray, np.ndarray], None]
"""``rule(block, out)``: reduce a ``(columns, n)`` block along axis 1 into ``out`` (float64)."""


def _by_blocks(stack: np.ndarray, rule: BlockRule, workers: int | None) -> np.ndarray:
    """Apply ``rule`` to every transposed block of ``stack``'s columns, on ``workers`` threads."""
    shape = stack.shape[1:]
    stack = np.ascontiguousarray(stack).reshape(stack.shape[0], -1)
    count, size = stack.shape
    result = np.empty(size, dtype=np.float64)
    starts = range(0, size, BLOCK_COLUMNS)
    threads = max(1, min(workers or os.cpu_count() or 1, len(starts)))

    def run(share: Sequence[int]) -> None:
        buffer = np.empty((BLOCK_COLUMNS, count), dtype=stack.dtype)
        for start in share:
            columns = stack[:, start:start + BLOCK_COLUMNS]
            block = buffer[:columns.shape[1]]
            block[...] = columns.T
            rule(block, result[start:start + columns.shape[1]])

    if threads == 1:
        run(starts)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, [starts[i::threads] for i in range(threads)]))
    return result.astype(stack.dtype).reshape(shape)


def trimmed_mean(stack: np.ndarray, beta: float,
                 weights: np.ndarray | Sequence[float] | None = None,
                 workers: int | None = None) -> np.ndarray:
    """Coordinate-wise trimmed mean of an ``(n, ...)`` ``stack``, optionally weighted.

    Args:
        stack: One row per update (``(n, P)``, or ``(n, ...)`` for one array's updates).
        beta: Share cut at each end of every coordinate, in ``[0, 0.5)``.
        weights: ``(n,)`` positive weights (``None``: all equal).
        workers: Threads (``None``: one per CPU).

    Returns:
        The ``stack.shape[1:]`` result in ``stack``'s dtype. Unweighted, each sorted block's
        kept values are averaged by one BLAS matrix-vector product with the vector that holds
        ``1 / (n - 2k)`` on the kept positions and 0 on the cut ones, in the stack's precision
        as FedAvg's mean (weighted: accumulated in float64).

    Raises:
        ValueError: If ``beta`` is out of range, nothing would remain, or a weight is not > 0.
    """
    count = stack.shape[0]
    cut = _cut(count, beta)
    checked = _check_weights(weights, count)
    if cut == 0:
        return (stack.mean(axis=0, dtype=np.float64).astype(stack.dtype) if checked is None
                else weighted_mean(stack, checked))
    if checked is None:
        # 1 / (n - 2k) on the kept positions (float64 for a stack of integers)
        middle = np.zeros(count, dtype=stack.dtype if np.issubdtype(stack.dtype, np.floating)
                          else np.float64)
        middle[cut:count - cut] = 1 / (count - 2 * cut)

        def rule(block: np.ndarray, out: np.ndarray) -> None:
            block.sort(axis=1)
            out[...] = block @ middle
    else:
        def rule(block: np.ndarray, out: np.ndarray) -> None:
            kept = _kept_in_stable_order(block, cut)
            np.divide(np.where(kept, block, 0) @ checked, kept @ checked, out=out)
    return _by_blocks(stack, rule, workers)


def _kept_in_stable_order(block: np.ndarray, cut: int) -> np.ndarray:
    """Which values of each row of ``block`` a stable sort puts in positions ``[cut, n - cut)``.

    With ``lo`` and ``hi`` the row's order statistics ``cut`` and ``n - 1 - cut``, a value
    strictly between them is kept and one outside is cut. A value ``x`` equal to ``lo`` or
    ``hi`` sits at position ``#{x' < x} + #{equal values in earlier columns}``, and is kept
    if that position lies in the window.
    """
    count = block.shape[1]
    ordered = np.sort(block, axis=1)
    low, high = ordered[:, cut:cut + 1], ordered[:, count - 1 - cut:count - cut]
    kept = (block >= low) & (block <= high)
    tied = ((ordered[:, cut - 1] == low[:, 0]) | (ordered[:, cut + 1] == low[:, 0])
            | (ordered[:, count - 2 - cut] == high[:, 0]) | (ordered[:, count - cut] == high[:, 0]))
    if tied.any():  # rare: only rows whose bounds repeat need positions
        rows, low, high = block[tied], low[tied], high[tied]
        exact = (rows > low) & (rows < high)
        for bound in (low, high):
            equal = rows == bound
            position = (rows < bound).sum(axis=1, keepdims=True) + np.cumsum(equal, axis=1) - 1
            exact |= equal & (position >= cut) & (position < count - cut)
        kept[tied] = exact
    return kept


def median(stack: np.ndarray, workers: int | None = None) -> np.ndarray:
    """Coordinate-wise median of an ``(n, ...)`` ``stack``, in ``stack``'s dtype.

    For even ``n``, the mean of the two middle values.
    """
    count = stack.shape[0]
    if count < 1:
        raise ValueError("a median needs at least one update, got none")
    low, high = (count - 1) // 2, count // 2

    def rule(block: np.ndarray, out: np.ndarray) -> None:
        block.sort(axis=1)
        np.add(block[:, low], block[:, high], out=out, dtype=np.float64)
        out /= 2

    return _by_blocks(stack, rule, workers)


def weighted_average(updates: Sequence[Mapping[str, np.ndarray]],
                     weights: np.ndarray | Sequence[float],
                     dtype: np.dtype | type = np.float32) -> dict[str, np.ndarray]:
    """``Σ_i a_i w_i / Σ_i a_i`` of named-array updates, streamed: no ``(n, P)`` stack.

    Each update's arrays are added in place to their slices of one ``(P,)`` accumulator in
    ``dtype`` with a BLAS ``axpy`` (``acc ← (a_i / Σ a) w_i + acc``, one pass over the
    update), so memory stays at one model whatever ``n`` is; the result is cut back into the
    original shapes and dtypes.

    Raises:
        ValueError: If there is no update, ``weights`` is not one finite value > 0 per
            update, or the updates do not share names and shapes.
    """
    if not updates:
        raise ValueError("an aggregation needs at least one update, got none")
    checked = _check_weights(weights, len(updates))
    assert checked is not None
    layout = ArrayLayout.of(updates[0])
    total = np.zeros(layout.size, dtype=dtype)
    axpy = blas.get_blas_funcs("axpy", (total,))
    for update, share in zip(updates, checked / checked.sum(), strict=True):
        for start, end, values in layout.pieces(update):
            axpy(values, total[start:end], a=share)  # in place: the slice is contiguous
    return layout.unflatten(total)


def combine(updates: Sequence[Mapping[str, np.ndarray]],
            rule: Callable[[np.ndarray], np.ndarray],
            dtype: np.dtype | type = np.float32) -> dict[str, np.ndarray]:
    """Apply ``rule`` (``(n, P)`` stack to ``(P,)``) to named-array updates, array by array.

    The updates are laid out as the first one (:class:`ArrayLayout`), stacked in ``dtype``,
    reduced in one call, and the result is cut back into named arrays of the original dtypes.

    Raises:
        ValueError: If there is no update or the updates do not share names and shapes.
    """
    if not updates:
        raise ValueError("an aggregation needs at least one update, got none")
    layout = ArrayLayout.of(updates[0])
    return layout.unflatten(rule(layout.stack(updates, dtype)))
