"""Which parameters devices train under ``fine-tune``.

``all`` trains everything; ``top`` the probabilistic heads, the fusion and the classifier (the
encoders stay as the server sent them, e.g. pretrained on public data); ``head`` the classifier
only. DP-SGD's noise has norm σC·sqrt(d)/B over the d trained parameters, so fewer trained
parameters mean less noise per step for the same ε (Tramèr & Boneh 2021).
"""

from __future__ import annotations

from torch import nn

FINE_TUNED_PREFIXES = {"all": ("",), "top": ("heads.", "fusion.", "classifier."),
                       "head": ("classifier.",)}
"""Per ``fine-tune`` value, the parameter-name prefixes devices train."""


def fine_tuned_parameters(model: nn.Module, fine_tune: str) -> frozenset[str]:
    """Names of ``model``'s parameters that devices train under ``fine_tune``."""
    prefixes = FINE_TUNED_PREFIXES[fine_tune]
    return frozenset(name for name, _ in model.named_parameters() if name.startswith(prefixes))
