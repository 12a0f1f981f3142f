"""Cross-modal consistency: present modalities of one sample should agree in embedding space.

Cross-modal alignment pulls the embeddings of the same sample's modalities together; CLIP
(Radford et al. 2021, ICML) does so contrastively, here the simpler cosine-agreement form is
used, which needs no negatives and works per sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_modal_consistency(mus: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""Mean cosine disagreement between the present modalities of each sample.

    For sample :math:`i` with present pairs :math:`P_i = \{(a, b) : a < b,\
    \mathrm{mask}_{ia} \wedge \mathrm{mask}_{ib}\}`,

    .. math::
        c_i = \frac{1}{|P_i|} \sum_{(a,b) \in P_i} \big(1 - \cos(\mu_{ia}, \mu_{ib})\big),
        \qquad
        \mathcal{L} = \frac{1}{B} \sum_{i \in I} c_i, \quad I = \{i : |P_i| > 0\}.

    Samples with fewer than two present modalities contribute nothing; if no sample has a
    pair the result is ``mus.sum() * 0`` (zero, with the autograd graph intact). Dividing by
    the batch size :math:`B` rather than by :math:`|I|` keeps each sample's gradient its own
    (with :math:`|I|` it would scale with how many *other* samples have a pair), as DP-SGD's
    per-sample clipping requires. Missing
    modalities' entries are selected away with ``torch.where`` and get exactly zero gradient.
    The value lies in ``[0, 2]``.

    Args:
        mus: Embedding means, ``(B, M, D)``.
        mask: ``(B, M)`` booleans, ``True`` where the modality is present.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: If ``mus`` is not 3-D, ``mask`` is not boolean or its shape is not
            ``(B, M)``.

    """
    if mus.dim() != 3:
        raise ValueError(f"mus must have shape (B, M, D), got {tuple(mus.shape)}")
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(mus.shape[:2]):
        raise ValueError(
            f"mask must be bool of shape {tuple(mus.shape[:2])}, got {mask.dtype} "
            f"{tuple(mask.shape)}"
        )
    num_modalities = mus.shape[1]
    unit = F.normalize(torch.where(mask.unsqueeze(-1), mus, 0.0), dim=-1)
    cosine = unit @ unit.transpose(1, 2)
    upper = torch.ones(num_modalities, num_modalities, dtype=torch.bool, device=mus.device)
    pairs = mask.unsqueeze(2) & mask.unsqueeze(1) & upper.triu(diagonal=1)
    num_pairs = pairs.sum(dim=(1, 2))
    has_pair = num_pairs > 0
    if not bool(has_pair.any()):
        return mus.sum() * 0.0
    disagreement = torch.where(pairs, 1.0 - cosine, 0.0).sum(dim=(1, 2))
    per_sample = disagreement / num_pairs.clamp(min=1).to(mus.dtype)
    return torch.where(has_pair, per_sample, 0.0).sum() / mus.shape[0]
