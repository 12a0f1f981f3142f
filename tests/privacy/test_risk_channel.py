import math

import numpy as np
import pytest
import torch

from fedmosaic.privacy.risk.channel import (
    CHANNEL_FIELDS,
    ChannelModel,
    ChannelObservation,
    features,
    robust_scale,
    score_from_errors,
)

GOOD = {
    "round_trip_seconds": 1.5,
    "reply_bytes": 2e5,
    "update_norm": 1.0,
    "cosine_to_aggregate": 0.6,
    "rejections": 0.0,
}


def population(n, anomalous_fraction, seed, subtle=False):
    """Synthetic rounds; a fraction has 10x bytes and 5x round trip, or a negative cosine.

    With ``subtle``, the anomalous fraction instead has a cosine near 0 (all else normal).
    Well-behaved devices are never rejected (a rejection is itself a warning sign).
    """
    rng = np.random.default_rng(seed)
    reply_bytes = rng.lognormal(math.log(2e5), 0.05, n)
    round_trip = 0.5 + reply_bytes / 1e6 * rng.lognormal(0.0, 0.3, n)
    norm = rng.lognormal(0.0, 0.2, n)
    cosine = np.clip(rng.normal(0.6, 0.1, n), -1.0, 1.0)
    rejections = np.zeros(n)
    labels = np.zeros(n, dtype=bool)
    chosen = rng.choice(n, round(anomalous_fraction * n), replace=False)
    labels[chosen] = True
    if subtle:
        cosine[chosen] = rng.normal(0.0, 0.1, len(chosen))
    else:
        slow, turned = chosen[: len(chosen) // 2], chosen[len(chosen) // 2 :]
        reply_bytes[slow] *= 10.0
        round_trip[slow] *= 5.0
        cosine[turned] = -rng.uniform(0.2, 0.8, len(turned))
    rows = zip(round_trip, reply_bytes, norm, cosine, rejections, strict=True)
    return [ChannelObservation(*map(float, row)) for row in rows], labels


def f1_score(predicted, truth):
    tp = np.sum(predicted & truth)
    return 2 * tp / (2 * tp + np.sum(predicted & ~truth) + np.sum(~predicted & truth))


# --- ChannelObservation ----------------------------------------------------------------------


def test_observation_keeps_its_fields_in_feature_order():
    assert ChannelObservation(**GOOD).as_tuple() == tuple(GOOD[f] for f in CHANNEL_FIELDS)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("round_trip_seconds", float("nan"), "round_trip_seconds must be finite, got nan"),
        ("reply_bytes", float("inf"), "reply_bytes must be finite, got inf"),
        ("update_norm", -0.1, "update_norm must be >= 0, got -0.1"),
        ("rejections", -1.0, "rejections must be >= 0"),
        ("cosine_to_aggregate", 1.5, r"cosine_to_aggregate must lie in \[-1, 1\], got 1.5"),
        ("cosine_to_aggregate", float("-inf"), "cosine_to_aggregate must be finite"),
        ("reply_bytes", "200", "reply_bytes must be a finite number, got '200'"),
        ("rejections", None, "rejections must be a finite number, got None"),
    ],
)
def test_observation_rejects_bad_values_naming_field_and_value(field, value, message):
    with pytest.raises(ValueError, match=message):
        ChannelObservation(**{**GOOD, field: value})


def test_cosine_round_off_is_tolerated():
    ChannelObservation(**{**GOOD, "cosine_to_aggregate": -1.0 - 1e-9})


# --- features and scaling --------------------------------------------------------------------


def test_features_are_log1p_except_the_cosine():
    x = features([ChannelObservation(**GOOD)])

    expected = [math.log1p(1.5), math.log1p(2e5), math.log1p(1.0), 0.6, 0.0]
    np.testing.assert_allclose(x, [expected], rtol=1e-12)


def test_robust_scale_is_the_iqr_scale_floored():
    x = np.column_stack([
        [0.0, 1.0, 2.0, 3.0, 4.0],  # IQR 2
        [0.0, 0.0, 0.0, 0.0, 5.0],  # IQR 0
        [0.0, 0.01, 0.02, 0.03, 0.04],  # IQR 0.02
    ])

    center, scale = robust_scale(x)

    np.testing.assert_allclose(center, [2.0, 0.0, 0.02])
    np.testing.assert_allclose(scale, [2.0 / 1.349, 0.1, 0.1])


def test_score_from_errors_by_hand():
    np.testing.assert_allclose(
        score_from_errors(np.array([0.0, 2.0, 4.0, 6.0]), 2.0), [0.0, 0.5, 0.75, 0.875]
    )
    with pytest.raises(ValueError, match="reference_error must be > 0"):
        score_from_errors(np.array([1.0]), 0.0)


# --- ChannelModel ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_injected_anomalies_are_flagged_far_above_chance(seed):
    history, _ = population(400, 0.05, seed)  # the history holds anomalies too
    fresh, truth = population(400, 0.05, seed + 100)
    model = ChannelModel(seed=seed).fit(history)

    scores = model.score(fresh)
    errors = model.reconstruction_errors(fresh)
    top = np.zeros_like(truth)
    top[np.argsort(-errors)[: truth.sum()]] = True

    # Chance: flagging 5 % at random scores F1 ≈ 0.05.
    assert f1_score(scores >= 0.9, truth) >= 0.8
    assert f1_score(top, truth) >= 0.8
    assert np.median(scores[~truth]) < 0.2
    assert np.all((scores >= 0.0) & (scores < 1.0))


def test_denoising_keeps_an_anomaly_along_one_feature_visible():
    # Cosine near 0 instead of 0.6, all else normal, 5 % of the history too: a plain
    # autoencoder can pass the cosine through its bottleneck and reconstruct the anomaly.
    def top_f1(noise, seed):
        history, _ = population(400, 0.05, seed, subtle=True)
        fresh, truth = population(400, 0.05, seed + 100, subtle=True)
        errors = ChannelModel(seed=seed, noise=noise).fit(history).reconstruction_errors(fresh)
        top = np.zeros_like(truth)
        top[np.argsort(-errors)[: truth.sum()]] = True
        return f1_score(top, truth)

    denoising = np.mean([top_f1(0.5, seed) for seed in range(3)])
    plain = np.mean([top_f1(0.0, seed) for seed in range(3)])

    assert denoising >= 0.85
    assert plain < denoising


def test_fit_is_deterministic_given_the_seed_and_leaves_the_global_rng_alone():
    observations, _ = population(200, 0.05, 3)
    state = torch.get_rng_state()

    first = ChannelModel(seed=7).fit(observations).reconstruction_errors(observations)
    second = ChannelModel(seed=7).fit(observations).reconstruction_errors(observations)
    other = ChannelModel(seed=8).fit(observations).reconstruction_errors(observations)

    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)
    assert torch.equal(torch.get_rng_state(), state)


def test_refit_on_a_grown_history_replaces_the_reference():
    observations, _ = population(300, 0.0, 4)
    model = ChannelModel(seed=0).fit(observations[:50])
    first_reference = model.reference_errors

    model.fit(observations)

    # The reference errors are those of the held-out calibration quarter.
    assert model.reference_errors.shape == (75,)
    assert first_reference.shape == (round(0.25 * 50),)
    assert model.reference_error == pytest.approx(10 * np.median(model.reference_errors))
    refit = ChannelModel(seed=0).fit(observations).reconstruction_errors(observations[:5])
    np.testing.assert_array_equal(model.reconstruction_errors(observations[:5]), refit)


def test_unfitted_model_and_tiny_fit_sets_raise_clearly():
    model = ChannelModel()
    observations = [ChannelObservation(**GOOD)] * 7

    with pytest.raises(RuntimeError, match=r"not fitted: call fit"):
        model.score(observations)
    with pytest.raises(ValueError, match="at least 8 observations, got 7"):
        model.fit(observations)
    assert not model.is_fitted


def test_constant_history_scores_identical_observations_zero():
    model = ChannelModel().fit([ChannelObservation(**GOOD)] * 20)

    assert model.reconstruction_errors([]).shape == (0,)
    assert model.score([ChannelObservation(**GOOD)])[0] == pytest.approx(0.0, abs=1e-3)
    odd = ChannelObservation(**{**GOOD, "cosine_to_aggregate": -0.9})
    assert model.score([odd])[0] > 0.99


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("hidden", 0),
        ("latent", 5),
        ("latent", 0),
        ("epochs", 0),
        ("learning_rate", 0.0),
        ("trim", 0.5),
        ("reference_multiple", -1.0),
        ("calibration", 0.0),
        ("calibration", 0.6),
        ("noise", -0.1),
        ("clip", 0.0),
    ],
)
def test_model_rejects_bad_settings(argument, value):
    with pytest.raises(ValueError, match=argument):
        ChannelModel(**{argument: value})
