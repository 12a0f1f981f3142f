import math

import numpy as np
import pytest

from fedmosaic.privacy.anonymizer.knobs import AnonymizerKnobs
from fedmosaic.privacy.controller.observation import (
    MIN_SHARE,
    ControllerObservation,
    decode_action,
    even_share,
)
from fedmosaic.privacy.controller.policies import (
    AlpinePolicy,
    BanditPolicy,
    build_policy,
)
from fedmosaic.privacy.controller.reward import controller_reward, reward_weights

ROUNDS = 10


def spent_fractions(policy, rounds=ROUNDS):
    """The cumulative share of a budget a policy's shares spend, round by round (additive)."""
    left, spent = 1.0, []
    for r in range(1, rounds + 1):
        share = policy.decide(ControllerObservation(), r, rounds, "d").spend_share
        left -= share * left
        spent.append(1.0 - left)
    return spent


def test_static_spends_evenly_and_everything_by_the_last_round():
    spent = spent_fractions(build_policy("static"))

    assert spent == pytest.approx([r / ROUNDS for r in range(1, ROUNDS + 1)], abs=1e-9)


@pytest.mark.parametrize("name", ["linear", "exponential"])
def test_schedules_spend_more_late_and_everything_by_the_end(name):
    spent = spent_fractions(build_policy(name))
    per_round = np.diff([0.0, *spent])

    assert spent[-1] == pytest.approx(1.0)
    assert np.all(np.diff(per_round) > -1e-9)  # spend per round never falls
    assert per_round[0] < 1 / ROUNDS < per_round[-1]


def test_schedules_send_their_own_shares_by_hand():
    # F(t) = t(t+1)/(T(T+1)), T = 10: round 1 spends 2/110 of the budget;
    # exponential: (1.5 − 1)/(1.5^10 − 1) in round 1
    linear, exponential = build_policy("linear"), build_policy("exponential")
    seen = ControllerObservation()

    assert linear.decide(seen, 1, ROUNDS, "d").spend_share == pytest.approx(2 / 110)
    assert exponential.decide(seen, 1, ROUNDS, "d").spend_share == pytest.approx(
        0.5 / (1.5 ** 10 - 1))


def test_alpine_spends_less_the_higher_the_risk():
    policy = AlpinePolicy()
    shares = [policy.decide(ControllerObservation(risk=r), 3, ROUNDS, "d").spend_share
              for r in (0.0, 0.3, 1.0)]

    assert shares[0] == pytest.approx(math.log(4) * even_share(3, ROUNDS))
    assert shares[0] > shares[1] > shares[2] == MIN_SHARE


def test_the_bandit_pulls_one_arm_a_round_tries_each_then_prefers_the_best():
    policy = BanditPolicy()
    payoff = {-1.0: 0.0, -0.5: 0.1, 0.0: 0.2, 0.5: 1.0, 1.0: 0.3}
    played = []
    for server_round in range(1, 31):
        shares = {policy.decide(ControllerObservation(), server_round, 40, f"d{d}").spend_share
                  for d in range(3)}
        assert len(shares) == 1  # every device of a round gets the round's arm
        level = policy.levels[policy.arm]
        played.append(level)
        for d in range(3):
            policy.learn(f"d{d}", payoff[level])

    assert set(played[:5]) == set(payoff)
    assert played[-10:].count(0.5) >= 7
    assert policy.counts.sum() == 29  # the last round's arm is credited when the next starts


def test_schedule_policies_keep_the_runs_knobs():
    knobs = AnonymizerKnobs(strength=0.7, noise=0.2, discard=0.1)

    action = build_policy("static", knobs).decide(ControllerObservation(), 1, ROUNDS, "d")

    assert action.knobs.strength == pytest.approx(0.7)
    assert action.knobs.noise == pytest.approx(0.2)
    assert action.knobs.discard == pytest.approx(0.1)


def test_decoding_is_bounded():
    assert decode_action(np.array([0.5, 0, 0, 0]), 2, ROUNDS).spend_share == pytest.approx(
        2.0 / 9)  # 4^0.5 times the even share 1/9
    extreme = decode_action(np.array([-50.0, 50.0, 50.0, 50.0]), 1, 100)
    assert extreme.spend_share == pytest.approx(max(MIN_SHARE, 0.01 / 4))
    assert (extreme.knobs.strength, extreme.knobs.noise, extreme.knobs.discard) == (
        1.0, 1.0, 0.5)


@pytest.mark.parametrize("vector", [np.zeros(3), np.array([0.0, np.nan, 0.0, 0.0])])
def test_a_malformed_action_is_refused(vector):
    with pytest.raises(ValueError, match="4 finite numbers"):
        decode_action(vector, 1, ROUNDS)


def test_unknown_policy_and_missing_policy_file_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="controller must be one of"):
        build_policy("greedy")
    with pytest.raises(FileNotFoundError, match="needs a policy file"):
        build_policy("td3", policy_file=str(tmp_path / "missing.zip"))


def test_reward_weights_put_privacy_first_early_and_more_with_risk():
    early, late = (reward_weights(t, 0.2, 1.0, 0.5) for t in (0.0, 1.0))
    risky = reward_weights(0.0, 0.9, 1.0, 0.5)

    assert early.privacy > late.privacy and early.utility < late.utility
    assert risky.privacy > early.privacy
    # w_u ΔU·10 − w_p·ℓ − w_ε·e by hand: 0.5·10·0.02 − 1.5·1.2·0.1 − 0.5·0.1
    assert controller_reward(0.02, 0.1, 0.1, early) == pytest.approx(0.1 - 0.18 - 0.05)


def test_policy_fingerprints_differ_by_policy_and_parameters():
    prints = {build_policy(n).fingerprint() for n in ("static", "linear", "exponential",
                                                       "alpine", "bandit")}

    assert len(prints) == 5
    assert build_policy("random", seed=1).fingerprint() != build_policy(
        "random", seed=2).fingerprint()
