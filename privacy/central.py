r"""Central (user-level) DP around any strategy, with Flower's fixed-clipping wrappers.

McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models" (ICLR,
arXiv:1710.06963): each round, every sampled device's update :math:`\Delta_k` is clipped to norm
:math:`C` (on the server, ``central-dp=server``, Flower's
``DifferentialPrivacyServerSideFixedClipping``; or on the device, ``central-dp=client``,
``DifferentialPrivacyClientSideFixedClipping`` with :func:`clip_model_update` in the ClientApp), the
strategy aggregates, and the server adds :math:`\mathcal{N}(0, (zC/m)^2 I)` for :math:`m`
sampled devices.

Accounting (:func:`round_noise_multiplier`, :func:`central_epsilon`): with aggregation weights
:math:`w_k` (normalised to sum 1) one device's clipped update moves the aggregate by at most
:math:`C \max_k w_k`, so a round is a Gaussian mechanism with noise multiplier
:math:`z_{\mathrm{eff}} = (zC/m) / (C \max_k w_k) = z / (m \max_k w_k)` (:math:`= z` for equal
weights). Rounds compose under RDP without sampling amplification (Flower samples a fixed
number of devices, not Poisson), so the reported ε is an upper bound for user-level DP.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, compute_clip_model_update

from fedmosaic.config import CENTRAL_DP_MODES
from fedmosaic.privacy.accounting import Segment, epsilon_spent

WRAPPERS = {"server": DifferentialPrivacyServerSideFixedClipping,
            "client": DifferentialPrivacyClientSideFixedClipping}


def wrap_central_dp(strategy: Strategy, mode: str, noise_multiplier: float,
                    clipping_norm: float, num_sampled_clients: int) -> Strategy:
    """``strategy`` inside Flower's fixed-clipping wrapper for ``mode`` (``none``: unchanged).

    Raises:
        ValueError: If ``mode`` is not one of :data:`~fedmosaic.config.CENTRAL_DP_MODES`
            or ``num_sampled_clients < 1``.

    """
    if mode not in CENTRAL_DP_MODES:
        raise ValueError(f"central-dp must be one of {CENTRAL_DP_MODES}, got {mode!r}")
    if num_sampled_clients < 1:
        raise ValueError(f"num_sampled_clients must be >= 1, got {num_sampled_clients}")
    if mode == "none":
        return strategy
    return WRAPPERS[mode](strategy, noise_multiplier=noise_multiplier,
                          clipping_norm=clipping_norm, num_sampled_clients=num_sampled_clients)


def round_noise_multiplier(noise_multiplier: float, num_sampled_clients: int,
                           weights: Sequence[float]) -> float:
    r"""Effective noise multiplier of one round, :math:`z / (m \max_k w_k)` (module docstring).

    Args:
        noise_multiplier: The wrapper's :math:`z > 0`.
        num_sampled_clients: :math:`m \geq 1`, the wrapper's divisor of the noise.
        weights: The aggregation weights of the round's updates (e.g. ``num-examples``).

    Raises:
        ValueError: If an argument is out of range or ``weights`` is empty or not positive.

    """
    if not 0.0 < noise_multiplier < math.inf:
        raise ValueError(f"noise_multiplier must be finite and > 0, got {noise_multiplier}")
    if num_sampled_clients < 1:
        raise ValueError(f"num_sampled_clients must be >= 1, got {num_sampled_clients}")
    if len(weights) == 0 or min(weights) <= 0:
        raise ValueError(f"weights must be non-empty and > 0, got {list(weights)}")
    largest_share = max(weights) / sum(weights)
    return noise_multiplier / (num_sampled_clients * largest_share)


def central_epsilon(round_multipliers: Sequence[float], delta: float) -> float:
    """ε at ``delta`` of the released rounds, each a Gaussian mechanism without sampling."""
    return epsilon_spent([Segment(z, 1.0, 1) for z in round_multipliers], delta, "rdp")


def clip_model_update(model: torch.nn.Module, global_arrays: ArrayRecord,
                      config: Mapping[str, Any]) -> None:
    """Device-side clipping for ``central-dp=client``: ``w ← w_g + clip(w - w_g, C)``, in place.

    ``C`` is the ``clipping_norm`` Flower's client-side wrapper puts into the training config;
    the norm is over all arrays of the state dict together.

    Raises:
        ValueError: If the config has no positive ``clipping_norm``.

    """
    clipping_norm = config.get(KEY_CLIPPING_NORM)
    if clipping_norm is None or not float(clipping_norm) > 0.0:
        raise ValueError(f"central-dp=client needs a training config {KEY_CLIPPING_NORM!r} > 0 "
                         f"(set by DifferentialPrivacyClientSideFixedClipping), got "
                         f"{clipping_norm!r}")
    state = model.state_dict()
    local = [tensor.detach().cpu().numpy().copy() for tensor in state.values()]
    compute_clip_model_update(local, global_arrays.to_numpy_ndarrays(), float(clipping_norm))
    model.load_state_dict({key: torch.from_numpy(np.asarray(array))
                           for key, array in zip(state, local, strict=True)})
