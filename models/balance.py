r"""Load balancing of the cross-modal gate, so that no modality's encoder is starved.

A softmax gate trained only by the task loss tends to collapse onto the modality that is
useful first; the other encoders then receive gradients scaled by their near-zero gate
weights and stop learning (observed here: the camera and audio encoders staying at chance).
Shazeer et al. 2017, "Outrageously Large Neural Networks: The Sparsely-Gated
Mixture-of-Experts Layer" (arXiv:1701.06538), counter this with an *importance* loss. With a
presence mask, the importance of modality :math:`m` in a batch is its mean gate weight over
the samples that hold it,

.. math::
    I_m = \frac{\sum_b \alpha_{bm}}{\sum_b \mathrm{mask}_{bm}},

and the loss is the squared coefficient of variation over the modalities present in the
batch, :math:`\mathrm{CV}(I)^2 = \mathrm{Var}(I) / \mathrm{mean}(I)^2`: zero when every
present modality gets the same share, growing as the gate concentrates. Modalities absent
from the whole batch are left out, so they receive no gradient from it.
"""

from __future__ import annotations

import torch


def gate_balance_loss(gate_weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation of the per-modality gate importance (module doc).

    Args:
        gate_weights: ``(B, M)`` level-2 gate weights, 0 where a modality is missing.
        mask: ``(B, M)`` booleans, ``True`` where the modality is present.

    Returns:
        A scalar ``>= 0``; 0 (attached to the graph) when fewer than two modalities occur.

    Raises:
        ValueError: If the shapes differ or ``mask`` is not boolean.

    """
    if gate_weights.shape != mask.shape or gate_weights.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(
            "gate_weights and mask must be (B, M) tensors, mask boolean; got "
            f"{tuple(gate_weights.shape)} {gate_weights.dtype} and {tuple(mask.shape)} "
            f"{mask.dtype}"
        )
    counts = mask.sum(dim=0)
    occurring = counts > 0
    if int(occurring.sum()) < 2:
        return gate_weights.sum() * 0.0
    importance = gate_weights.sum(dim=0)[occurring] / counts[occurring]
    return importance.var(unbiased=False) / importance.mean().pow(2)
