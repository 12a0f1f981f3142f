"""Uncertainty-aware hierarchical mixture-of-experts fusion of per-modality embeddings.

A two-level hierarchical mixture of experts (Jordan & Jacobs 1994, "Hierarchical mixtures of
experts and the EM algorithm", Neural Computation 6(2)). Level 1 mixes ``E`` experts inside
each modality; level 2 mixes the modalities with a gate that sees each modality's embedding
*and* its log-variance, so uncertain modalities can be down-weighted. Missing modalities get
gate weight exactly 0 and exactly zero gradient.
"""

from __future__ import annotations

import torch
from torch import nn


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""Softmax over the last axis restricted to the entries where ``mask`` is ``True``.

    .. math::
        w_m = \frac{[\mathrm{mask}_m]\, e^{s_m}}{\sum_{k} [\mathrm{mask}_k]\, e^{s_k}}

    implemented as ``softmax(where(mask, logits, -inf))``: masked entries get weight exactly
    0 and, through ``torch.where``, exactly zero gradient.

    Args:
        logits: Scores :math:`s`, ``(..., M)``.
        mask: Booleans of the same shape; every row needs at least one ``True``.

    Returns:
        Weights of the same shape, summing to 1 over the last axis.

    Raises:
        ValueError: If the shapes differ, ``mask`` is not boolean or a row is all ``False``.

    """
    if logits.shape != mask.shape:
        raise ValueError(
            f"logits and mask must have the same shape, got {tuple(logits.shape)} and "
            f"{tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must have dtype torch.bool, got {mask.dtype}")
    if not bool(mask.any(dim=-1).all()):
        raise ValueError("mask needs at least one True entry in every row, got an all-False row")
    return torch.softmax(torch.where(mask, logits, float("-inf")), dim=-1)


class ModalityExperts(nn.Module):
    r"""Level 1: a softmax-gated mixture of ``E`` MLP experts for one modality.

    .. math::
        h = \sum_{e=1}^{E} g_e\, f_e(z), \qquad
        g = \mathrm{softmax}\big(V [z; \ell] + c\big), \qquad
        f_e(z) = W_{e,2}\, \mathrm{ReLU}(W_{e,1} z + b_{e,1}) + b_{e,2}

    where :math:`z` is the modality's (sampled) embedding and :math:`\ell` its log-variance.

    Args:
        embed_dim: Embedding size ``D``, ``>= 1``.
        num_experts: Number of experts ``E``, ``>= 1``.

    Raises:
        ValueError: If a size is below 1.

    """

    def __init__(self, embed_dim: int, num_experts: int) -> None:
        super().__init__()
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        self.experts = nn.ModuleList(
            nn.Sequential(
                nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, embed_dim)
            )
            for _ in range(num_experts)
        )
        self.gate = nn.Linear(2 * embed_dim, num_experts)

    def forward(self, z: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """Mix the experts' outputs for ``(B, D)`` inputs into ``(B, D)``."""
        weights = torch.softmax(self.gate(torch.cat([z, logvar], dim=-1)), dim=-1)
        outputs = torch.stack([expert(z) for expert in self.experts], dim=1)
        return (weights.unsqueeze(-1) * outputs).sum(dim=1)


class HierarchicalMoEFusion(nn.Module):
    r"""Two-level mixture of experts over ``M`` modalities with a presence mask.

    Level 1 (:class:`ModalityExperts`, one per modality, submodule ``level1.<m>``) gives
    :math:`h_m`. Level 2 is a gate shared by all modalities,
    :math:`s_m = u^\top \mathrm{ReLU}(A [z_m; \ell_m] + a) + c`, whose input includes the
    log-variance :math:`\ell_m`, so the weights react to each modality's uncertainty:

    .. math::
        \alpha = \mathrm{masked\_softmax}(s, \mathrm{mask}), \qquad
        \mathrm{fused} = \sum_m \alpha_m\, [\mathrm{mask}_m]\, h_m

    Inputs of missing modalities are replaced by zeros with ``torch.where`` before any layer,
    and their level-1 outputs are zeroed the same way, so no NaN/inf can leak and their
    experts receive exactly zero gradient.

    Args:
        num_modalities: Number of modalities ``M``, ``>= 1``.
        embed_dim: Embedding size ``D``, ``>= 1``.
        num_experts: Experts per modality ``E``, ``>= 1``.

    Raises:
        ValueError: If a size is below 1.

    """

    def __init__(self, num_modalities: int, embed_dim: int, num_experts: int) -> None:
        super().__init__()
        for name, value in (
            ("num_modalities", num_modalities),
            ("embed_dim", embed_dim),
            ("num_experts", num_experts),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.num_modalities = num_modalities
        self.embed_dim = embed_dim
        self.level1 = nn.ModuleList(
            ModalityExperts(embed_dim, num_experts) for _ in range(num_modalities)
        )
        self.level2_gate = nn.Sequential(
            nn.Linear(2 * embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1)
        )
        # Start from equal weights over the present modalities (zero logits), so that every
        # encoder gets its share of the gradient before the gate has learned anything.
        nn.init.zeros_(self.level2_gate[-1].weight)
        nn.init.zeros_(self.level2_gate[-1].bias)

    def forward(
        self, z: torch.Tensor, logvar: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse per-modality embeddings.

        Args:
            z: Embeddings, ``(B, M, D)``.
            logvar: Their log-variances, ``(B, M, D)``.
            mask: ``(B, M)`` booleans, ``True`` where the modality is present; every row
                needs at least one ``True``.

        Returns:
            ``(fused, gate_weights)``: ``(B, D)`` fused embeddings and the ``(B, M)`` level-2
            weights (0 for missing modalities, rows sum to 1).

        Raises:
            ValueError: If the shapes do not match ``(B, M, D)`` / ``(B, M)``, ``mask`` is not
                boolean or a row of ``mask`` is all ``False``.

        """
        expected = (z.shape[0], self.num_modalities, self.embed_dim)
        if tuple(z.shape) != expected or tuple(logvar.shape) != expected:
            raise ValueError(
                f"z and logvar must have shape (B, {self.num_modalities}, {self.embed_dim}), "
                f"got {tuple(z.shape)} and {tuple(logvar.shape)}"
            )
        if tuple(mask.shape) != expected[:2]:
            raise ValueError(
                f"mask must have shape (B, {self.num_modalities}) = {expected[:2]}, "
                f"got {tuple(mask.shape)}"
            )
        present = mask.unsqueeze(-1)
        z = torch.where(present, z, 0.0)
        logvar = torch.where(present, logvar, 0.0)
        logits = self.level2_gate(torch.cat([z, logvar], dim=-1)).squeeze(-1)
        gate_weights = masked_softmax(logits, mask)
        mixed = torch.where(present, self.each_alone(z, logvar), 0.0)
        fused = (gate_weights.unsqueeze(-1) * mixed).sum(dim=1)
        return fused, gate_weights

    def each_alone(self, z: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """``(B, M, D)``: what :meth:`forward` fuses for each sample with each modality alone.

        With one modality :math:`m` present its level-2 weight is 1, so the fused embedding is
        its level-1 output :math:`h_m`; the gate is not needed. Entries of modalities a sample
        lacks are computed all the same and must be ignored by the caller.
        """
        return torch.stack(
            [experts(z[:, m], logvar[:, m]) for m, experts in enumerate(self.level1)], dim=1)
