"""Validation of the run config's privacy keys (DP-SGD, central DP, resume), without Opacus.

``config.py`` calls :func:`check_privacy_settings` from ``RunConfig.__post_init__``; the
allowed values live here so that validating a config does not import Opacus.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedmosaic.config import RunConfig

ACCOUNTANTS = ("rdp", "prv")
"""Accountants a run may select (``dp-accountant``)."""
GRAD_SAMPLE_MODES = ("hooks", "functorch")
"""Opacus per-sample-gradient modes that support the multimodal model's dict inputs."""
CENTRAL_DP_MODES = ("none", "server", "client")
"""``central-dp``: none, or Flower's server-side or client-side fixed-clipping wrapper."""


def check_privacy_settings(config: RunConfig) -> None:
    """Raise ``ValueError`` naming the key and its allowed range for a bad privacy setting."""
    if not 0.0 < config.epsilon < math.inf:
        raise ValueError(f"epsilon must be finite and > 0, got {config.epsilon}")
    if not 0.0 < config.delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1), got {config.delta}")
    for name in ("max_grad_norm", "central_noise_multiplier", "central_clipping_norm"):
        value = getattr(config, name)
        if not 0.0 < value < math.inf:
            raise ValueError(f"{name.replace('_', '-')} must be finite and > 0, got {value}")
    if config.dp_accountant not in ACCOUNTANTS:
        raise ValueError(f"dp-accountant must be one of {ACCOUNTANTS}, got "
                         f"{config.dp_accountant!r}")
    if config.grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"grad-sample-mode must be one of {GRAD_SAMPLE_MODES}, got "
                         f"{config.grad_sample_mode!r}")
    if config.central_dp not in CENTRAL_DP_MODES:
        raise ValueError(f"central-dp must be one of {CENTRAL_DP_MODES}, got "
                         f"{config.central_dp!r}")
