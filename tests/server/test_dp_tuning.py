"""DP-SGD tuning on public donors: reads only their data, spends exactly ε, ranks by accuracy."""

import json

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from rich.console import Console
from test_public_pretraining import Spy
from typer.testing import CliRunner

from fedmosaic import cli
from fedmosaic.cli import app
from fedmosaic.config import RunConfig
from fedmosaic.server import dp_tuning, public_pretraining
from fedmosaic.server.dp_tuning import Candidate, candidates, tune_on_public_devices
from fedmosaic.task import cached_dataset

TINY = {"num-clients": 6, "unseen-devices": 0, "public-devices": 2, "pretrain-epochs": 1,
        "num-server-rounds": 2, "fine-tune": "top", "dp": True, "dp-epsilon-budget": 3.0}
GRID = [Candidate(1, 0.003, 1.0), Candidate(2, 0.01, 0.1)]


def test_tuning_reads_only_the_donors_and_ranks_candidates_by_mean_accuracy():
    config = RunConfig.from_mapping(TINY)
    dataset = Spy(cached_dataset(config))

    scored = tune_on_public_devices(config, dataset, GRID)

    assert set(dataset.read) == {6, 7}  # the two donors: no device's data
    assert {s.candidate for s in scored} == set(GRID)
    assert all(len(s.fold_accuracies) == 2 for s in scored)  # one fold per left-out donor
    assert [s.accuracy for s in scored] == sorted((s.accuracy for s in scored), reverse=True)


def test_each_simulated_device_spends_exactly_the_runs_epsilon(monkeypatch):
    config = RunConfig.from_mapping(TINY)
    dataset = cached_dataset(config)
    calls = []
    monkeypatch.setattr(dp_tuning, "train_private",
                        lambda model, loader, specs, **kw: calls.append((len(loader), kw)))

    tune_on_public_devices(config, dataset, [Candidate(2, 0.01, 0.1)])

    assert len(calls) == 2 * config.num_server_rounds  # 2 folds x rounds
    for donor, fold in zip((6, 7), (calls[:2], calls[2:]), strict=True):
        batches, kwargs = fold[0]
        assert kwargs["epochs"] == 2 and kwargs["max_grad_norm"] == 0.1
        assert kwargs["learning_rate"] == 0.01
        accountant = RDPAccountant()  # Opacus's accountant, apart from our calibration
        accountant.history = [(kwargs["noise_multiplier"], 1 / batches,
                               2 * batches * config.num_server_rounds)]
        assert batches == -(-len(dataset.partition(donor)[0]) // config.batch_size)
        assert accountant.get_epsilon(config.delta) == pytest.approx(3.0, abs=0.011)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"public-devices": 1}, "needs public-devices >= 2"),
    ({"pretrain-epochs": 0, "public-devices": 2}, "needs pretrain-epochs >= 1"),
])
def test_tuning_without_donors_to_pretrain_and_tune_on_is_refused(overrides, message):
    config = RunConfig.from_mapping({**TINY, **overrides})

    with pytest.raises(ValueError, match=message):
        tune_on_public_devices(config, cached_dataset(config), GRID)


@pytest.mark.parametrize("width", [200, 40])  # a narrow terminal must not break the line
def test_the_command_prints_every_setting_and_the_overrides_to_run_with(monkeypatch, tmp_path,
                                                                       width):
    monkeypatch.setattr(dp_tuning, "candidates", lambda: GRID)
    monkeypatch.setattr(cli, "console", Console(width=width))
    out = tmp_path / "tuning.json"

    pairs = [f"-c{k}={str(v).lower()}" for k, v in TINY.items()]  # TOML values: true, 3.0

    shown = CliRunner().invoke(app, ["tune-dp", *pairs, "--out", str(out)])

    assert shown.exit_code == 0, shown.output
    report = json.loads(out.read_text())
    assert len(report["candidates"]) == len(GRID)
    best = " ".join(f"-c {k}={v}" for k, v in report["best"].items())
    assert f"run with: {best}" in shown.output
    if width == 200:  # the table's columns are the settings' keys
        assert all(key in shown.output for key in GRID[0].overrides())


def test_the_default_grid_covers_epochs_learning_rates_and_clipping():
    grid = candidates()

    assert len(grid) == len(set(grid)) == 18
    assert {c.max_grad_norm for c in grid} == {0.1, 1.0}


def test_the_folds_pretrain_with_the_runs_reframing(monkeypatch):
    config = RunConfig.from_mapping({**TINY, "pretrain-reframe": 1.0})
    monkeypatch.setattr(dp_tuning, "train_private", lambda *args, **kwargs: None)
    strengths = []
    monkeypatch.setattr(public_pretraining, "reframe",
                        lambda inputs, mask, specs, strength, generator:
                        strengths.append(strength) or inputs)

    tune_on_public_devices(config, cached_dataset(config), GRID[:1])

    assert strengths and all(float(s.max()) < 1.0 for s in strengths)  # both folds' pretraining


def test_tuning_without_dp_is_refused():
    config = RunConfig.from_mapping({**TINY, "dp": False})

    with pytest.raises(ValueError, match="set dp=true"):
        tune_on_public_devices(config, cached_dataset(config), GRID)


class NoHeldOut(Spy):
    """A dataset whose partitions keep no held-out samples."""

    def partition(self, partition_id):
        train, _ = super().partition(partition_id)
        return train, train.subset(np.arange(0))


def test_a_donor_without_held_out_samples_is_a_clear_error():
    config = RunConfig.from_mapping(TINY)

    with pytest.raises(ValueError, match="public device 6 holds no held-out samples"):
        tune_on_public_devices(config, NoHeldOut(cached_dataset(config)), GRID)
