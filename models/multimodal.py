"""The full multimodal classifier: encoders, probabilistic heads, HMoE fusion, classifier."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedmosaic.data.modality import ModalitySpec
from fedmosaic.models.balance import gate_balance_loss
from fedmosaic.models.concatenation import ZeroFilledConcatenation
from fedmosaic.models.consistency import cross_modal_consistency
from fedmosaic.models.encoders import build_encoder
from fedmosaic.models.fusion import HierarchicalMoEFusion
from fedmosaic.models.initialisation import he_initialise
from fedmosaic.models.probabilistic import ProbabilisticHead, gaussian_kl


@dataclass(frozen=True)
class ModelOutput:
    """Everything one forward pass of :class:`MultimodalClassifier` produces.

    Attributes:
        logits: ``(B, C)`` class scores.
        mus: ``(B, M, D)`` embedding means, 0 for missing modalities.
        logvars: ``(B, M, D)`` embedding log-variances, 0 for missing modalities.
        gate_weights: ``(B, M)`` level-2 fusion weights, 0 for missing modalities.
        kl: Scalar, mean over samples of the mean KL over that sample's present modalities.
        consistency: Scalar cross-modal consistency loss
            (:func:`~fedmosaic.models.consistency.cross_modal_consistency`).
        balance: Scalar load-balancing loss of the cross-modal gate
            (:func:`~fedmosaic.models.balance.gate_balance_loss`).
        modality_logits: ``(B, M, C)``, with ``views=True`` only: column ``m`` the logits of
            each sample with modality ``m`` alone (:mod:`~fedmosaic.models.unimodal`).

    """

    logits: torch.Tensor
    mus: torch.Tensor
    logvars: torch.Tensor
    gate_weights: torch.Tensor
    kl: torch.Tensor
    consistency: torch.Tensor
    balance: torch.Tensor
    modality_logits: torch.Tensor | None = None


class MultimodalClassifier(nn.Module):
    r"""Probabilistic multimodal classifier robust to missing modalities.

    For each modality :math:`m` (in ``specs`` order) an encoder gives features
    :math:`h_m`, a :class:`~fedmosaic.models.probabilistic.ProbabilisticHead` gives
    :math:`(z_m, \mu_m, \ell_m)`, a
    :class:`~fedmosaic.models.fusion.HierarchicalMoEFusion` fuses the present modalities and
    an MLP classifies the result. The KL term is

    .. math::
        \mathrm{KL} = \frac{1}{B} \sum_i \frac{1}{|S_i|} \sum_{m \in S_i}
        \mathrm{KL}\big(\mathcal{N}(\mu_{im}, e^{\ell_{im}}) \,\|\, \mathcal{N}(0, I)\big)

    with :math:`S_i` the present modalities of sample :math:`i`. Every per-modality output is
    passed through ``torch.where(mask, ., 0)``, so a missing modality's encoder, head and
    level-1 experts get exactly zero gradient from every loss term (CE, KL, consistency).

    Parameter naming (for modality-aware aggregation): the ``state_dict`` keys of modality
    ``name`` (at position ``m`` of ``specs``) start with ``encoders.<name>.``,
    ``heads.<name>.`` and ``fusion.level1.<m>.``; :meth:`modality_parameter_prefixes` returns
    them. All other keys (``fusion.level2_gate.``, ``classifier.``) are shared by all
    modalities.

    Args:
        specs: The modalities, in the column order of the presence mask.
        num_classes: Number of classes ``C``, ``>= 2``.
        embed_dim: Embedding size ``D``, ``>= 1``.
        num_experts: Level-1 experts per modality, ``>= 1``.
        hidden_dim: Encoder feature size, ``>= 1``.
        sensor_encoder: Encoder of sensor modalities, ``"tcn"`` or ``"features"``
            (:func:`~fedmosaic.models.encoders.build_encoder`).
        fusion: ``"moe"`` (the hierarchical mixture above) or ``"concat"``: the baseline
            :class:`~fedmosaic.models.concatenation.ZeroFilledConcatenation`, where a missing
            modality's *input* is zero-filled and its embedding enters the fusion (its
            encoder then does get gradient from the zeros; ``fusion.level1`` does not exist).

    Raises:
        ValueError: If ``specs`` is empty or has duplicate names, a size is out of range or
            ``fusion`` is unknown.

    """

    def __init__(
        self,
        specs: tuple[ModalitySpec, ...],
        num_classes: int,
        embed_dim: int = 32,
        num_experts: int = 2,
        hidden_dim: int = 64,
        sensor_encoder: str = "tcn",
        fusion: str = "moe",
    ) -> None:
        super().__init__()
        names = [spec.name for spec in specs]
        if not names:
            raise ValueError("specs must contain at least one ModalitySpec, got none")
        if len(set(names)) != len(names):
            raise ValueError(f"specs must have unique names, got {names}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.specs = tuple(specs)
        self.encoders = nn.ModuleDict(
            {s.name: build_encoder(s, hidden_dim, sensor_encoder) for s in specs}
        )
        self.heads = nn.ModuleDict(
            {s.name: ProbabilisticHead(hidden_dim, embed_dim) for s in specs}
        )
        if fusion not in ("moe", "concat"):
            raise ValueError(f"fusion must be 'moe' or 'concat', got {fusion!r}")
        self.zero_fill = fusion == "concat"
        self.fusion: nn.Module = (ZeroFilledConcatenation(len(specs), embed_dim)
                                  if self.zero_fill
                                  else HierarchicalMoEFusion(len(specs), embed_dim, num_experts))
        self.classifier = nn.Sequential(
            nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, num_classes)
        )
        # He-normal linear layers (models/initialisation.py), except the level-2 gate's
        # output layer, which starts at zero so the modalities start equally weighted.
        fused_layers = ((self.fusion.project,) if self.zero_fill
                        else (self.fusion.level1, self.fusion.level2_gate[0]))
        he_initialise(self.encoders, self.heads, *fused_layers, self.classifier)

    def modality_parameter_prefixes(self, modality_name: str) -> tuple[str, str, str]:
        """Return the ``state_dict`` key prefixes of the parameters of one modality.

        Args:
            modality_name: A name from ``specs``.

        Returns:
            ``("encoders.<name>.", "heads.<name>.", "fusion.level1.<m>.")``.

        Raises:
            ValueError: If ``modality_name`` is not in ``specs``.

        """
        names = [spec.name for spec in self.specs]
        if modality_name not in names:
            raise ValueError(f"modality_name must be one of {names}, got {modality_name!r}")
        index = names.index(modality_name)
        return (f"encoders.{modality_name}.", f"heads.{modality_name}.", f"fusion.level1.{index}.")

    def forward(self, inputs: dict[str, torch.Tensor], mask: torch.Tensor,
                views: bool = False) -> ModelOutput:
        """Classify a batch.

        Args:
            inputs: ``{name: (B, *spec.shape)}`` for every modality of ``specs`` (float32,
                int64 for tokens); missing modalities' values are ignored.
            mask: ``(B, M)`` booleans, column ``m`` is ``specs[m]``; every row needs at least
                one ``True``.
            views: Also classify each sample with each modality alone
                (``ModelOutput.modality_logits``), as the model does when the others are
                missing: the fusion sees only that modality (under ``concat`` the others'
                inputs are zeros, one more encoder pass each).

        Returns:
            The :class:`ModelOutput`.

        Raises:
            ValueError: If a modality is missing from ``inputs``, or ``mask`` is not a boolean
                ``(B, M)`` tensor with a ``True`` in every row.

        """
        names = [spec.name for spec in self.specs]
        if sorted(inputs) != sorted(names):
            raise ValueError(f"inputs must have modalities {names}, got {sorted(inputs)}")
        if mask.dtype != torch.bool or mask.dim() != 2 or mask.shape[1] != len(names):
            raise ValueError(
                f"mask must be bool of shape (B, {len(names)}), got {mask.dtype} "
                f"{tuple(mask.shape)}"
            )
        zs, mus, logvars = [], [], []
        for m, name in enumerate(names):
            present = mask[:, m].unsqueeze(-1)
            given = inputs[name]
            if self.zero_fill:  # the baseline: a missing modality's input is zeros
                given = torch.where(mask[:, m].view(-1, *[1] * (given.dim() - 1)), given,
                                    torch.zeros((), dtype=given.dtype))
            z, mu, logvar = self.heads[name](self.encoders[name](given))
            zs.append(z if self.zero_fill else torch.where(present, z, 0.0))
            mus.append(torch.where(present, mu, 0.0))
            logvars.append(torch.where(present, logvar, 0.0))
        z_all = torch.stack(zs, dim=1)
        mu_all = torch.stack(mus, dim=1)
        logvar_all = torch.stack(logvars, dim=1)
        fused, gate_weights = self.fusion(z_all, logvar_all, mask)
        modality_logits = (self._unimodal_logits(inputs, z_all, logvar_all, mask)
                           if views else None)
        kl_per_modality = torch.where(mask, gaussian_kl(mu_all, logvar_all), 0.0)
        kl = (kl_per_modality.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
        return ModelOutput(
            logits=self.classifier(fused),
            mus=mu_all,
            logvars=logvar_all,
            gate_weights=gate_weights,
            kl=kl,
            consistency=cross_modal_consistency(mu_all, mask),
            balance=gate_balance_loss(gate_weights, mask),
            modality_logits=modality_logits,
        )

    def _unimodal_logits(self, inputs: dict[str, torch.Tensor], z_all: torch.Tensor,
                         logvar_all: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, M, C)``: every sample classified with each modality alone (see ``forward``)."""
        if not self.zero_fill:  # the mixture: each modality's level-1 output, one batched pass
            return self.classifier(self.fusion.each_alone(z_all, logvar_all))
        # concatenation: the others enter as their encoders' response to zeros
        absent = torch.stack([self.heads[s.name](self.encoders[s.name](
            torch.zeros_like(inputs[s.name])))[0] for s in self.specs], dim=1)
        alone = torch.eye(len(self.specs), dtype=torch.bool, device=mask.device)
        return torch.stack(
            [self.classifier(self.fusion(torch.where(only.view(1, -1, 1), z_all, absent),
                                         logvar_all, only.expand_as(mask))[0])
             for only in alone], dim=1)
