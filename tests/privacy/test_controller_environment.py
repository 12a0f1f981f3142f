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


def test_transitions_pair_each_round_with_its_sigma_and_the_next_observation():
    from fedmosaic.privacy.controller.surrogate import transitions_from_summary

    def decision(risk, leakage):
        return {"spend-share": 0.3, "risk": risk, "risk-channel": 0.1, "leakage": leakage,
                "update-norm": 1.2, "cosine-to-aggregate": 0.4}

    summary = {
        "initial_accuracy": 0.1,
        "history": [
            {"round": 1, "accuracy": 0.3, "loss": 2.0,
             "controller": {"partition-0": decision(0.0, 0.0), "node-7": decision(0.0, 0.0)}},
            {"round": 2, "accuracy": 0.4, "loss": 1.5,
             "controller": {"partition-0": decision(0.6, 0.05)}},
            {"round": 3, "accuracy": 0.45, "loss": 1.4,
             "controller": {"partition-0": decision(0.9, 0.07)}},
        ],
        "privacy": {"devices": {"0": {"rounds_joined": [1, 3], "over_cap": [],
                                      "segments": [[2.0, 0.1, 10], [8.0, 0.1, 10]]}}},
    }

    found = transitions_from_summary(summary, "run", attacked=frozenset({0}),
                                     attack_start_round=3)

    # round 1 (σ = 2) pairs with round 2's observation; round 2 did not train (no σ);
    # round 3 has no next round; node-7 never got a partition
    assert len(found) == 1
    only = found[0]
    assert only.log_sigma == pytest.approx(np.log(2.0))
    assert (only.accuracy_before, only.accuracy_gain) == pytest.approx((0.1, 0.2))
    assert (only.risk, only.leakage_after, only.update_norm) == (0.6, 0.05, 1.2)
    assert (only.strength, only.noise, only.discard) == (0.0, 0.0, 0.0)  # not applied
    assert only.attacked is False  # the attack starts in round 3
