r"""Which parameters a device keeps to itself under each personalization, and training only them.

A personalized federation shares some parameters and keeps others on each device; the kept
ones never leave it. The split, by ``state_dict`` key of
:class:`~fedmosaic.models.multimodal.MultimodalClassifier`:

============  ============================================================================
``none``      nothing is personal
``fedbn``     every normalisation layer's affine parameters (FedBN, Li et al. 2021,
              "FedBN: Federated Learning on Non-IID Features via Local Batch
              Normalization", ICLR; our encoders normalise with GroupNorm)
``fedrep``    the classifier head (FedRep, Collins et al. 2021, "Exploiting Shared
              Representations for Personalized Federated Learning", ICML): each round the
              device first fits its head on the frozen shared body, then trains the body
              with its head frozen (under DP-SGD both in the same steps, as FedPer does)
``local-gate``  the mixture of experts' routing: the level-2 gate and every level-1 gate
              (the experts stay shared)
``ditto``     nothing *inside* the shared model: Ditto (Li et al. 2021, "Ditto: Fair and
              Robust Federated Learning Through Personalization", ICML) keeps a whole second
              model :math:`v_k` per device, trained on
              :math:`F_k(v) + \tfrac{\lambda}{2}\lVert v - w^t\rVert^2`
============  ============================================================================
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from fedmosaic.models.multimodal import MultimodalClassifier

FULL_MODEL = ("ditto",)
"""Personalizations that keep a whole personal model rather than a part of the shared one."""


def personal_keys(model: MultimodalClassifier, personalization: str) -> frozenset[str]:
    """The ``state_dict`` keys ``personalization`` keeps on the device (module docstring).

    Raises:
        ValueError: If ``personalization`` is unknown, or ``local-gate`` meets a model
            without a mixture of experts (``fusion=concat``).

    """
    if personalization in ("none", *FULL_MODEL):
        return frozenset()
    if personalization == "fedbn":
        norms = frozenset(f"{name}.{key}" for name, module in model.named_modules()
                          if isinstance(module, nn.GroupNorm)
                          for key in module.state_dict())
        if not norms:
            raise ValueError("personalization=fedbn keeps the normalisation layers; this model "
                             "has none (sensor-encoder=features on sensor-only data): use "
                             "fedrep or local-gate")
        return norms
    if personalization == "fedrep":
        return frozenset(key for key in model.state_dict() if key.startswith("classifier."))
    if personalization == "local-gate":
        if model.zero_fill:
            raise ValueError("personalization=local-gate keeps the mixture of experts' routing; "
                             "fusion=concat has none: use fusion=moe")
        return frozenset(key for key in model.state_dict()
                         if key.startswith("fusion.level2_gate.")
                         or (key.startswith("fusion.level1.") and ".gate." in key))
    raise ValueError(f"personalization must be one of none, fedbn, fedrep, ditto, local-gate, "
                     f"got {personalization!r}")


@contextlib.contextmanager
def training_only(model: nn.Module, keys: frozenset[str]) -> Iterator[None]:
    """Within the block only the parameters named in ``keys`` take gradients.

    The others are frozen (``requires_grad=False``: Adam and Opacus skip them) and unfrozen
    on exit, whatever happens inside.
    """
    frozen = [param for name, param in model.named_parameters()
              if name not in keys and param.requires_grad]
    for param in frozen:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param in frozen:
            param.requires_grad_(True)
