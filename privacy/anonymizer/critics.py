r"""The anonymizer's critics: what the generator is trained against, and with.

Every critic is a small MLP over a *view* of a sample (:func:`modality_view`): a float
modality's flattened values, or for log tokens the bag of kept tokens
:math:`\frac{1}{L}\sum_t k_t\, \mathrm{onehot}(x_t)` (so a dropped token is invisible and the
keep weights :math:`k_t` carry the gradient); a missing modality's view is zeros.

* a **realism discriminator** per modality, real against anonymized (Goodfellow et al. 2014,
  arXiv:1406.2661), which keeps the output looking like data of that modality;
* the **sensitive-attribute adversary**, which predicts the protected attribute (the subject,
  or the site) from all modalities together (Edwards & Storkey 2016, "Censoring
  Representations with an Adversary", arXiv:1511.05897);
* the **utility head**, which predicts the task label and keeps the task learnable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fedmosaic.data.modality import ModalityKind, ModalitySpec

HIDDEN = 128
"""Width of every critic's hidden layer."""


def view_size(spec: ModalitySpec) -> int:
    """Length of :func:`modality_view` for ``spec``."""
    return spec.vocab_size if spec.kind == ModalityKind.TOKENS else math.prod(spec.shape)


def modality_view(spec: ModalitySpec, values: torch.Tensor,
                  keep: torch.Tensor | None = None) -> torch.Tensor:
    """The ``(B, view_size(spec))`` float view of one modality (module docstring)."""
    if spec.kind != ModalityKind.TOKENS:
        return values.reshape(values.shape[0], -1).float()
    weights = keep if keep is not None else torch.ones(values.shape, dtype=torch.float32)
    one_hot = F.one_hot(values.long(), spec.vocab_size).float()
    return (one_hot * weights.unsqueeze(-1)).mean(dim=1)


def sample_view(specs: tuple[ModalitySpec, ...], inputs: dict[str, torch.Tensor],
                mask: torch.Tensor, keep: dict[str, torch.Tensor] | None = None
                ) -> torch.Tensor:
    """All modalities' views side by side, then the presence mask."""
    keep = keep or {}
    views = [modality_view(spec, inputs[spec.name], keep.get(spec.name))
             * mask[:, j:j + 1].float() for j, spec in enumerate(specs)]
    return torch.cat([*views, mask.float()], dim=1)


class Critic(nn.Module):
    """``Linear → ReLU → Linear → ReLU → Linear``: ``in_features`` to ``out_features`` logits."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, HIDDEN), nn.ReLU(),
                                 nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                                 nn.Linear(HIDDEN, out_features))

    def forward(self, view: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of views."""
        return self.net(view)


class AnonymizerCritics(nn.Module):
    """The realism discriminators, the attribute adversary and the utility head of ``specs``.

    Args:
        specs: The modalities.
        num_attributes: Values of the protected attribute (subjects, sites).
        num_classes: Task classes.
    """

    def __init__(self, specs: tuple[ModalitySpec, ...], num_attributes: int,
                 num_classes: int) -> None:
        super().__init__()
        self.specs = specs
        total = sum(view_size(s) for s in specs) + len(specs)
        self.realism = nn.ModuleDict({s.name: Critic(view_size(s), 1) for s in specs})
        self.adversary = Critic(total, num_attributes)
        self.utility = Critic(total, num_classes)
