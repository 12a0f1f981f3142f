"""The run configuration: one frozen, validated dataclass read from Flower's run config.

Defaults live in ``pyproject.toml`` under ``[tool.flwr.app.config]`` (Flower's convention);
this module parses and checks the flat ``{key: value}`` mapping Flower hands to both the
ServerApp and the ClientApp, so every component sees the same validated values.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from fedmosaic import PROJECT_DIR

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ConfigValue = bool | int | float | str
COMPRESSION_BITS = (4, 8, 32)
"""Bits per transmitted value an update hop may use (32: float32, no quantization)."""
EDGE_ROLES = ("simulated", "cloud", "edge")
EDGE_AGGREGATIONS = ("mean", "trimmed-mean", "median")
SENSOR_ENCODERS = ("tcn", "features")
"""Sensor encoders: the trainable TCN, or fixed features and a projection (for DP-SGD)."""
"""``simulated``: the cloud run simulates its edges; ``cloud``: its nodes are edge SuperNodes;
``edge``: the run is one edge's sub-round server (see ``server/edge/``)."""
ATTACKS = ("none", "label-flip", "sign-flip", "gaussian", "scale-10", "scale-100", "alie", "ipm",
           "nan")
"""Behaviours of simulated malicious clients (see ``simulation/attacks.py``)."""


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run. Field ``x_y`` is run-config key ``x-y``."""

    run_name: str
    out_dir: str
    seed: int
    dataset: str
    num_clients: int
    num_server_rounds: int
    strategy: str
    proximal_mu: float
    trim_fraction: float
    max_update_norm: float
    min_valid_replies: int
    num_malicious_nodes: int
    attack: str
    malicious_fraction: float
    fraction_train: float
    fraction_evaluate: float
    local_epochs: int
    batch_size: int
    learning_rate: float
    embed_dim: int
    num_experts: int
    hidden_dim: int
    sensor_encoder: str
    kl_weight: float
    consistency_weight: float
    gate_balance_weight: float
    dirichlet_alpha: float
    missing_modality_prob: float
    samples_per_client: int
    synthetic_noise: float
    window_seconds: float
    num_edges: int
    device_topk: float
    device_bits: int
    edge_topk: float
    edge_bits: int
    edge_role: str
    edge_aggregation: str
    edge_spool: str
    telemetry: bool
    telemetry_epsilon: float
    telemetry_budget: float
    telemetry_bound: float
    dp: bool
    epsilon: float
    delta: float
    max_grad_norm: float
    dp_accountant: str
    grad_sample_mode: str
    privacy_budgets: str
    central_dp: str
    central_noise_multiplier: float
    central_clipping_norm: float
    resume_from: str

    def __post_init__(self) -> None:
        positive_ints = ("num_clients", "num_server_rounds", "local_epochs", "batch_size",
                         "embed_dim", "num_experts", "hidden_dim", "samples_per_client")
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise ValueError(f"{_key(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("fraction_train", "fraction_evaluate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{_key(name)} must lie in [0, 1], got {getattr(self, name)}")
        _check_robustness(self)
        if self.fraction_train == 0.0:
            raise ValueError("fraction-train must be > 0, got 0.0 (no client would train)")
        for name in ("proximal_mu", "kl_weight", "consistency_weight", "gate_balance_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{_key(name)} must be >= 0, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning-rate must be > 0, got {self.learning_rate}")
        if self.dirichlet_alpha <= 0:
            raise ValueError(f"dirichlet-alpha must be > 0, got {self.dirichlet_alpha}")
        if not 0.0 <= self.missing_modality_prob < 1.0:
            raise ValueError(
                f"missing-modality-prob must lie in [0, 1), got {self.missing_modality_prob}"
            )
        if self.sensor_encoder not in SENSOR_ENCODERS:
            raise ValueError(f"sensor-encoder must be one of {SENSOR_ENCODERS}, got "
                             f"{self.sensor_encoder!r}")
        if not 0.0 < self.synthetic_noise < float("inf"):
            raise ValueError(f"synthetic-noise must be finite and > 0, got {self.synthetic_noise}")
        if self.window_seconds <= 0:
            raise ValueError(f"window-seconds must be > 0, got {self.window_seconds}")
        if not 0 <= self.num_edges <= self.num_clients:
            raise ValueError(
                f"num-edges must lie in [0, num-clients={self.num_clients}] (0: no edge tier), "
                f"got {self.num_edges}"
            )
        for name in ("device_topk", "edge_topk"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{_key(name)} must lie in (0, 1], got {getattr(self, name)}")
        for name in ("device_bits", "edge_bits"):
            if getattr(self, name) not in COMPRESSION_BITS:
                raise ValueError(
                    f"{_key(name)} must be one of {COMPRESSION_BITS}, got {getattr(self, name)}"
                )
        if self.edge_aggregation not in EDGE_AGGREGATIONS:
            raise ValueError(f"edge-aggregation must be one of {EDGE_AGGREGATIONS}, got "
                             f"{self.edge_aggregation!r}")
        if self.edge_role not in EDGE_ROLES:
            raise ValueError(f"edge-role must be one of {EDGE_ROLES}, got {self.edge_role!r}")
        if self.edge_role != "simulated" and self.num_edges == 0:
            raise ValueError(f"edge-role={self.edge_role!r} needs num-edges >= 1, got 0")
        if self.edge_role == "edge" and not self.edge_spool:
            raise ValueError("edge-role='edge' needs edge-spool, the edge's spool directory; "
                             "got ''")
        if self.num_edges and (self.dp or self.central_dp != "none"):
            raise ValueError(
                f"dp={self.dp} / central-dp={self.central_dp!r} need num-edges=0, got "
                f"num-edges={self.num_edges}: the privacy ledger accounts per device, and an "
                "edge tier hands the cloud per-edge aggregates"
            )
        for name in ("telemetry_epsilon", "telemetry_bound"):
            if not 0.0 < getattr(self, name) < float("inf"):
                raise ValueError(f"{_key(name)} must be finite and > 0, got {getattr(self, name)}")
        if not self.telemetry_epsilon <= self.telemetry_budget < float("inf"):
            raise ValueError(
                f"telemetry-budget must be finite and >= telemetry-epsilon="
                f"{self.telemetry_epsilon}, got {self.telemetry_budget}"
            )
        _check_privacy(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from a flat run config (``num-clients = 10`` style keys).

        Unknown keys are an error (a typo must not be silently ignored); missing keys take
        the defaults from ``pyproject.toml``. Ints are accepted where floats are expected.
        """
        merged = {**default_run_config(), **values}
        known = {_key(f.name): f for f in fields(cls)}
        unknown = sorted(set(merged) - set(known))
        if unknown:
            raise ValueError(
                f"unknown run-config key(s) {unknown}; expected one of {sorted(known)}"
            )
        kwargs: dict[str, Any] = {}
        for key, field in known.items():
            kwargs[field.name] = _coerce(key, merged[key], field.type)
        return cls(**kwargs)

    def run_dir(self) -> Path:
        """``out-dir/run-name``; an empty run name becomes ``<dataset>-<strategy>-<timestamp>``.

        Launchers fix the name before starting processes, so every process sees the same
        folder; ``flwr run`` without a ``run-name`` gets the ServerApp's timestamp.
        """
        name = self.run_name or (
            f"{self.dataset.replace(':', '-')}-{self.strategy}-"
            f"{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        )
        return Path(self.out_dir).expanduser().resolve() / name

    def to_mapping(self) -> dict[str, ConfigValue]:
        """The flat run config this object was built from (round-trips ``from_mapping``)."""
        return {_key(k): v for k, v in dataclasses.asdict(self).items()}


def _check_robustness(config: RunConfig) -> None:
    """Range checks of the strategy, validation and attack settings."""
    if not 0.0 <= config.trim_fraction < 0.5:
        raise ValueError(f"trim-fraction must lie in [0, 0.5), got {config.trim_fraction}")
    if not 0.0 <= config.max_update_norm < float("inf"):
        raise ValueError(
            f"max-update-norm must be finite and >= 0 (0: no bound), got {config.max_update_norm}"
        )
    if config.min_valid_replies < 1:
        raise ValueError(f"min-valid-replies must be >= 1, got {config.min_valid_replies}")
    if not 0 <= config.num_malicious_nodes < config.num_clients:
        raise ValueError(f"num-malicious-nodes must lie in [0, num-clients={config.num_clients}), "
                         f"got {config.num_malicious_nodes}")
    if config.attack not in ATTACKS:
        raise ValueError(f"attack must be one of {ATTACKS}, got {config.attack!r}")
    if not 0.0 <= config.malicious_fraction < 1.0:
        raise ValueError(
            f"malicious-fraction must lie in [0, 1), got {config.malicious_fraction}"
        )


def _check_privacy(config: RunConfig) -> None:
    """Validate the DP-SGD, central-DP and resume keys (``fedmosaic.privacy``)."""
    from fedmosaic.privacy.settings import check_privacy_settings

    check_privacy_settings(config)


def _key(field_name: str) -> str:
    return field_name.replace("_", "-")


def _coerce(key: str, value: Any, type_name: Any) -> ConfigValue:
    expected = {"int": int, "float": float, "str": str, "bool": bool}[str(type_name)]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ValueError(
            f"run-config key {key!r} expects {expected.__name__}, got "
            f"{type(value).__name__} {value!r}"
        )
    return value


def default_run_config() -> dict[str, ConfigValue]:
    """The defaults from ``[tool.flwr.app.config]`` in the app's ``pyproject.toml``."""
    pyproject = PROJECT_DIR / "pyproject.toml"
    if not pyproject.is_file():
        raise FileNotFoundError(
            f"expected the Flower app's pyproject.toml at {pyproject}; reinstall fedmosaic "
            "(pip install -e .) so the app's defaults are available"
        )
    with pyproject.open("rb") as handle:
        return dict(tomllib.load(handle)["tool"]["flwr"]["app"]["config"])


def parse_overrides(pairs: list[str], config_file: Path | None = None) -> dict[str, ConfigValue]:
    """Parse ``key=value`` strings (TOML values; bare words are strings) and a TOML file.

    The file is read first, so ``key=value`` pairs win over it.
    """
    overrides: dict[str, ConfigValue] = {}
    if config_file is not None:
        with Path(config_file).open("rb") as handle:
            overrides.update(tomllib.load(handle))
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected an override of the form key=value, got {pair!r}")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        overrides[key.strip()] = value
    return overrides
