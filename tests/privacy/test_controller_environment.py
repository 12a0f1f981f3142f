import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from fedmosaic.privacy.accounting import Segment, epsilon_spent
from fedmosaic.privacy.controller.environment import SurrogatePrivacyEnv
from fedmosaic.privacy.controller.surrogate import (
    SpendModel,
    Transition,
    fit_surrogate,
    load_transitions,
    save_transitions,
)

RATE, STEPS, DELTA = 1 / 7, 7, 1e-5


def synthetic_transitions(runs=4, rounds=6, devices=5, seed=0):
    """Transitions whose gain grows with spend (smaller σ) and leakage too, plus noise."""
    rng = np.random.default_rng(seed)
    found = []
    for run in range(runs):
        accuracy = 0.2
        for r in range(1, rounds + 1):
            log_sigmas = rng.uniform(-0.5, 3.0, devices)
            gain = 0.08 * (1 - accuracy) * np.exp(-np.mean(log_sigmas)) + rng.normal(0, 0.005)
            for d in range(devices):
                found.append(Transition(
                    run=f"run-{run}", round_fraction=(r - 1) / rounds, accuracy_before=accuracy,
                    accuracy_gain=gain, loss_change=-2 * gain, log_sigma=float(log_sigmas[d]),
                    strength=0.5, noise=0.0, discard=0.0, risk=0.2 + 0.5 * (d == 0),
                    risk_channel=0.1, risk_sensitivity=0.4, risk_context=0.1,
                    risk_resources=0.2,
                    leakage_after=0.3 * np.exp(-log_sigmas[d]) + rng.normal(0, 0.01),
                    update_norm=1.0, cosine_to_aggregate=0.5, attacked=d == 0 and r > 2))
            accuracy += gain
    return found


@pytest.fixture(scope="module")
def surrogate():
    return fit_surrogate(synthetic_transitions(), initial_accuracy=0.2)


def test_the_environment_passes_gymnasiums_checker(surrogate):
    env = SurrogatePrivacyEnv(surrogate, SpendModel(RATE, STEPS, DELTA), num_rounds=6)

    check_env(env, skip_render_check=True)


def test_an_episode_is_a_run_and_never_passes_the_cap(surrogate):
    env = SurrogatePrivacyEnv(surrogate, SpendModel(RATE, STEPS, DELTA), num_rounds=6,
                              caps=(1.0,))
    env.action_space.seed(0)
    for episode in range(5):
        env.reset(seed=episode)
        steps, done, info = 0, False, {}
        while not done:
            action = np.ones(4, dtype=np.float32) if episode == 0 else env.action_space.sample()
            _, reward, done, truncated, info = env.step(action)
            assert np.isfinite(reward) and not truncated
            steps += 1
        assert steps == 6
        assert info["epsilon"] <= 1.0 + 1e-9


def test_the_spend_model_matches_the_accountant():
    model = SpendModel(RATE, STEPS, DELTA)
    rdp = np.zeros(model.curves.shape[1])
    history = []
    for share in (0.1, 0.5, 0.3):
        sigma, rdp = model.spend(rdp, share, cap=3.0)
        history.append(Segment(sigma, RATE, STEPS))
        assert model.epsilon(rdp) == pytest.approx(epsilon_spent(history, DELTA, "filter"))
    assert model.epsilon(rdp) <= 3.0


def test_a_spend_share_the_cap_cannot_afford_is_a_refusal():
    model = SpendModel(RATE, STEPS, DELTA)

    assert model.spend(np.zeros(model.curves.shape[1]), 1.0, cap=1e-3) is None


def test_the_surrogate_reports_its_error_on_held_out_runs(surrogate, tmp_path):
    path = tmp_path / "transitions.jsonl"
    save_transitions(synthetic_transitions(), path)

    assert len(load_transitions(path)) == surrogate.transitions
    errors = surrogate.held_out_error
    assert surrogate.runs == 4
    # the fitted models beat predicting the mean on runs they never saw
    assert errors["accuracy_gain"] < errors["accuracy_gain_baseline"]
    assert errors["leakage"] < errors["leakage_baseline"]


def test_fitting_needs_two_runs():
    with pytest.raises(ValueError, match=">= 2 runs"):
        fit_surrogate(synthetic_transitions(runs=1), initial_accuracy=0.2)
