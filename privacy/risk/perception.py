r"""Risk perception: one risk score in ``[0, 1]`` per device per round, from what the server sees.

After ALPINE's dynamic risk perception (arXiv:2510.17162, §4.1): four criteria, each in
``[0, 1]``, fused by AHP weights and fuzzy comprehensive evaluation
(:func:`~fedmosaic.privacy.risk.fuzzy.fuse`):

- **channel** :math:`x_{ch}`: how unusual the device's round looked
  (:class:`~fedmosaic.privacy.risk.channel.ChannelModel`, an autoencoder fitted on a bounded
  history of every device's channel observations);
- **sensitivity** :math:`x_{s}`: the most sensitive modality the device declares it holds
  (:meth:`~fedmosaic.privacy.risk.sensitivity.SensitivityTable.device`);
- **context** :math:`x_{c}`: the entropy-weighted sensitivity of its modalities within the
  cohort assessed together (:func:`~fedmosaic.privacy.risk.sensitivity.context_scores`);
- **resources** :math:`x_{r} = \max(\mathrm{cpu}, \mathrm{memory})`, the reported load
  fractions. Higher load means higher risk: like ALPINE, we treat constrained devices as more
  at risk, since a defence (more noise, more local computation, an anonymizer pass) costs them
  more and they are the likeliest to skip or weaken it; the scarcer resource binds, hence the
  maximum.

Per call to :meth:`RiskPerception.assess`: the round's channel observations join the history
(a ``deque`` of at most ``history_size``, oldest dropped first); the channel model is refitted
on the whole history when it has never been fitted and the history holds ``min_history``
observations, or ``refit_every`` rounds have passed since the last fit, or
``refit_after_new`` observations arrived since; then every device is scored. Until the first
fit the channel criterion is ``prior_channel`` (0.5: unknown, neither low nor high). The cost
is :math:`O(\text{devices observed this round})` plus an occasional refit bounded by
``history_size``; nothing is kept per device.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from fedmosaic.privacy.risk.channel import MIN_FIT_OBSERVATIONS, ChannelModel, ChannelObservation
from fedmosaic.privacy.risk.fuzzy import DEFAULT_COMPARISONS, criterion_weights, fuse
from fedmosaic.privacy.risk.sensitivity import SensitivityTable, context_scores

K = TypeVar("K", bound=Hashable)

RISK_METRIC = "risk"
"""Metric key of the fused score; the parts are ``risk-<criterion>``."""


@dataclass(frozen=True)
class DeviceObservation:
    """What the server knows of one device in one round.

    Attributes:
        channel: What it observed of the device's round.
        modalities: Names of the modalities the device declares it holds (public metadata);
            any iterable of non-empty strings, stored as a tuple.
        cpu_fraction: Reported CPU load in ``[0, 1]``.
        memory_fraction: Reported memory load in ``[0, 1]``.

    Raises:
        TypeError: If ``channel`` is not a :class:`ChannelObservation`.
        ValueError: If ``modalities`` is empty or holds a non-string or empty name, or a load
            fraction is not a number in ``[0, 1]``.

    """

    channel: ChannelObservation
    modalities: tuple[str, ...]
    cpu_fraction: float
    memory_fraction: float

    def __post_init__(self) -> None:
        if not isinstance(self.channel, ChannelObservation):
            raise TypeError(
                f"DeviceObservation.channel must be a ChannelObservation, got "
                f"{type(self.channel).__name__}"
            )
        if isinstance(self.modalities, str):
            raise ValueError(
                "DeviceObservation.modalities must be a collection of names, got the string "
                f"{self.modalities!r}; wrap it: ({self.modalities!r},)"
            )
        modalities = tuple(self.modalities)
        if not modalities or not all(isinstance(m, str) and m.strip() for m in modalities):
            raise ValueError(
                "DeviceObservation.modalities must hold at least one non-empty name, got "
                f"{modalities!r}"
            )
        object.__setattr__(self, "modalities", modalities)
        for name in ("cpu_fraction", "memory_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (
                isinstance(value, (int, float)) and 0.0 <= value <= 1.0
            ):
                raise ValueError(
                    f"DeviceObservation.{name} must be a number in [0, 1], got {value!r}"
                )


@dataclass(frozen=True)
class RiskScore:
    """A device's risk in one round, with the criterion scores it was fused from.

    Attributes:
        score: The fused risk in ``[0, 1]``.
        channel: Channel criterion in ``[0, 1]``.
        sensitivity: Data-sensitivity criterion in ``[0, 1]``.
        context: Context criterion in ``[0, 1]``.
        resources: Resource criterion in ``[0, 1]``.

    """

    score: float
    channel: float
    sensitivity: float
    context: float
    resources: float

    def parts(self) -> dict[str, float]:
        """``{criterion: score}`` for the four criteria."""
        return {
            "channel": self.channel,
            "sensitivity": self.sensitivity,
            "context": self.context,
            "resources": self.resources,
        }

    def to_metrics(self) -> dict[str, float]:
        """Flat metrics: ``risk`` and ``risk-channel``, ``risk-sensitivity``, ...."""
        metrics = {RISK_METRIC: float(self.score)}
        metrics.update({f"{RISK_METRIC}-{k}": float(v) for k, v in self.parts().items()})
        return metrics


def resource_score(cpu_fraction: float, memory_fraction: float) -> float:
    r"""Resource criterion :math:`\max(\mathrm{cpu}, \mathrm{memory})` (module docstring)."""
    return max(float(cpu_fraction), float(memory_fraction))


class RiskPerception:
    """Scores devices round by round; holds the channel model, its history and the weights.

    Args:
        sensitivity: The modality sensitivity table (default :class:`SensitivityTable()`).
        comparisons: Saaty matrix over ``channel, sensitivity, context, resources``
            (default :data:`~fedmosaic.privacy.risk.fuzzy.DEFAULT_COMPARISONS`).
        channel_model: The (unfitted) channel model (default ``ChannelModel()``, seed 0).
        history_size: Most channel observations kept for fitting.
        min_history: Observations needed before the first fit.
        refit_every: Rounds between refits.
        refit_after_new: New observations that trigger a refit sooner.
        prior_channel: Channel criterion before the first fit.

    Raises:
        ValueError: On an out-of-range argument or an inconsistent ``comparisons`` matrix.

    """

    def __init__(
        self,
        *,
        sensitivity: SensitivityTable | None = None,
        comparisons: Sequence[Sequence[float]] | np.ndarray = DEFAULT_COMPARISONS,
        channel_model: ChannelModel | None = None,
        history_size: int = 2048,
        min_history: int = 32,
        refit_every: int = 5,
        refit_after_new: int = 512,
        prior_channel: float = 0.5,
    ) -> None:
        if not MIN_FIT_OBSERVATIONS <= min_history <= history_size:
            raise ValueError(
                f"need {MIN_FIT_OBSERVATIONS} <= min_history <= history_size, got "
                f"min_history={min_history}, history_size={history_size}"
            )
        if refit_every < 1 or refit_after_new < 1:
            raise ValueError(
                f"refit_every and refit_after_new must be >= 1, got {refit_every} and "
                f"{refit_after_new}"
            )
        if not 0.0 <= prior_channel <= 1.0:
            raise ValueError(f"prior_channel must lie in [0, 1], got {prior_channel}")
        self.sensitivity = sensitivity if sensitivity is not None else SensitivityTable()
        self.weights = criterion_weights(comparisons)
        self.channel_model = channel_model if channel_model is not None else ChannelModel()
        self.min_history, self.refit_every = min_history, refit_every
        self.refit_after_new, self.prior_channel = refit_after_new, prior_channel
        self._history: deque[ChannelObservation] = deque(maxlen=history_size)
        self._last_fit_round: int | None = None
        self._new_since_fit = 0

    @property
    def history_length(self) -> int:
        """Channel observations currently kept."""
        return len(self._history)

    @property
    def last_fit_round(self) -> int | None:
        """Round of the channel model's latest fit (``None`` before the first)."""
        return self._last_fit_round

    def assess(
        self, server_round: int, observations: Mapping[K, DeviceObservation]
    ) -> dict[K, RiskScore]:
        """Risk of every device observed in ``server_round`` (module docstring).

        Args:
            server_round: The round number (>= 0); drives the refit schedule.
            observations: ``{device id: DeviceObservation}``; the context criterion is
                relative to exactly these devices.

        Returns:
            ``{device id: RiskScore}`` for the same devices.

        Raises:
            ValueError: If ``server_round`` is not an integer >= 0.
            TypeError: If an observation is not a :class:`DeviceObservation`.

        """
        if isinstance(server_round, bool) or not isinstance(server_round, int) or server_round < 0:
            raise ValueError(f"server_round must be an integer >= 0, got {server_round!r}")
        for device, observation in observations.items():
            if not isinstance(observation, DeviceObservation):
                raise TypeError(
                    f"observation of device {device!r} must be a DeviceObservation, got "
                    f"{type(observation).__name__}"
                )
        if not observations:
            return {}
        devices = list(observations)
        channels = [observations[d].channel for d in devices]
        self._record(server_round, channels)
        if self.channel_model.is_fitted:
            channel = [float(s) for s in self.channel_model.score(channels)]
        else:
            channel = [self.prior_channel] * len(devices)
        context = context_scores({d: observations[d].modalities for d in devices},
                                 self.sensitivity)
        result = {}
        for device, channel_score in zip(devices, channel, strict=True):
            observation = observations[device]
            parts = {
                "channel": channel_score,
                "sensitivity": self.sensitivity.device(observation.modalities),
                "context": context[device],
                "resources": resource_score(observation.cpu_fraction,
                                            observation.memory_fraction),
            }
            result[device] = RiskScore(score=fuse(parts, self.weights), **parts)
        return result

    def _record(self, server_round: int, channels: Sequence[ChannelObservation]) -> None:
        """Append to the history and refit the channel model when due."""
        self._history.extend(channels)
        self._new_since_fit += len(channels)
        if len(self._history) < self.min_history:
            return
        due = (
            self._last_fit_round is None
            or server_round - self._last_fit_round >= self.refit_every
            or self._new_since_fit >= self.refit_after_new
        )
        if due:
            self.channel_model.fit(list(self._history))
            self._last_fit_round = server_round
            self._new_since_fit = 0

