import math

import numpy as np
import pytest
from scipy import stats

from fedmosaic.data.modality import ModalityKind, ModalitySpec
from fedmosaic.privacy.risk.channel import ChannelModel, ChannelObservation
from fedmosaic.privacy.risk.fuzzy import fuse
from fedmosaic.privacy.risk.perception import (
    DeviceObservation,
    RiskPerception,
    RiskScore,
    resource_score,
)
from fedmosaic.privacy.risk.sensitivity import (
    DEFAULT_SENSITIVITY,
    SensitivityTable,
    context_scores,
    entropy_weights,
    parse_sensitivities,
)

NORMAL = ChannelObservation(1.5, 2e5, 1.0, 0.6, 0.0)


def normal_channel(rng):
    return ChannelObservation(
        round_trip_seconds=float(rng.lognormal(math.log(1.5), 0.2)),
        reply_bytes=float(rng.lognormal(math.log(2e5), 0.05)),
        update_norm=float(rng.lognormal(0.0, 0.2)),
        cosine_to_aggregate=float(np.clip(rng.normal(0.6, 0.1), -1, 1)),
        rejections=0.0,
    )


def device(channel=NORMAL, modalities=("accelerometer",), cpu=0.2, memory=0.3):
    return DeviceObservation(channel, modalities, cpu, memory)


# --- sensitivity table -----------------------------------------------------------------------


def test_table_lookup_order_is_table_then_kind_then_unknown():
    specs = [ModalitySpec("frames", ModalityKind.IMAGE, (1, 8, 8)),
             ModalitySpec("watch", ModalityKind.SENSOR, (3, 50))]
    table = SensitivityTable({"Audio": 0.7}, specs=specs, unknown=0.95)

    assert table["image"] == 0.9
    assert table[" AUDIO "] == 0.7  # override, case- and space-insensitive
    assert table["frames"] == 0.9  # kind image
    assert table["watch"] == 0.5  # kind sensor
    assert table["lidar"] == 0.95
    assert SensitivityTable()["lidar"] == 0.9  # default unknown: the most sensitive kind
    assert table.device(["watch", "frames"]) == 0.9
    assert SensitivityTable({"x": 0.1}, defaults=False).as_dict() == {"x": 0.1}


def test_default_table_follows_the_brief():
    assert (DEFAULT_SENSITIVITY["image"], DEFAULT_SENSITIVITY["audio"]) == (0.9, 0.8)
    assert (DEFAULT_SENSITIVITY["logs"], DEFAULT_SENSITIVITY["accelerometer"]) == (0.6, 0.5)


@pytest.mark.parametrize("value", [1.5, -0.1, float("nan"), "0.5", True])
def test_table_rejects_out_of_range_sensitivities(value):
    with pytest.raises(ValueError, match=r"sensitivity of 'image' must be a number in \[0, 1\]"):
        SensitivityTable({"image": value})


def test_parse_sensitivities():
    assert parse_sensitivities("image=0.9,audio=0.8") == {"image": 0.9, "audio": 0.8}
    assert parse_sensitivities(" Image = 1 , logs=0 ") == {"image": 1.0, "logs": 0.0}
    assert parse_sensitivities("  ") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image:0.9", r"expected|'name=value\[,name=value...\]'.*got entry 'image:0.9'"),
        ("image=0.9,", "got entry ''"),
        ("=0.5", "got entry '=0.5'"),
        ("image=high", "not a number in entry 'image=high'"),
        ("image=1.5", "got 1.5 in entry 'image=1.5'"),
        ("image=nan", "got nan"),
        ("image=0.5,IMAGE=0.6", "'image' twice"),
    ],
)
def test_parse_sensitivities_errors_show_format_and_offender(text, message):
    with pytest.raises(ValueError, match=message) as error:
        parse_sensitivities(text)
    assert "name=value" in str(error.value) or "twice" in str(error.value)


# --- entropy weights and context -------------------------------------------------------------


def test_entropy_weights_by_hand():
    # m = 4 devices; a held by all (E = 1), b by one (E = 0), c by two (E = ln2/ln4 = 1/2).
    holdings = [["a", "b", "c"], ["a", "c"], ["a"], ["a"]]

    weights = entropy_weights(holdings)

    assert weights == pytest.approx({"a": 0.0, "b": 2 / 3, "c": 1 / 3}, abs=1e-12)


def test_entropy_weights_match_the_generic_formula_on_random_holdings():
    rng = np.random.default_rng(0)
    x = rng.random((30, 6)) < rng.random(6)  # devices x fields, varied prevalence
    x[0] = True  # every field held by someone
    names = [f"f{j}" for j in range(6)]
    holdings = [[n for n, held in zip(names, row, strict=True) if held] for row in x]

    entropy = np.array([stats.entropy(x[:, j] / x[:, j].sum()) / math.log(30) for j in range(6)])
    expected = (1 - entropy) / (1 - entropy).sum()

    got = entropy_weights(holdings)
    np.testing.assert_allclose([got[n] for n in names], expected, atol=1e-12)


@pytest.mark.parametrize(
    "holdings", [[["a", "b"], ["b", "a"]], [["a", "b"]], [["a", "b"], ["A", "b", "b"]]]
)
def test_no_discriminating_field_gives_equal_weights(holdings):
    assert entropy_weights(holdings) == pytest.approx({"a": 0.5, "b": 0.5})


def test_no_fields_give_no_weights():
    assert entropy_weights([]) == {}
    assert entropy_weights([[], []]) == {}


def test_context_is_the_entropy_weighted_sensitivity_of_held_fields():
    table = SensitivityTable({"a": 0.5, "b": 0.9, "c": 0.6}, defaults=False)
    holdings = {1: ["a", "b", "c"], 2: ["a", "c"], 3: ["a"], 4: ["a"]}

    context = context_scores(holdings, table)

    assert context == pytest.approx(
        {1: 2 / 3 * 0.9 + 1 / 3 * 0.6, 2: 1 / 3 * 0.6, 3: 0.0, 4: 0.0}, abs=1e-12
    )


# --- device observations and scores ----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"cpu": 1.5}, ValueError, r"cpu_fraction must be a number in \[0, 1\], got 1.5"),
        ({"memory": float("nan")}, ValueError, "memory_fraction must be a number in"),
        ({"cpu": None}, ValueError, "cpu_fraction"),
        ({"modalities": ()}, ValueError, "at least one non-empty name, got ()"),
        ({"modalities": ("image", "")}, ValueError, "non-empty name"),
        ({"modalities": "image"}, ValueError, "got the string 'image'"),
        ({"channel": (1.0, 2.0, 3.0, 0.5, 0.0)}, TypeError, "must be a ChannelObservation"),
    ],
)
def test_device_observation_rejects_bad_inputs(kwargs, error, message):
    with pytest.raises(error, match=message):
        device(**kwargs)


def test_device_observation_stores_modalities_as_a_tuple():
    assert device(modalities=["image", "audio"]).modalities == ("image", "audio")


def test_resource_score_is_the_scarcer_resource():
    assert resource_score(0.2, 0.7) == 0.7


def test_risk_score_metrics_are_flat_floats():
    score = RiskScore(score=0.4, channel=0.1, sensitivity=0.9, context=0.2, resources=0.5)

    assert score.to_metrics() == {
        "risk": 0.4,
        "risk-channel": 0.1,
        "risk-sensitivity": 0.9,
        "risk-context": 0.2,
        "risk-resources": 0.5,
    }


# --- RiskPerception --------------------------------------------------------------------------


def cohort(rng, size, anomalous=()):
    observations = {}
    for i in range(size):
        channel = normal_channel(rng)
        if i in anomalous:
            channel = ChannelObservation(channel.round_trip_seconds * 5, channel.reply_bytes * 10,
                                         channel.update_norm, -0.5, 0.0)
        modalities = ("accelerometer", "camera") if i % 4 == 0 else ("accelerometer",)
        observations[f"node-{i}"] = device(channel, modalities, rng.random(), rng.random())
    return observations


def test_scores_before_the_first_fit_use_the_channel_prior():
    perception = RiskPerception(min_history=32, prior_channel=0.5)

    scores = perception.assess(1, cohort(np.random.default_rng(0), 10))

    assert perception.last_fit_round is None
    assert {s.channel for s in scores.values()} == {0.5}


def test_assess_scores_every_device_in_unit_interval_with_its_parts():
    rng = np.random.default_rng(1)
    perception = RiskPerception(channel_model=ChannelModel(seed=0), min_history=32)
    perception.assess(1, cohort(rng, 40))  # fills the history and fits

    observations = cohort(rng, 40, anomalous={3, 7})
    scores = perception.assess(2, observations)

    assert set(scores) == set(observations)
    for device_id, risk in scores.items():
        for value in risk.to_metrics().values():
            assert 0.0 <= value <= 1.0
        assert risk.score == pytest.approx(fuse(risk.parts(), perception.weights), abs=1e-12)
        held = observations[device_id].modalities
        assert risk.sensitivity == (0.9 if "camera" in held else 0.5)
        assert risk.resources == max(observations[device_id].cpu_fraction,
                                     observations[device_id].memory_fraction)
    normal = [s.channel for d, s in scores.items() if d not in {"node-3", "node-7"}]
    assert min(scores["node-3"].channel, scores["node-7"].channel) > 0.9 > max(normal)


def test_more_sensitive_data_means_more_risk_all_else_equal():
    perception = RiskPerception()
    scores = perception.assess(0, {"plain": device(modalities=("accelerometer",)),
                                   "camera": device(modalities=("image",))})

    assert scores["camera"].sensitivity > scores["plain"].sensitivity
    assert scores["camera"].score > scores["plain"].score


def test_refits_on_schedule_and_history_stays_bounded():
    rng = np.random.default_rng(2)
    perception = RiskPerception(history_size=64, min_history=16, refit_every=3,
                                refit_after_new=1000)
    fits = []
    for server_round in range(1, 9):
        perception.assess(server_round, cohort(rng, 10))
        fits.append(perception.last_fit_round)

    assert fits == [None, 2, 2, 2, 5, 5, 5, 8]
    assert perception.history_length == 64


def test_refits_early_when_enough_new_observations_arrive():
    rng = np.random.default_rng(3)
    perception = RiskPerception(min_history=16, refit_every=100, refit_after_new=25)
    fits = []
    for server_round in range(1, 6):
        perception.assess(server_round, cohort(rng, 10))
        fits.append(perception.last_fit_round)

    # Fitted in round 2 (20 observations >= 16); rounds 3-5 bring 30 >= 25 new ones.
    assert fits == [None, 2, 2, 2, 5]


def test_assess_rejects_bad_inputs_and_accepts_an_empty_round():
    perception = RiskPerception()

    assert perception.assess(1, {}) == {}
    with pytest.raises(ValueError, match="server_round must be an integer >= 0, got -1"):
        perception.assess(-1, {"a": device()})
    with pytest.raises(ValueError, match="server_round"):
        perception.assess(1.0, {"a": device()})
    with pytest.raises(TypeError, match="observation of device 'a' must be a DeviceObservation"):
        perception.assess(1, {"a": NORMAL})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_history": 4}, "min_history"),
        ({"history_size": 16, "min_history": 32}, "min_history <= history_size"),
        ({"refit_every": 0}, "refit_every"),
        ({"prior_channel": 1.5}, "prior_channel"),
        ({"comparisons": [[1, 9, 1 / 9], [1 / 9, 1, 9], [9, 1 / 9, 1]]}, "inconsistent"),
        ({"comparisons": [[1, 2], [0.5, 1]]}, "2 x 2 but 4 criteria"),
    ],
)
def test_perception_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RiskPerception(**kwargs)
