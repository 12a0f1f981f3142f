r"""The controller's policies, one code path: each maps an observation to an action vector.

Every policy returns :math:`a \in [-1, 1]^4` (:mod:`~fedmosaic.privacy.controller.observation`);
the server chain's controller stage decodes it, sends it and audits it the same way whichever
policy chose it, and the ledger enforces the cap whatever it says.

=============  ==========================================================================
policy         spend share of the remaining ε (knobs: the run's, unless stated)
=============  ==========================================================================
static         even: ``1 / rounds left`` (every round the same share of the cap)
linear         cumulative spend :math:`t(t+1)/(T(T+1))`: per-round spend grows linearly
exponential    cumulative spend :math:`(g^t - 1)/(g^T - 1)`, :math:`g` = 1.5
alpine         the closed-form best spend for the device's risk ρ (:class:`AlpinePolicy`)
bandit         UCB1 (Auer et al. 2002) over five spend levels, shared by all devices,
               rewarded by :func:`~fedmosaic.privacy.controller.reward.controller_reward`
ddpg, td3      a frozen stable-baselines3 actor (Lillicrap et al. 2016; Fujimoto et al.
               2018) trained offline on the surrogate environment; sets the knobs too
random         uniform actions (exploration: the surrogate's training data)
=============  ==========================================================================
"""

from __future__ import annotations

import abc
import hashlib
import json
import math
from pathlib import Path

import numpy as np

from fedmosaic.privacy.anonymizer.knobs import AnonymizerKnobs
from fedmosaic.privacy.controller.observation import (
    ACTION_SIZE,
    MIN_SHARE,
    OBSERVATION_FIELDS,
    ControllerAction,
    ControllerObservation,
    decode_action,
    even_share,
)

DEFAULT_KNOBS = AnonymizerKnobs()
"""The knobs a policy keeps when the run sets none."""
TRAINED_POLICIES = Path(__file__).parent / "trained"
"""The shipped ``ddpg.zip`` and ``td3.zip`` (``benchmarks/train_controller.py`` writes them)."""


class Policy:
    """A controller policy (module docstring); stateless unless it overrides :meth:`learn`.

    Args:
        knobs: The run's anonymizer knobs, kept by policies that only set the spend.
    """

    name = "static"

    def __init__(self, knobs: AnonymizerKnobs = DEFAULT_KNOBS) -> None:
        self.knobs = knobs

    def share(self, observation: ControllerObservation, server_round: int,
              num_rounds: int) -> float:
        """This round's share of the remaining ε (static: even)."""
        return even_share(server_round, num_rounds)

    def decide(self, observation: ControllerObservation, server_round: int, num_rounds: int,
               device: str) -> ControllerAction:
        """The action for ``device``: the share in [:data:`MIN_SHARE`, 1], the run's knobs."""
        share = self.share(observation, server_round, num_rounds)
        return ControllerAction(min(1.0, max(MIN_SHARE, share)), self.knobs)

    def learn(self, device: str, reward: float) -> None:
        """The reward of ``device``'s last action (a learning policy updates; others ignore)."""

    def fingerprint(self) -> str:
        """SHA-256 of what defines the policy (its name and parameters, or its file)."""
        return hashlib.sha256(json.dumps({"policy": self.name,
                                          **self.parameters()}).encode()).hexdigest()

    def parameters(self) -> dict[str, float | str]:
        """The policy's parameters (for :meth:`fingerprint`)."""
        return {}


class SchedulePolicy(Policy, abc.ABC):
    """Spend along a cumulative schedule :math:`F(t)` with :math:`F(0) = 0`, :math:`F(T) = 1`.

    Round t spends :math:`(F(t) - F(t-1)) / (1 - F(t-1))` of what is left.
    """

    @abc.abstractmethod
    def cumulative(self, t: int, num_rounds: int) -> float:
        """:math:`F(t)`, the share of the budget spent after round t (each schedule's own)."""

    def share(self, observation: ControllerObservation, server_round: int,
              num_rounds: int) -> float:
        """The schedule's share of the remaining ε in ``server_round``."""
        before = self.cumulative(server_round - 1, num_rounds)
        now = self.cumulative(min(server_round, num_rounds), num_rounds)
        return (now - before) / (1.0 - before) if before < 1.0 else 1.0


class LinearPolicy(SchedulePolicy):
    """Per-round spend growing linearly: :math:`F(t) = t(t+1)/(T(T+1))`."""

    name = "linear"

    def cumulative(self, t: int, num_rounds: int) -> float:
        """:math:`t(t+1)/(T(T+1))`."""
        return t * (t + 1) / (num_rounds * (num_rounds + 1))


class ExponentialPolicy(SchedulePolicy):
    """Per-round spend growing geometrically: :math:`F(t) = (g^t - 1)/(g^T - 1)`."""

    name = "exponential"
    growth = 1.5

    def cumulative(self, t: int, num_rounds: int) -> float:
        """:math:`(g^t - 1)/(g^T - 1)`."""
        return (self.growth ** t - 1) / (self.growth ** num_rounds - 1)

    def parameters(self) -> dict[str, float | str]:
        """The growth factor g."""
        return {"growth": self.growth}


class AlpinePolicy(Policy):
    r"""The closed-form best spend for the device's risk, after ALPINE's privacy decision.

    With the even per-round spend :math:`e_s` as unit, a round's utility
    :math:`U(e) = 1 - \exp(-e / e_s)` (diminishing returns) and its privacy cost
    :math:`w(\rho)\, e / e_s` with :math:`w(\rho) = w_0 (1 + 3\rho)` rising with the risk ρ,
    :math:`dU/de = dC/de` gives :math:`e^* = e_s \ln(1 / w(\rho))`: 1.39 :math:`e_s` at
    ρ = 0, the even spend at :math:`w = 1/e`, the least (:data:`MIN_SHARE`) from
    :math:`w \ge 1`. ALPINE's own utility and cost curves are fitted to its crowdsensing
    data; this is the same construction on fedmosaic's quantities.
    """

    name = "alpine"
    base_weight = 0.25

    def share(self, observation: ControllerObservation, server_round: int,
              num_rounds: int) -> float:
        r""":math:`\ln(1/w(\rho))` times the even share (class docstring)."""
        weight = self.base_weight * (1.0 + 3.0 * min(1.0, max(0.0, observation.risk)))
        return max(0.0, math.log(1.0 / weight)) * even_share(server_round, num_rounds)

    def parameters(self) -> dict[str, float | str]:
        """:math:`w_0`."""
        return {"base_weight": self.base_weight}


class BanditPolicy(Policy):
    r"""UCB1 over spend levels :math:`a_0 \in \{-1, -\frac12, 0, \frac12, 1\}`, shared.

    The share is :func:`~fedmosaic.privacy.controller.observation.decode_action`'s for the
    level (four times less to four times more than the even share). One arm is pulled per
    round for every device (the devices' rewards of a round are one correlated sample); its
    reward, the mean of the devices' rewards, arrives a round later. Arm :math:`k` pulled
    :math:`n_k` times with mean reward :math:`\bar r_k` gives the next round
    :math:`\arg\max_k \bar r_k + c \sqrt{2 \ln N / n_k}`, every arm once first (Auer,
    Cesa-Bianchi & Fischer 2002).
    """

    name = "bandit"
    levels = (-1.0, -0.5, 0.0, 0.5, 1.0)
    exploration = 0.5

    def __init__(self, knobs: AnonymizerKnobs = DEFAULT_KNOBS) -> None:
        super().__init__(knobs)
        self.counts = np.zeros(len(self.levels))
        self.means = np.zeros(len(self.levels))
        self.arm: int | None = None
        self.round: int | None = None
        self.rewards: list[float] = []

    def decide(self, observation: ControllerObservation, server_round: int, num_rounds: int,
               device: str) -> ControllerAction:
        """The round's arm (chosen at the round's first decision)."""
        if server_round != self.round:
            self._credit()
            self.round, self.arm = server_round, self._choose()
        vector = np.array([self.levels[self.arm], 0.0, 0.0, 0.0])  # type: ignore[index]
        share = decode_action(vector, server_round, num_rounds).spend_share
        return ControllerAction(share, self.knobs)

    def learn(self, device: str, reward: float) -> None:
        """Collect a device's reward for the round's arm."""
        if math.isfinite(reward):
            self.rewards.append(reward)

    def _choose(self) -> int:
        if np.any(self.counts == 0):
            return int(np.argmin(self.counts))
        bonus = self.exploration * np.sqrt(2 * math.log(self.counts.sum()) / self.counts)
        return int(np.argmax(self.means + bonus))

    def _credit(self) -> None:
        """Update the last round's arm with the mean of its devices' rewards."""
        if self.arm is None or not self.rewards:
            return
        self.counts[self.arm] += 1
        self.means[self.arm] += (np.mean(self.rewards) - self.means[self.arm]) / self.counts[
            self.arm]
        self.rewards = []

    def parameters(self) -> dict[str, float | str]:
        """Levels and exploration constant."""
        return {"levels": str(self.levels), "exploration": self.exploration}


class RandomPolicy(Policy):
    """Uniform actions from a seeded generator (exploration data for the surrogate)."""

    name = "random"

    def __init__(self, knobs: AnonymizerKnobs = DEFAULT_KNOBS, seed: int = 0) -> None:
        super().__init__(knobs)
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def decide(self, observation: ControllerObservation, server_round: int, num_rounds: int,
               device: str) -> ControllerAction:
        """A uniform vector in :math:`[-1, 1]^4`, decoded."""
        return decode_action(self.rng.uniform(-1.0, 1.0, ACTION_SIZE), server_round, num_rounds)

    def parameters(self) -> dict[str, float | str]:
        """The seed."""
        return {"seed": self.seed}


class ReinforcementPolicy(Policy):
    """A frozen stable-baselines3 DDPG or TD3 actor, shared by all devices.

    A JSON file beside the policy (``td3-no-risk.json``) may list ``hidden_inputs``:
    observation fields the actor was trained without, set to 0 before it acts.

    Args:
        algorithm: ``ddpg`` or ``td3``.
        path: The saved model (``.zip``); default: the shipped one.

    Raises:
        FileNotFoundError: If the policy file does not exist.
    """

    def __init__(self, algorithm: str, path: Path | None = None) -> None:
        super().__init__()
        from stable_baselines3 import DDPG, TD3

        self.name = algorithm
        self.path = Path(path) if path else TRAINED_POLICIES / f"{algorithm}.zip"
        if not self.path.is_file():
            raise FileNotFoundError(f"controller={algorithm} needs a policy file, expected "
                                    f"{self.path}; train one with benchmarks/train_controller.py")
        self.model = {"ddpg": DDPG, "td3": TD3}[algorithm].load(self.path, device="cpu")
        sidecar = self.path.with_suffix(".json")  # e.g. an ablation trained without the risk
        hidden = json.loads(sidecar.read_text()).get("hidden_inputs", []) if (
            sidecar.is_file()) else []
        unknown = sorted(set(hidden) - set(OBSERVATION_FIELDS))
        if unknown:
            raise ValueError(f"{sidecar}: hidden_inputs must be observation fields "
                             f"{OBSERVATION_FIELDS}, got {unknown}")
        self.masked = [OBSERVATION_FIELDS.index(name) for name in hidden]

    def decide(self, observation: ControllerObservation, server_round: int, num_rounds: int,
               device: str) -> ControllerAction:
        """The actor's deterministic action, decoded (masked inputs set to 0 first)."""
        seen = observation.as_array()
        seen[self.masked] = 0.0
        action, _ = self.model.predict(seen, deterministic=True)
        return decode_action(np.asarray(action).reshape(ACTION_SIZE), server_round, num_rounds)

    def fingerprint(self) -> str:
        """SHA-256 of the policy file."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


SCHEDULES: dict[str, type[Policy]] = {
    "static": Policy, "linear": LinearPolicy, "exponential": ExponentialPolicy,
    "alpine": AlpinePolicy, "bandit": BanditPolicy, "random": RandomPolicy,
}


def build_policy(name: str, knobs: AnonymizerKnobs = DEFAULT_KNOBS,
                 policy_file: str = "", seed: int = 0) -> Policy:
    """The policy ``name`` (``controller``), with the run's knobs and, for RL, its file.

    Raises:
        ValueError: If ``name`` is not a policy.
    """
    if name in ("ddpg", "td3"):
        return ReinforcementPolicy(name, Path(policy_file).expanduser() if policy_file else None)
    if name == "random":
        return RandomPolicy(knobs, seed)
    if name not in SCHEDULES:
        raise ValueError(f"controller must be one of {sorted([*SCHEDULES, 'ddpg', 'td3'])}, "
                         f"got {name!r}")
    return SCHEDULES[name](knobs)
