r"""Unimodal views: each modality classified alone by the shared fusion and classifier.

Gradient Blending (Wang, Tran & Feiszli 2020, "What Makes Training Multi-Modal Classification
Networks Hard?", CVPR) adds each modality's own classification loss to the multimodal one, so
no modality's path is starved by the one that is easiest to learn. Here the unimodal view of
modality :math:`m` is the model's own prediction when only :math:`m` is present: the same
fusion with the presence mask cleared except for :math:`m`, then the same classifier. Under
the hierarchical mixture that is :math:`\mathrm{classifier}(h_m)`, its level-2 weight being 1,
so the term trains exactly the path a device predicts with when its other sensors are gone.
For sample :math:`i` with present modalities :math:`S_i`, :math:`|S_i| \ge 2`,

.. math::
    u_i = \frac{1}{|S_i|} \sum_{m \in S_i} \mathrm{CE}\big(f_m(x_i), y_i\big), \qquad
    \mathcal{L}_{\mathrm{unimodal}} = \frac{1}{B} \sum_{i : |S_i| \ge 2} u_i

(a sample with one modality already trains that view through the main term). The sum over
samples divided by the batch size keeps it a per-sample mean, as DP-SGD's per-sample
gradients need.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def unimodal_loss(modality_logits: torch.Tensor, mask: torch.Tensor,
                  labels: torch.Tensor) -> torch.Tensor:
    """The unimodal views' cross-entropy (module docstring).

    Args:
        modality_logits: ``(B, M, C)``: row ``i``, column ``m`` the logits of sample ``i``
            with modality ``m`` alone.
        mask: ``(B, M)`` booleans, ``True`` where the modality is present.
        labels: ``(B,)`` class ids.

    Returns:
        A scalar tensor; zero (graph intact) when no sample has two modalities. Views of
        missing modalities get exactly zero gradient.

    Raises:
        ValueError: If the shapes do not agree.

    """
    if (modality_logits.dim() != 3 or tuple(mask.shape) != tuple(modality_logits.shape[:2])
            or tuple(labels.shape) != tuple(modality_logits.shape[:1])):
        raise ValueError(
            f"modality_logits must be (B, M, C) with mask (B, M) and labels (B,), got "
            f"{tuple(modality_logits.shape)}, {tuple(mask.shape)} and {tuple(labels.shape)}")
    batch, num_modalities, num_classes = modality_logits.shape
    per_view = F.cross_entropy(modality_logits.reshape(-1, num_classes),
                               labels.repeat_interleave(num_modalities),
                               reduction="none").view(batch, num_modalities)
    present = mask.sum(dim=1)
    per_sample = torch.where(mask, per_view, 0.0).sum(dim=1) / present.clamp(min=1)
    return torch.where(present >= 2, per_sample, 0.0).sum() / max(batch, 1)
