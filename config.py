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
    fraction_train: float
    fraction_evaluate: float
    local_epochs: int
    batch_size: int
    learning_rate: float
    embed_dim: int
    num_experts: int
    kl_weight: float
    consistency_weight: float
    gate_balance_weight: float
    dirichlet_alpha: float
    missing_modality_prob: float
    samples_per_client: int
    window_seconds: float

    def __post_init__(self) -> None:
        positive_ints = ("num_clients", "num_server_rounds", "local_epochs", "batch_size",
                         "embed_dim", "num_experts", "samples_per_client")
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise ValueError(f"{_key(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("fraction_train", "fraction_evaluate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{_key(name)} must lie in [0, 1], got {getattr(self, name)}")
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
        if self.window_seconds <= 0:
            raise ValueError(f"window-seconds must be > 0, got {self.window_seconds}")

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
