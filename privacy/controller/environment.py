r"""The controller's gymnasium environment: one episode is one run, one step one round.

The agent is the policy shared by every device. It sees one device's observation
(:class:`~fedmosaic.privacy.controller.observation.ControllerObservation`) and its action is that
device's; the other devices act alike (a mean-field view: at run time the same actor acts for
every device), so a round's accuracy gain is the surrogate's for the devices' common σ and knobs.
A round:

1. the action decodes to a spend share and knobs; the share becomes σ and the new Rényi DP of
   the device's history through the exact spend model (the cap is never passed: a share the
   cap cannot afford even at the largest σ means no training, no gain, no spend);
2. the surrogate draws the accuracy gain, the leakage probe and the device's risk and update
   statistics (an attacked device's from the attack round of the scenario on);
3. the reward is :func:`~fedmosaic.privacy.controller.reward.controller_reward` with the
   round's adapted weights.

Scenarios (drawn at ``reset``): a cap from ``caps``; with probability ``attack_probability``
the device is attacked from a round drawn in the middle half of the run (a risk shift).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from fedmosaic.privacy.controller.observation import (
    ACTION_SIZE,
    OBSERVATION_HIGH,
    OBSERVATION_LOW,
    ControllerObservation,
    decode_action,
)
from fedmosaic.privacy.controller.reward import controller_reward, reward_weights
from fedmosaic.privacy.controller.surrogate import SpendModel, Surrogate


class SurrogatePrivacyEnv(gym.Env):
    r"""The surrogate run as a gymnasium environment (module docstring).

    Args:
        surrogate: The fitted surrogate.
        spend: The exact spend model (the devices' sampling rate, steps and δ).
        num_rounds: Rounds per episode.
        caps: The caps a scenario draws from.
        privacy_weight: :math:`w_p^0` of the reward.
        epsilon_weight: :math:`w_\varepsilon^0` of the reward.
        attack_probability: Share of scenarios with a mid-run attack on the device.
        use_risk: ``False`` hides the risk and its criteria from the observation (the
            no-risk-input ablation); the reward still weighs the true risk.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, surrogate: Surrogate, spend: SpendModel, num_rounds: int = 10,
                 caps: Sequence[float] = (1.0, 3.0, 8.0), privacy_weight: float = 1.0,
                 epsilon_weight: float = 0.5, attack_probability: float = 0.5,
                 use_risk: bool = True) -> None:
        super().__init__()
        self.surrogate, self.spend_model = surrogate, spend
        self.num_rounds, self.caps = num_rounds, tuple(caps)
        self.privacy_weight, self.epsilon_weight = privacy_weight, epsilon_weight
        self.attack_probability, self.use_risk = attack_probability, use_risk
        self.observation_space = gym.spaces.Box(OBSERVATION_LOW, OBSERVATION_HIGH,
                                                dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_SIZE,), dtype=np.float32)
        self._rng = np.random.default_rng()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Draw a scenario; the first round's observation."""
        super().reset(seed=seed)
        self._rng = self.np_random
        self.cap = float(self._rng.choice(self.caps))
        attacked = self._rng.random() < self.attack_probability
        quarter = max(1, self.num_rounds // 4)
        self.attack_round = (int(self._rng.integers(quarter + 1, self.num_rounds - quarter + 1))
                             if attacked else self.num_rounds + 1)
        self.round, self.accuracy = 1, self.surrogate.initial_accuracy
        self.rdp = np.zeros(self.spend_model.curves.shape[1])
        self.last, self.risk = ControllerObservation(), 0.0
        return self._observe(0.0, 0.0, 0.0, 0.0), {"cap": self.cap,
                                                     "attack_round": self.attack_round}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Play one round (module docstring)."""
        decoded = decode_action(np.asarray(action), self.round, self.num_rounds)
        knobs = (decoded.knobs.strength, decoded.knobs.noise, decoded.knobs.discard)
        tau = (self.round - 1) / self.num_rounds
        spent_before = self.spend_model.epsilon(self.rdp)
        outcome = self.spend_model.spend(self.rdp, decoded.spend_share, self.cap)
        gain = leakage = 0.0
        if outcome is not None:
            sigma, self.rdp = outcome
            gain = self.surrogate.accuracy_gain(tau, self.accuracy, float(np.log(sigma)), knobs,
                                                self._rng)
            gain = float(np.clip(gain, -self.accuracy, 1.0 - self.accuracy))
            leakage = self.surrogate.leakage_after(tau, float(np.log(sigma)), knobs, self._rng)
        spend = (self.spend_model.epsilon(self.rdp) - spent_before) / self.cap
        self.accuracy += gain
        risk = self.risk
        reward = controller_reward(gain, leakage, spend, reward_weights(
            tau, risk, self.privacy_weight, self.epsilon_weight))
        self.round += 1
        observation = self._observe(gain, gain * self.surrogate.loss_slope, leakage, spend)
        done = self.round > self.num_rounds
        return observation, float(reward), done, False, {
            "accuracy": self.accuracy, "leakage": leakage, "spend": spend,
            "epsilon": self.spend_model.epsilon(self.rdp), "cap": self.cap}

    def _observe(self, gain: float, loss_change: float, leakage: float,
                 spend: float) -> np.ndarray:
        attacked = self.round - 1 >= self.attack_round  # the round just played (the runs' label)
        stats = self.surrogate.device_statistics(attacked, self._rng)
        self.risk = stats["risk"]  # the reward weighs the true risk, also when it is hidden
        risks = {k: v if self.use_risk else 0.0 for k, v in stats.items()
                 if k.startswith("risk")}
        self.last = ControllerObservation(
            round_fraction=(self.round - 1) / self.num_rounds,
            budget_left=max(0.0, 1.0 - self.spend_model.epsilon(self.rdp) / self.cap),
            last_spend=spend, **risks, accuracy_change=gain, loss_change=loss_change,
            leakage=leakage,
            update_norm=stats["update_norm"], cosine_to_aggregate=stats["cosine_to_aggregate"])
        return self.last.as_array()
