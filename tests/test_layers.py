"""The package layering and acyclicity declared in pyproject.toml's import-linter contracts."""

from pathlib import Path

import grimp
import pytest
from importlinter.cli import lint_imports

from fedmosaic.config import tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
CONTRACTS = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
LAYERS = [{f"fedmosaic.{name.strip()}" for name in layer.split("|")}
          for layer in next(c for c in CONTRACTS if c["type"] == "layers")["layers"]]


def test_every_contract_holds():
    assert lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True) == 0


def todays_graph():
    return grimp.build_graph("fedmosaic", include_external_packages=False, cache_dir=None)


def test_the_layers_hold_on_todays_imports():
    assert todays_graph().find_illegal_dependencies_for_layers(LAYERS) == set()


@pytest.mark.parametrize(("importer", "imported"), [
    ("fedmosaic.models.training", "fedmosaic.server.app"),       # down the layers: up
    ("fedmosaic.data.modality", "fedmosaic.simulation.engine"),  # vocabulary importing the top
    ("fedmosaic.clients.edge_forward", "fedmosaic.server.edge.aggregation"),  # sibling tiers
    ("fedmosaic.strategies.registry", "fedmosaic.privacy.central"),  # sibling packages
])
def test_an_import_against_the_layers_is_found(importer, imported):
    graph = todays_graph()
    graph.add_import(importer=importer, imported=imported)

    illegal = graph.find_illegal_dependencies_for_layers(LAYERS)

    assert {(d.importer, d.imported) for d in illegal} == {
        tuple(".".join(m.split(".")[:2]) for m in (importer, imported))}
