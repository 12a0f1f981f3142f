r"""Channel risk: how unusual a device's round looks from the server, by autoencoder.

After ALPINE (arXiv:2510.17162, §4.1), whose channel-risk term scores the transmission a
device takes part in. Here the server scores only what it observes of a device's round,
never the device's data: a :class:`ChannelObservation` of five numbers.

Features (one row per observation), :math:`\mathrm{log1p}` on the heavy-tailed positive ones:

.. math::
    f = \big(\log(1+t_{\mathrm{rtt}}),\ \log(1+\mathrm{bytes}),\ \log(1+\lVert\Delta\rVert),\
        \cos(\Delta, \bar\Delta),\ \log(1+\mathrm{rejections})\big).

Robust standardisation, fitted on the reference set: :math:`z_j = (f_j - \mathrm{med}_j) /
s_j` with :math:`s_j = \max(\mathrm{IQR}_j / 1.349,\ s_{\min})` (the normal-consistent
scale), floored at :math:`s_{\min}` = :data:`MIN_FEATURE_SCALE` = 0.1: about a 10 % relative
change on the ``log1p`` features, 0.1 on the cosine. The floor matters when a feature barely
varies in the reference (``rejections`` zero for nearly every device, every reply the same
size): one rejection then stands out (:math:`z \approx 6.9`) without a tiny scale turning
round-off into anomalies. Then :math:`z` is clipped to :math:`[-c, c]` (``clip``, default 8) so
one extreme reply cannot dominate the fit.

Model: a tiny *denoising* autoencoder :math:`5 \to h \to k \to h \to 5` (``tanh`` hidden
layers, linear bottleneck; ``h = 8``, ``k = 2`` by default, 135 weights), trained full-batch
with Adam for a fixed number of epochs to map :math:`z + \sigma\varepsilon`,
:math:`\varepsilon \sim \mathcal N(0, I)` (``noise``, :math:`\sigma = 0.5`), back to
:math:`z` (Vincent et al. 2008, "Extracting and composing robust features with denoising
autoencoders", ICML). The reconstruction error of an observation is

.. math:: e = \tfrac15 \lVert z - \hat z \rVert_2^2 .

Three choices keep anomalies visible, each measured here on a synthetic population (5 %
anomalies, F1 of flagging the top 5 % errors, three seeds):

- *Denoising.* A plain autoencoder copies whatever features its bottleneck encodes, so an
  anomaly along such a feature is reconstructed perfectly and goes unseen; the denoising
  target makes it shrink towards the data instead. Cosine to the aggregate dropping from 0.6
  to about 0: F1 0.0–0.5 plain, 0.95–1.0 denoising; update norm tripled: 0.5–0.85 against
  0.95–1.0.
- *Trimmed loss.* Each epoch ignores the worst ``trim`` fraction (default 30 %) of
  per-observation errors, so anomalies already in the reference history (they usually are:
  the history is every device's past rounds) do not teach the model to reconstruct them (the
  idea of least trimmed squares, Rousseeuw 1984, applied to the autoencoder's loss). Measured
  on fedmosaic runs where 20 % of the devices misbehave from the first round (scale-10,
  delay, burst; ``benchmarks/anonymizer.py``): F1 of flagging the top 20 % was 0.5 with 10 %
  trimmed and 1.0 with 30 %.
- *Calibration split.* The autoencoder is trained on a seeded random ``1 - calibration``
  share of the reference set, and the errors that calibrate the score
  (:attr:`ChannelModel.reference_errors`) are those of the held-out ``calibration`` share
  (default 25 %), as in split-conformal outlier detection (Bates et al. 2023, "Testing for
  outliers with conformal p-values", Ann. Statist. 51(1)). In-sample errors understate a fresh
  observation's: with 40 reference observations (plain autoencoder) the training median error
  was a tenth of the median on fresh observations, and 18 % of fresh normal ones scored above
  0.9.

Score, mapping :math:`e \ge 0` to :math:`[0, 1)`:

.. math:: s(e) = 1 - 2^{-e / e_{\mathrm{ref}}}, \qquad e_{\mathrm{ref}} = m \cdot
    \operatorname{median}(e_1, \dots, e_N),

the median taken over the held-out calibration errors, :math:`m` = ``reference_multiple``
(default 10), and :math:`e_{\mathrm{ref}}` floored at :data:`MIN_REFERENCE_ERROR`. An
observation reconstructed ten times worse than the typical reference observation scores 0.5,
a typical one scores :math:`1 - 2^{-1/10} \approx 0.067`, and errors far beyond the
reference's tail approach 1. :math:`s` is strictly increasing, so thresholds on :math:`e` and
on :math:`s` rank identically. The median keeps :math:`e_{\mathrm{ref}}` stable when the
reference history holds anomalies (up to half of it); an upper quantile (the 90th) was tried
and not chosen: it moved by a factor of five between seeds of the same synthetic population,
as it falls inside the normal errors' long tail. The empirical CDF against the reference
errors was not chosen either: it scores normal devices uniformly on :math:`[0, 1]` (half of
all well-behaved devices would score above 0.5) and saturates at 1 for every error beyond the
reference's maximum.

Measured here (2-core CPU, the synthetic population of ``tests/privacy/test_risk_channel.py``:
400 observations, 5 % of them with 10x bytes and 5x round trip or a negative cosine, the
anomalies also in the fit set): a fit takes about 0.2 s (the first in a process about 1 s
more, torch warming up); on a fresh population, flagging :math:`s \ge 0.9` reaches F1
0.98–1.0 over ten seeds (chance: about 0.05). Subtler anomalies (round trip doubled, norm
tripled, cosine near 0) score lower: flagging :math:`s \ge 0.5` finds them with F1 0.92–1.0.

Everything is deterministic given ``seed``: initialisation runs under a forked, seeded torch
RNG (the global RNG is left untouched), the split and the training noise come from their own
seeded generators, and training is full-batch. Refitting (:meth:`ChannelModel.fit` again,
e.g. as the history grows) starts from the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn

CHANNEL_FIELDS = (
    "round_trip_seconds",
    "reply_bytes",
    "update_norm",
    "cosine_to_aggregate",
    "rejections",
)
"""The fields of :class:`ChannelObservation`, in feature order."""

MIN_FIT_OBSERVATIONS = 8
"""Fewest observations :meth:`ChannelModel.fit` accepts."""

MIN_REFERENCE_ERROR = 0.01
r"""Floor of :math:`e_{\mathrm{ref}}` (an RMS deviation of 0.1 standardised units), for
reference sets the autoencoder reconstructs almost perfectly (e.g. every device identical)."""

MIN_FEATURE_SCALE = 0.1
"""Floor of a feature's standardisation scale (module docstring)."""

_IQR_TO_SIGMA = 1.349  # IQR of the standard normal
_COSINE_SLACK = 1e-6  # float round-off of a cosine computed from arrays


@dataclass(frozen=True)
class ChannelObservation:
    """What the server observed of one device in one round.

    Attributes:
        round_trip_seconds: From sending the instruction to receiving the reply (>= 0).
        reply_bytes: Size of the serialized reply (>= 0).
        update_norm: L2 norm of the device's model update (>= 0).
        cosine_to_aggregate: Cosine between the update and the round's aggregate update
            (in [-1, 1]).
        rejections: How often the device's replies were rejected by validation (>= 0).

    Raises:
        ValueError: If a field is not a finite number or lies outside its range; the message
            names the field and the value.

    """

    round_trip_seconds: float
    reply_bytes: float
    update_norm: float
    cosine_to_aggregate: float
    rejections: float

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
                raise ValueError(
                    f"ChannelObservation.{item.name} must be a finite number, got {value!r}"
                )
            if not math.isfinite(value):
                raise ValueError(
                    f"ChannelObservation.{item.name} must be finite, got {value!r}"
                )
            if item.name != "cosine_to_aggregate" and value < 0:
                raise ValueError(f"ChannelObservation.{item.name} must be >= 0, got {value!r}")
        if abs(self.cosine_to_aggregate) > 1.0 + _COSINE_SLACK:
            raise ValueError(
                "ChannelObservation.cosine_to_aggregate must lie in [-1, 1], got "
                f"{self.cosine_to_aggregate!r}"
            )

    def as_tuple(self) -> tuple[float, ...]:
        """The five raw values in :data:`CHANNEL_FIELDS` order."""
        return tuple(float(getattr(self, name)) for name in CHANNEL_FIELDS)


def features(observations: Sequence[ChannelObservation]) -> np.ndarray:
    """The ``(n, 5)`` float64 feature matrix (module docstring: ``log1p`` except cosine)."""
    raw = np.array([o.as_tuple() for o in observations], dtype=np.float64).reshape(-1, 5)
    out = np.log1p(raw)
    out[:, 3] = raw[:, 3]
    return out


def robust_scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Per-column centre (median) and scale :math:`\max(\mathrm{IQR}/1.349, s_{\min})` of ``x``."""
    center = np.median(x, axis=0)
    q75, q25 = np.percentile(x, [75, 25], axis=0)
    return center, np.maximum((q75 - q25) / _IQR_TO_SIGMA, MIN_FEATURE_SCALE)


def score_from_errors(errors: np.ndarray, reference_error: float) -> np.ndarray:
    r"""Map reconstruction errors to :math:`s(e) = 1 - 2^{-e / e_{\mathrm{ref}}}` in ``[0, 1)``."""
    if not reference_error > 0.0:
        raise ValueError(f"reference_error must be > 0, got {reference_error}")
    errors = np.asarray(errors, dtype=np.float64)
    return -np.expm1(-math.log(2.0) * np.maximum(errors, 0.0) / reference_error)


class ChannelModel:
    r"""Autoencoder channel scorer, refittable on a growing reference history.

    Args:
        hidden: Width :math:`h` of the two hidden layers.
        latent: Width :math:`k` of the bottleneck (``1 <= latent < 5``).
        epochs: Full-batch Adam steps per fit.
        learning_rate: Adam's step size.
        trim: Fraction of the largest per-observation errors left out of each epoch's loss,
            in ``[0, 0.5)``.
        reference_multiple: :math:`m`: the error that scores 0.5 is :math:`m` times the
            median error of the held-out calibration share.
        calibration: Share of the fit set held out of training to calibrate the score,
            in ``(0, 0.5]``.
        noise: Standard deviation :math:`\sigma` of the Gaussian noise added to the
            standardised inputs during training (denoising; 0 trains a plain autoencoder).
        clip: Standardised features are clipped to ``[-clip, clip]``.
        seed: Seed of the initial weights, the calibration split and the training noise.

    """

    def __init__(
        self,
        *,
        hidden: int = 8,
        latent: int = 2,
        epochs: int = 300,
        learning_rate: float = 0.02,
        trim: float = 0.3,
        reference_multiple: float = 10.0,
        calibration: float = 0.25,
        noise: float = 0.5,
        clip: float = 8.0,
        seed: int = 0,
    ) -> None:
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        if not 1 <= latent < len(CHANNEL_FIELDS):
            raise ValueError(f"latent must lie in [1, {len(CHANNEL_FIELDS)}), got {latent}")
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if not learning_rate > 0.0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
        if not 0.0 <= trim < 0.5:
            raise ValueError(f"trim must lie in [0, 0.5), got {trim}")
        if not reference_multiple > 0.0:
            raise ValueError(f"reference_multiple must be > 0, got {reference_multiple}")
        if not noise >= 0.0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        if not 0.0 < calibration <= 0.5:
            raise ValueError(f"calibration must lie in (0, 0.5], got {calibration}")
        if not clip > 0.0:
            raise ValueError(f"clip must be > 0, got {clip}")
        self.hidden, self.latent, self.epochs = hidden, latent, epochs
        self.learning_rate, self.trim = learning_rate, trim
        self.reference_multiple, self.calibration = reference_multiple, calibration
        self.clip, self.seed, self.noise = clip, seed, noise
        self._network: nn.Module | None = None
        self._center = self._scale = np.zeros(0)
        self._reference_errors = np.zeros(0)
        self._reference_error = 0.0

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has run."""
        return self._network is not None

    @property
    def reference_errors(self) -> np.ndarray:
        """Errors of the last fit's held-out calibration observations (a copy)."""
        self._require_fitted()
        return self._reference_errors.copy()

    @property
    def reference_error(self) -> float:
        r""":math:`e_{\mathrm{ref}}`: the error that scores 0.5."""
        self._require_fitted()
        return self._reference_error

    def fit(self, observations: Sequence[ChannelObservation]) -> ChannelModel:
        """Fit the standardiser and the autoencoder afresh on ``observations``; returns self.

        The standardiser sees all of ``observations``; the autoencoder is trained on a seeded
        random ``1 - calibration`` share and calibrated on the rest (module docstring).

        Raises:
            ValueError: If fewer than :data:`MIN_FIT_OBSERVATIONS` observations are given.

        """
        if len(observations) < MIN_FIT_OBSERVATIONS:
            raise ValueError(
                f"ChannelModel.fit needs at least {MIN_FIT_OBSERVATIONS} observations, got "
                f"{len(observations)}; keep scoring with the previous fit or a prior until then"
            )
        x = features(observations)
        self._center, self._scale = robust_scale(x)
        order = np.random.default_rng(self.seed).permutation(len(x))
        held_out = max(1, round(self.calibration * len(x)))
        inputs = torch.from_numpy(self._standardise(x[order[held_out:]]))
        keep = max(1, math.ceil((1.0 - self.trim) * len(inputs)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            network = _autoencoder(len(CHANNEL_FIELDS), self.hidden, self.latent)
        optimiser = torch.optim.Adam(network.parameters(), lr=self.learning_rate)
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epochs):
            optimiser.zero_grad()
            noisy = inputs + self.noise * torch.randn(inputs.shape, generator=generator)
            per_row = ((network(noisy) - inputs) ** 2).mean(dim=1)
            torch.topk(per_row, keep, largest=False, sorted=False).values.mean().backward()
            optimiser.step()
        self._network = network.eval()
        self._reference_errors = self._errors(
            torch.from_numpy(self._standardise(x[order[:held_out]]))
        )
        median = float(np.median(self._reference_errors))
        self._reference_error = max(self.reference_multiple * median, MIN_REFERENCE_ERROR)
        return self

    def reconstruction_errors(self, observations: Sequence[ChannelObservation]) -> np.ndarray:
        r"""Per-observation error :math:`e = \tfrac15 \lVert z - \hat z \rVert^2`, shape (n,)."""
        self._require_fitted()
        if len(observations) == 0:
            return np.zeros(0)
        return self._errors(torch.from_numpy(self._standardise(features(observations))))

    def score(self, observations: Sequence[ChannelObservation]) -> np.ndarray:
        """Channel score in ``[0, 1)`` per observation, shape ``(n,)``."""
        return score_from_errors(self.reconstruction_errors(observations), self.reference_error)

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        z = (x - self._center) / self._scale
        return np.clip(z, -self.clip, self.clip).astype(np.float32)

    def _errors(self, inputs: torch.Tensor) -> np.ndarray:
        assert self._network is not None  # callers check
        with torch.no_grad():
            per_row = ((self._network(inputs) - inputs) ** 2).mean(dim=1)
        return per_row.numpy().astype(np.float64)

    def _require_fitted(self) -> None:
        if self._network is None:
            raise RuntimeError("ChannelModel is not fitted: call fit(observations) first")


def _autoencoder(width: int, hidden: int, latent: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(width, hidden),
        nn.Tanh(),
        nn.Linear(hidden, latent),
        nn.Linear(latent, hidden),
        nn.Tanh(),
        nn.Linear(hidden, width),
    )
