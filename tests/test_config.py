import dataclasses
import re
from pathlib import Path

import pytest

from fedmosaic.config import (
    RunConfig,
    config_table,
    default_run_config,
    parse_overrides,
    sampled_nodes,
)


def test_defaults_come_from_pyproject():
    config = RunConfig.from_mapping({})

    assert config.to_mapping() == {**default_run_config()}
    assert config.dataset == "smartwatch"
    assert config.num_clients == 10


def test_overrides_replace_defaults_and_ints_become_floats():
    config = RunConfig.from_mapping({"num-clients": 4, "learning-rate": 1})

    assert config.num_clients == 4
    assert config.learning_rate == 1.0
    assert isinstance(config.learning_rate, float)


def test_round_trip():
    config = RunConfig.from_mapping({"strategy": "fedprox", "proximal-mu": 0.1})

    assert RunConfig.from_mapping(config.to_mapping()) == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num-clients": 0}, "num-clients must be >= 1"),
        ({"synthetic-noise": 0.0}, "synthetic-noise must be finite and > 0, got 0.0"),
        ({"sensor-encoder": "wavelets"}, "sensor-encoder must be one of"),
        ({"edge-aggregation": "mode"}, "edge-aggregation must be one of"),
        ({"hidden-dim": 0}, "hidden-dim must be >= 1"),
        ({"trim-fraction": 0.5}, r"trim-fraction must lie in \[0, 0.5\), got 0.5"),
        ({"max-update-norm": -1.0}, "max-update-norm must be finite and >= 0"),
        ({"min-valid-replies": 0}, "min-valid-replies must be >= 1, got 0"),
        ({"num-malicious-nodes": 10}, r"num-malicious-nodes must lie in \[0, num-clients=10\)"),
        ({"attack": "poison"}, "attack must be one of"),
        ({"malicious-fraction": 1.0}, r"malicious-fraction must lie in \[0, 1\), got 1.0"),
        ({"fraction-train": 1.5}, "fraction-train must lie in"),
        ({"fraction-train": 0.0}, "fraction-train must be > 0"),
        ({"learning-rate": 0.0}, "learning-rate must be > 0"),
        ({"proximal-mu": -1.0}, "proximal-mu must be >= 0"),
        ({"server-learning-rate": 0.0}, "server-learning-rate must be finite and > 0, got 0.0"),
        ({"server-learning-rate": float("inf")}, "server-learning-rate must be finite"),
        ({"server-momentum": 1.0}, r"server-momentum must lie in \[0, 1\), got 1.0"),
        ({"missing-modality-prob": 1.0}, "missing-modality-prob"),
        ({"dirichlet-alpha": 0.0}, "dirichlet-alpha"),
        ({"num-clients": "ten"}, "expects int, got str"),
        ({"num-clients": True}, "expects int, got bool"),
        ({"num-client": 3}, "unknown run-config key"),
        ({"num-edges": -1}, r"num-edges must lie in \[0, num-clients=10\]"),
        ({"num-edges": 11}, r"num-edges must lie in \[0, num-clients=10\]"),
        ({"device-topk": 0.0}, r"device-topk must lie in \(0, 1\]"),
        ({"edge-topk": 1.5}, r"edge-topk must lie in \(0, 1\]"),
        ({"device-bits": 16}, r"device-bits must be one of \(4, 8, 32\)"),
        ({"edge-bits": 2}, r"edge-bits must be one of \(4, 8, 32\)"),
        ({"edge-role": "fog"}, "edge-role must be one of"),
        ({"edge-role": "cloud"}, "needs num-edges >= 1"),
        ({"edge-role": "edge", "num-edges": 1}, "needs edge-spool"),
        ({"num-edges": 2, "dp": True}, "need num-edges=0, got num-edges=2"),
    ],
)
def test_bad_values_are_rejected_with_the_key_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.from_mapping(overrides)


def test_parse_overrides_reads_toml_values_and_bare_words(tmp_path):
    config_file = tmp_path / "over.toml"
    config_file.write_text('num-server-rounds = 3\nstrategy = "fedprox"\n')

    overrides = parse_overrides(
        ["strategy=fedavg", "learning-rate=0.01", "dataset='synthetic'", "fraction-train=1"],
        config_file,
    )

    assert overrides == {
        "num-server-rounds": 3,
        "strategy": "fedavg",
        "learning-rate": 0.01,
        "dataset": "synthetic",
        "fraction-train": 1,
    }


@pytest.mark.parametrize("pair", ["novalue", "=3", ""])
def test_parse_overrides_rejects_malformed_pairs(pair):
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides([pair])


def test_run_dir_defaults_to_dataset_strategy_timestamp(tmp_path):
    config = RunConfig.from_mapping({"out-dir": str(tmp_path), "dataset": "pkg.mod:load"})

    run_dir = config.run_dir()

    assert run_dir.parent == tmp_path
    assert run_dir.name.startswith("pkg.mod-load-fedavg-")


def test_run_dir_uses_the_run_name(tmp_path):
    config = RunConfig.from_mapping({"out-dir": str(tmp_path), "run-name": "trial"})

    assert config.run_dir() == tmp_path / "trial"


README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_key_is_documented_once_and_the_readme_table_is_generated_from_it():
    keys = [f.name.replace("_", "-") for f in dataclasses.fields(RunConfig)]

    assert sorted(default_run_config()) == sorted(keys)  # pyproject.toml has every default
    assert all(f.metadata["meaning"] for f in dataclasses.fields(RunConfig))
    assert config_table() in README.read_text(), (
        "README's configuration table differs from the RunConfig fields; regenerate it with "
        "`python -m fedmosaic.config`")
    assert config_table().splitlines()[2] == '| `run-name` | `""` |  | run folder name; empty: ' \
                                             '`<dataset>-<strategy>-<timestamp>` |'
    assert '| `edge-bits` | `32` | `4`, `8`, `32` |' in config_table()


@pytest.mark.parametrize(("key", "value"), [
    ("sensor-encoder", "wavelets"), ("device-bits", 7), ("edge-role", "fog"),
    ("attack", "poison"), ("dp-accountant", "gdp"), ("central-dp", "local"),
])
def test_a_value_outside_a_keys_choices_names_them(key, value):
    choices = next(f.metadata["choices"] for f in dataclasses.fields(RunConfig)
                   if f.name == key.replace("-", "_"))

    with pytest.raises(ValueError, match=rf"{key} must be one of {re.escape(str(choices))}, "
                                         rf"got {re.escape(repr(value))}"):
        RunConfig.from_mapping({key: value})


def test_a_renamed_key_says_its_new_name():
    with pytest.raises(ValueError, match="'epsilon' is now 'dp-epsilon-budget'"):
        RunConfig.from_mapping({"epsilon": 3.0})


def test_sampled_nodes_matches_what_flower_samples():
    assert [sampled_nodes(f, 10) for f in (0.0, 0.01, 0.25, 0.3, 1.0)] == [0, 1, 3, 3, 10]
    assert RunConfig.from_mapping({"fraction-train": 0.3}).train_nodes == 3


def test_a_colluding_attack_needs_a_flat_federation():
    with pytest.raises(ValueError, match="attack='alie' needs num-edges=0"):
        RunConfig.from_mapping({"attack": "alie", "malicious-fraction": 0.2, "num-edges": 2})
