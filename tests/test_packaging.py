from pathlib import Path

from fedmosaic.config import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_of_the_tree_is_in_the_wheel():
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]
    skipped = {"tests", "benchmarks", ".venv", "venv", "build", "runs"}
    found = {"fedmosaic"} | {
        "fedmosaic." + ".".join(init.parent.relative_to(ROOT).parts)
        for init in ROOT.rglob("__init__.py")
        if init.parent != ROOT and init.relative_to(ROOT).parts[0] not in skipped}

    assert sorted(listed) == sorted(found)
