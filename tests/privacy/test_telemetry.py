import math

import numpy as np
import pytest

from fedmosaic.data.modality import ModalityKind, ModalitySpec, MultimodalArrays
from fedmosaic.privacy.exceptions import BudgetExhausted
from fedmosaic.privacy.telemetry import (
    TelemetryField,
    TelemetryLedger,
    release_telemetry,
    sensor_fields,
    sensor_readings,
)

HEART = TelemetryField("heart-rate", 40.0, 200.0, epsilon=0.5, budget=1.2)
STEPS = TelemetryField("steps", 0.0, 1000.0, epsilon=0.25, budget=1.0)


def test_sequential_composition_adds_epsilon_and_withholds_a_spent_field():
    ledger = TelemetryLedger()
    rng = np.random.default_rng(0)
    readings = {"heart-rate": 72.0, "steps": 350.0}

    releases = [release_telemetry(readings, [HEART, STEPS], ledger, rng) for _ in range(4)]

    # heart-rate: 0.5 + 0.5 = 1.0 <= 1.2, a third release would need 1.5 > 1.2
    assert [r.epsilon_spent for r in releases] == [0.75, 0.75, 0.25, 0.25]
    assert [r.withheld for r in releases] == [(), (), ("heart-rate",), ("heart-rate",)]
    assert ledger.spent("heart-rate") == 1.0
    assert ledger.spent("steps") == 1.0
    assert ledger.total == 2.0
    assert sorted(releases[2].values) == ["steps"]


def test_released_values_stay_in_the_field_domain_even_for_out_of_range_readings():
    ledger = TelemetryLedger()
    field = TelemetryField("temp", -10.0, 50.0, epsilon=1.0, budget=1000.0)
    rng = np.random.default_rng(1)

    values = [release_telemetry({"temp": 99.0}, [field], ledger, rng).values["temp"]
              for _ in range(200)]

    assert min(values) >= -10.0 and max(values) <= 50.0
    assert ledger.spent("temp") == 200.0


def test_ledger_round_trips_through_its_state_dict():
    ledger = TelemetryLedger()
    ledger.spend(HEART)

    restored = TelemetryLedger(ledger.state_dict())

    assert restored.spent("heart-rate") == 0.5
    restored.spend(HEART)
    with pytest.raises(BudgetExhausted, match="'heart-rate' has spent 1 of its budget 1.2"):
        restored.spend(HEART)
    assert restored.spent("heart-rate") == 1.0


def test_sensor_readings_and_fields_cover_every_channel_of_sensor_modalities():
    specs = (ModalitySpec("accel", ModalityKind.SENSOR, (2, 4)),
             ModalitySpec("log", ModalityKind.TOKENS, (3,), vocab_size=5))
    accel = np.array([[[1, 1, 1, 1], [0, 2, 0, 2]],
                      [[3, 3, 3, 3], [0, 2, 0, 2]],
                      [[9, 9, 9, 9], [9, 9, 9, 9]]], dtype=np.float32)
    arrays = MultimodalArrays(inputs={"accel": accel, "log": np.zeros((3, 3), dtype=np.int64)},
                              mask=np.array([[True, True], [True, True], [False, True]]),
                              labels=np.zeros(3, dtype=np.int64))

    readings = sensor_readings(arrays, specs)
    fields = sensor_fields(specs, bound=3.0, epsilon=0.5, budget=2.0)

    # the third sample lacks 'accel' and is ignored; channel 0 = {1 x4, 3 x4}
    assert readings == pytest.approx({"accel.ch0.mean": 2.0, "accel.ch0.std": 1.0,
                                      "accel.ch1.mean": 1.0, "accel.ch1.std": 1.0})
    assert [(f.name, f.lower, f.upper) for f in fields] == [
        ("accel.ch0.mean", -3.0, 3.0), ("accel.ch0.std", 0.0, 3.0),
        ("accel.ch1.mean", -3.0, 3.0), ("accel.ch1.std", 0.0, 3.0)]


def test_release_averaged_over_many_devices_estimates_the_population_mean():
    # Local DP still lets the edge estimate aggregates: the bounded Laplace is biased towards
    # the domain centre, so the estimate is checked against the mechanism's exact mean.
    field = TelemetryField("x", 0.0, 1.0, epsilon=2.0, budget=2.0)
    rng = np.random.default_rng(2)
    truth = rng.uniform(0.2, 0.4, 20_000)

    noisy = [release_telemetry({"x": t}, [field], TelemetryLedger(), rng).values["x"]
             for t in truth[:4000]]

    grid = np.linspace(0.0, 1.0, 20_001)
    mechanism = field.mechanism()
    expected = np.mean([np.trapezoid(grid * mechanism.density(grid, t), grid)
                        for t in truth[:4000:40]])
    assert np.mean(noisy) == pytest.approx(expected, abs=0.02)


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "", "lower": 0.0, "upper": 1.0, "epsilon": 1.0, "budget": 1.0}, "name"),
    ({"name": "a", "lower": 0.0, "upper": 1.0, "epsilon": 0.0, "budget": 1.0}, "epsilon"),
    ({"name": "a", "lower": 1.0, "upper": 0.0, "epsilon": 1.0, "budget": 1.0}, "lower < upper"),
    ({"name": "a", "lower": 0.0, "upper": 1.0, "epsilon": 1.0, "budget": 0.5}, "budget"),
    ({"name": "a", "lower": 0.0, "upper": 1.0, "epsilon": 1.0, "budget": math.inf}, "budget"),
])
def test_bad_fields_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TelemetryField(**kwargs)


@pytest.mark.parametrize("readings, fields, message", [
    ({"heart-rate": 70.0}, [HEART, HEART], "unique names"),
    ({"heart-rate": 70.0}, [HEART, STEPS], r"lack telemetry field\(s\) \['steps'\]"),
    ({"heart-rate": math.nan}, [HEART], "must be finite"),
])
def test_bad_releases_are_rejected(readings, fields, message):
    with pytest.raises(ValueError, match=message):
        release_telemetry(readings, fields, TelemetryLedger(), np.random.default_rng(0))


def test_bad_ledger_state_is_rejected():
    with pytest.raises(ValueError, match="'steps' must be a finite ε >= 0"):
        TelemetryLedger({"steps": -1.0})


def test_sensor_fields_reject_a_bad_bound():
    with pytest.raises(ValueError, match="telemetry bound"):
        sensor_fields((), bound=0.0, epsilon=1.0, budget=1.0)
