r"""Privacy accounting of DP-SGD: noise calibration and ε spent, as pure functions.

A client's DP-SGD run is a composition of *subsampled Gaussian* steps: each step samples every
example independently with probability :math:`q` (Poisson sampling), clips per-example
gradients to norm :math:`C` and adds :math:`\mathcal{N}(0, \sigma^2 C^2 I)`. A *history* is the
list of ``(σ, q, steps)`` segments a client has run; its ε at a given δ comes from one of
Opacus's accountants:

* ``rdp`` — Rényi DP of the sampled Gaussian mechanism (Mironov 2017, "Rényi Differential
  Privacy", arXiv:1702.07476; Mironov, Talwar & Zhang 2019, arXiv:1908.10530), composed
  additively per order :math:`\alpha` and converted with
  :math:`\varepsilon = \min_\alpha \mathrm{RDP}(\alpha) + \log((\alpha-1)/\alpha)
  - (\log \delta + \log \alpha)/(\alpha-1)` (Balle et al. 2020);
* ``prv`` — the privacy-loss-random-variable accountant (Gopi, Lee & Wutschitz 2021,
  "Numerical Composition of Differential Privacy", arXiv:2106.02848), tighter than RDP;
* ``filter`` — the same Rényi DP at the fixed orders of a Rényi privacy filter, converted by
  :func:`~fedmosaic.privacy.renyi_filter.filter_epsilon`: valid when each round's σ is chosen
  adaptively (the controller's runs), looser than ``rdp`` for a fixed plan.

The noise multiplier is calibrated once for a whole run's planned steps, so that the run's
total ε meets the budget (:func:`calibrate_noise_multiplier`; again only if the budget changes).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis

from fedmosaic.config import ACCOUNTANTS
from fedmosaic.privacy.renyi_filter import FILTER_ORDERS, filter_epsilon

MAX_NOISE_MULTIPLIER = 1e4
"""The largest σ calibration considers (a round at σ = 10⁴ carries no signal)."""
RDP_ORDERS = tuple(RDPAccountant.DEFAULT_ALPHAS)
"""Rényi orders α of the RDP accountant (Opacus's defaults, also ``dp-accounting``'s)."""



@dataclass(frozen=True)
class Segment:
    """A stretch of identical DP-SGD steps: ``steps`` steps at σ and sampling rate q.

    Raises:
        ValueError: If ``noise_multiplier <= 0``, ``sample_rate`` is outside ``(0, 1]`` or
            ``steps < 1``.

    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not 0.0 < self.noise_multiplier < math.inf:
            raise ValueError(f"noise_multiplier must be finite and > 0, got "
                             f"{self.noise_multiplier}")
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(f"sample_rate must lie in (0, 1], got {self.sample_rate}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


def check_accountant(accountant: str) -> None:
    """Raise ``ValueError`` unless ``accountant`` is one of :data:`ACCOUNTANTS`."""
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"dp-accountant must be one of {ACCOUNTANTS}, got {accountant!r}")


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")


def epsilon_spent(history: Sequence[Segment], delta: float, accountant: str = "rdp") -> float:
    """ε of the composition of ``history`` at ``delta`` (0.0 for an empty history).

    Args:
        history: The segments run so far, in order.
        delta: Target δ in ``(0, 1)``.
        accountant: ``rdp``, ``prv`` or ``filter``.

    Returns:
        The ε the whole history has spent.

    Raises:
        ValueError: If ``delta`` or ``accountant`` is out of range.

    """
    check_accountant(accountant)
    _check_delta(delta)
    if not history:
        return 0.0
    if accountant == "filter":
        return filter_epsilon(rdp_of(history, FILTER_ORDERS), delta)
    if accountant == "rdp":
        epsilon, _ = rdp_analysis.get_privacy_spent(orders=RDP_ORDERS,
                                                    rdp=rdp_of(history, RDP_ORDERS), delta=delta)
        return float(epsilon)
    prv = create_accountant("prv")
    prv.history = [(s.noise_multiplier, s.sample_rate, s.steps) for s in history]
    return float(prv.get_epsilon(delta=delta))


def rdp_of(history: Sequence[Segment], orders: tuple[float, ...]) -> np.ndarray:
    """Rényi DP of ``history`` at each of ``orders``: the segments' costs add up (Mironov 2017)."""
    return sum((s.steps * _rdp_per_step(s.sample_rate, s.noise_multiplier, orders)
                for s in history), np.zeros(len(orders)))


@functools.lru_cache(maxsize=256)
def _rdp_per_step(sample_rate: float, noise_multiplier: float,
                  orders: tuple[float, ...]) -> np.ndarray:
    """RDP of one sampled-Gaussian step at every order of ``orders``.

    RDP composes additively, so ``steps`` steps cost ``steps`` times this; memoised, as a run
    repeats one ``(q, σ)``.
    """
    rdp = rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                   orders=orders)
    rdp.setflags(write=False)
    return rdp


@functools.lru_cache(maxsize=64)
def calibrate_noise_multiplier(epsilon: float, delta: float, sample_rate: float, steps: int,
                               history: tuple[Segment, ...] = (), accountant: str = "rdp",
                               tolerance: float = 0.01) -> float:
    r"""Noise multiplier σ for ``steps`` further steps that meets the budget ``epsilon``.

    After ``history``, the total ε at ``delta`` lies in ``[epsilon - tolerance, epsilon]``.

    ε is decreasing in σ, so σ is found by doubling an upper bracket and bisecting (memoised:
    the function is pure, and simulated devices with equal plans share the result).

    Args:
        epsilon: Budget ε for the whole run (``history`` included), finite and ``> 0``.
        delta: Target δ in ``(0, 1)``.
        sample_rate: Poisson sampling rate :math:`q \in (0, 1]` of the planned steps.
        steps: Planned further steps, ``>= 1``.
        history: Segments already spent (a tuple, to be hashable).
        accountant: ``rdp``, ``prv`` or ``filter``.
        tolerance: Allowed shortfall of the total ε below ``epsilon``, ``> 0``.

    Returns:
        The noise multiplier σ.

    Raises:
        ValueError: If an argument is out of range, or ``history`` alone leaves no budget
            for the planned steps (at σ up to 10⁴).

    """
    check_accountant(accountant)
    _check_delta(delta)
    if not 0.0 < epsilon < math.inf:
        raise ValueError(f"epsilon must be finite and > 0, got {epsilon}")
    if not tolerance > 0.0:
        raise ValueError(f"tolerance must be > 0, got {tolerance}")
    Segment(1.0, sample_rate, steps)  # validates sample_rate and steps

    def total(sigma: float) -> float:
        return epsilon_spent([*history, Segment(sigma, sample_rate, steps)], delta, accountant)

    already = epsilon_spent(history, delta, accountant)
    low, high = 0.0, 1.0
    while total(high) > epsilon:
        low, high = high, 2.0 * high
        if already >= epsilon or high > MAX_NOISE_MULTIPLIER:
            raise ValueError(
                f"epsilon={epsilon} leaves no room for {steps} more steps at sample rate "
                f"{sample_rate}: the spent history already costs "
                f"{already:.4g}"
            )
    while total(high) < epsilon - tolerance and high - low > 1e-6:
        middle = 0.5 * (low + high)
        if total(middle) > epsilon:
            low = middle
        else:
            high = middle
    return high


def least_round_epsilon(history: Sequence[Segment], sample_rate: float, steps: int,
                        delta: float, accountant: str) -> float:
    """ε after ``history`` plus the cheapest possible round (σ = :data:`MAX_NOISE_MULTIPLIER`).

    Under the filter even that round costs its conversion term (about 0.06 at δ = 1e-5), so
    a share of the budget is a share of what is left above it.
    """
    return epsilon_spent([*history, Segment(MAX_NOISE_MULTIPLIER, sample_rate, steps)], delta,
                         accountant)


def poisson_plan(num_examples: int, batch_size: int, local_epochs: int,
                 rounds: int) -> tuple[float, int, int]:
    r"""Sampling rate, steps per round and planned steps of a client's DP-SGD run.

    As Opacus's ``DPDataLoader`` from a loader of :math:`b = \lceil n/B \rceil` batches:
    each step samples every example with probability :math:`q = 1/b`, and an epoch is
    :math:`b` steps.

    Args:
        num_examples: The client's training examples ``n >= 1``.
        batch_size: Batch size ``B >= 1`` of the non-private loader.
        local_epochs: Epochs per round, ``>= 1``.
        rounds: Planned rounds, ``>= 1``.

    Returns:
        ``(q, steps_per_round, planned_steps)``.

    Raises:
        ValueError: If an argument is ``< 1``.

    """
    for name, value in (("num_examples", num_examples), ("batch_size", batch_size),
                        ("local_epochs", local_epochs), ("rounds", rounds)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    batches = math.ceil(num_examples / batch_size)
    steps_per_round = local_epochs * batches
    return 1.0 / batches, steps_per_round, steps_per_round * rounds
