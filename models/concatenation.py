"""Zero-filled concatenation: the missing-modality baseline of FedMultimodal.

FedMultimodal (Feng et al. 2023, "FedMultimodal: A Benchmark for Multimodal Federated
Learning", KDD) fills a missing modality's input with zeros and concatenates every modality's
embedding before the classifier. :class:`ZeroFilledConcatenation` is that fusion, with the same
interface as :class:`~fedmosaic.models.fusion.HierarchicalMoEFusion`, so the two can be
compared inside one model and one training loop (``fusion=concat``).
"""

from __future__ import annotations

import torch
from torch import nn


class ZeroFilledConcatenation(nn.Module):
    r"""``fused = ReLU(W [z_1; …; z_M] + b)``, every modality included whether present or not.

    The caller zero-fills the inputs of missing modalities before their encoders
    (:class:`~fedmosaic.models.multimodal.MultimodalClassifier` with ``fusion="concat"``), so
    a missing modality contributes its encoder's response to zeros, exactly as in the
    baseline. The returned weights are uniform over the present modalities (reported, never
    used in the fusion).

    Args:
        num_modalities: Number of modalities ``M``, ``>= 1``.
        embed_dim: Embedding size ``D``, ``>= 1``.

    Raises:
        ValueError: If a size is below 1.

    """

    def __init__(self, num_modalities: int, embed_dim: int) -> None:
        super().__init__()
        if num_modalities < 1 or embed_dim < 1:
            raise ValueError(f"num_modalities and embed_dim must be >= 1, got {num_modalities} "
                             f"and {embed_dim}")
        self.num_modalities = num_modalities
        self.embed_dim = embed_dim
        self.project = nn.Sequential(nn.Linear(num_modalities * embed_dim, embed_dim), nn.ReLU())

    def forward(self, z: torch.Tensor, logvar: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fused (B, D), weights (B, M))`` from ``z`` of shape ``(B, M, D)``.

        Raises:
            ValueError: If ``z`` is not ``(B, M, D)`` or ``mask`` not ``(B, M)``.

        """
        expected = (z.shape[0], self.num_modalities, self.embed_dim)
        if tuple(z.shape) != expected or tuple(mask.shape) != expected[:2]:
            raise ValueError(f"z must be (B, {self.num_modalities}, {self.embed_dim}) and mask "
                             f"(B, {self.num_modalities}), got {tuple(z.shape)} and "
                             f"{tuple(mask.shape)}")
        weights = mask.float() / mask.float().sum(dim=1, keepdim=True).clamp(min=1.0)
        return self.project(z.flatten(start_dim=1)), weights
