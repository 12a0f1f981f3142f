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


@pytest.mark.parametrize(("overrides", "conflict"), [
    ({"central-dp": "server"}, "central-dp=server"),
    ({"strategy": "trimmed-mean"}, "strategy=trimmed-mean"),
    ({"strategy": "krum"}, "strategy=krum"),
    ({"mode": "async"}, "mode=async"),
    ({"attack": "alie", "malicious-fraction": 0.2}, "attack=alie"),
    ({"controller": "static", "dp": True}, "controller=static"),
    ({"num-edges": 2, "device-topk": 0.1}, "device-topk=0.1"),
    ({"num-edges": 2, "edge-aggregation": "median"}, "edge-aggregation=median"),
    ({"min-valid-replies": 2}, "min-valid-replies=2"),
    ({"num-clients": 5, "num-edges": 3, "edge-role": "cloud"}, "needs at least 2 of them"),
])
def test_secure_aggregation_refuses_what_needs_each_update(overrides, conflict):
    with pytest.raises(ValueError, match=f"hides each device's update.*{conflict}"):
        RunConfig.from_mapping({"secure-aggregation": True, **overrides})
    RunConfig.from_mapping(overrides)  # fine without it


def test_deployed_edges_with_two_devices_each_run_secure_aggregation():
    RunConfig.from_mapping({"secure-aggregation": True, "num-clients": 4, "num-edges": 2,
                            "edge-role": "cloud"})


@pytest.mark.parametrize(("overrides", "message"), [
    ({"secure-aggregation-clip": 0.0}, "secure-aggregation-clip must be finite and > 0"),
    ({"secure-aggregation-max-weight": 0}, "secure-aggregation-max-weight must be >= 1"),
])
def test_secure_aggregation_ranges(overrides, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.from_mapping({"secure-aggregation": True, **overrides})


def test_secure_aggregation_composes_with_client_clipping_and_server_optimizers():
    for overrides in ({"central-dp": "client"}, {"strategy": "fedadam"},
                      {"num-edges": 2, "device-bits": 8}, {"dp": True}):
        assert RunConfig.from_mapping({"secure-aggregation": True, **overrides})
