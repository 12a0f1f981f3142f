"""Benchmark scripts as importable modules, for testing their pure functions."""

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def import_benchmark(name: str):
    """Import ``benchmarks/<name>.py``, with its sibling ``common`` module on the path."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def communication():
    return import_benchmark("communication")


@pytest.fixture(scope="module")
def robustness():
    return import_benchmark("robustness")


@pytest.fixture(scope="module")
def own_data():
    return import_benchmark("own_data")


@pytest.fixture(scope="module")
def controller():
    return import_benchmark("controller")


@pytest.fixture(scope="module")
def learning_quality():
    return import_benchmark("learning_quality")


@pytest.fixture(scope="module")
def anonymizer_benchmark():
    return import_benchmark("anonymizer")
