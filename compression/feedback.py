"""Error-feedback compression of one update: what is not sent now is sent later.

With update ``g_t`` and residual ``r_t`` (``r_0 = 0``) the sender transmits
``P_t = E(C(g_t + r_t))`` and keeps

    r_{t+1} = g_t + r_t − D(P_t),

where ``C`` is top-k sparsification then quantization, ``E`` the wire encoding and ``D`` the
decoder. Nothing is lost, only delayed: ``Σ_t D(P_t) = Σ_t g_t − r_{T+1}``, so entries dropped
in one round come back once their accumulated value is among the largest (Stich, Cordonnier
and Jaggi 2018, "Sparsified SGD with Memory", arXiv:1809.07599; Karimireddy et al. 2019,
"Error Feedback Fixes SignSGD", arXiv:1901.09847).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedmosaic.compression.quantize import quantize
from fedmosaic.compression.spec import CompressionSpec
from fedmosaic.compression.topk import keep_count, topk_indices
from fedmosaic.compression.wire import EncodedTensor, ValueMode, encode

Arrays = dict[str, np.ndarray]


def _check_inputs(update: Mapping[str, np.ndarray],
                  residual: Mapping[str, np.ndarray] | None) -> None:
    for name, array in update.items():
        if not isinstance(name, str):
            raise ValueError(f"update names must be str, got {name!r}")
        if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiub":
            raise ValueError(f"update[{name!r}] must be a NumPy bool, integer or float array, "
                             f"got {type(array).__name__} {getattr(array, 'dtype', '')}")
    if residual is None:
        return
    expected = [n for n, a in update.items() if a.dtype.kind == "f"]
    if list(residual) != expected:
        raise ValueError(f"residual must hold the update's floating arrays {expected}, got "
                         f"{list(residual)}")
    for name in expected:
        if np.shape(residual[name]) != update[name].shape:
            raise ValueError(f"residual[{name!r}] must have shape {update[name].shape}, got "
                             f"{np.shape(residual[name])}")


def _encode_float(name: str, dtype: np.dtype, corrected: np.ndarray, spec: CompressionSpec,
                  rng: np.random.Generator) -> EncodedTensor:
    """Top-k then quantize one error-corrected float32 tensor."""
    flat = corrected.ravel()
    k = keep_count(flat.size, spec.topk_ratio)
    if not spec.lossless and not np.isfinite(flat).all():
        raise ValueError(f"update[{name!r}] plus residual has non-finite values; top-k and "
                         "quantization need finite ones (send bits=32, topk_ratio=1 to pass "
                         "them through)")
    indices = None if k == flat.size else topk_indices(flat, k)
    kept = flat if indices is None else flat[indices]
    shape = tuple(corrected.shape)
    if spec.bits == 32:
        return EncodedTensor(name, dtype, shape, ValueMode.FLOAT32, indices, kept)
    codes, scales = quantize(kept, spec.bits, spec.block_size, rng)
    mode = ValueMode.INT8 if spec.bits == 8 else ValueMode.INT4
    return EncodedTensor(name, dtype, shape, mode, indices, codes, scales, spec.block_size)


def compress(update: Mapping[str, np.ndarray], spec: CompressionSpec,
             residual: Mapping[str, np.ndarray] | None,
             rng: np.random.Generator) -> tuple[bytes, Arrays]:
    """Compress ``update + residual`` into a payload; return it and the new residual.

    Floating arrays are corrected by the residual, computed in float32, sparsified per tensor
    (``k = ceil(topk_ratio · n)``) and quantized; they decode to their own dtype. Other arrays
    (integer counters, masks) are sent dense and exact, and have no residual.

    Args:
        update: named arrays, in the order the payload keeps.
        spec: the hop's compression.
        residual: what earlier calls did not send (the residual this function returned last
            time), or ``None`` for zeros.
        rng: source of the stochastic rounding.

    Returns:
        ``(payload, new_residual)`` with ``new_residual = update + residual − decode(payload)``
        for every floating array, float32, in the update's order.

    Raises:
        ValueError: if an array is not numeric, the residual does not match the update's
            floating arrays, or (lossy spec) a corrected value is not finite.
    """
    if not isinstance(spec, CompressionSpec):
        raise ValueError(f"spec must be a CompressionSpec, got {type(spec).__name__}")
    _check_inputs(update, residual)
    tensors: list[EncodedTensor] = []
    new_residual: Arrays = {}
    for name, array in update.items():
        if array.dtype.kind != "f":
            tensors.append(EncodedTensor(name, array.dtype, tuple(array.shape), ValueMode.RAW,
                                         None, np.ascontiguousarray(array).ravel()))
            continue
        corrected = np.asarray(array, dtype=np.float32)
        if residual is not None:
            corrected = corrected + np.asarray(residual[name], dtype=np.float32)
        tensor = _encode_float(name, array.dtype, corrected, spec, rng)
        tensors.append(tensor)
        if tensor.indices is None:
            new_residual[name] = corrected - tensor.sent_values().reshape(corrected.shape)
        else:
            new_residual[name] = corrected.copy()
            new_residual[name].ravel()[tensor.indices] -= tensor.sent_values()
    return encode(tensors), new_residual
