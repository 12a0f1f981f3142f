import pytest

from fedmosaic.config import RunConfig


def test_defaults_are_valid_and_dp_is_off():
    config = RunConfig.from_mapping({})

    assert (config.dp, config.dp_epsilon_budget, config.delta, config.dp_accountant) == (
        False, 8.0, 1e-5, "rdp")
    assert config.central_dp == "none"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"dp-epsilon-budget": 0.0}, "dp-epsilon-budget must be finite and > 0, got 0.0"),
    ({"dp-epsilon-budget": float("inf")}, "dp-epsilon-budget must be finite and > 0"),
    ({"delta": 1.0}, r"delta must lie in \(0, 1\), got 1.0"),
    ({"delta": 0.0}, r"delta must lie in \(0, 1\)"),
    ({"max-grad-norm": 0.0}, "max-grad-norm must be finite and > 0"),
    ({"central-noise-multiplier": -1.0}, "central-noise-multiplier must be finite and > 0"),
    ({"central-clipping-norm": 0.0}, "central-clipping-norm must be finite and > 0"),
    ({"dp-accountant": "gdp"}, "dp-accountant must be one of"),
    ({"grad-sample-mode": "ew"}, "grad-sample-mode must be one of"),
    ({"central-dp": "local"}, "central-dp must be one of"),
])
def test_bad_privacy_settings_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.from_mapping(overrides)
