"""DP-SGD tuning on public donors: reads only their data, spends exactly ε, ranks by accuracy."""

import json

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from test_public_pretraining import Spy
from typer.testing import CliRunner

from fedmosaic.cli import app
from fedmosaic.config import RunConfig
from fedmosaic.server import dp_tuning
from fedmosaic.server.dp_tuning import Candidate, candidates, tune_on_public_devices
from fedmosaic.task import build_model, cached_dataset

TINY = {"num-clients": 6, "fraction-train": 0.3, "unseen-devices": 0, "public-devices": 2,
        "pretrain-epochs": 1, "num-server-rounds": 2, "fine-tune": "top", "dp": True,
        "dp-epsilon-budget": 3.0}  # 2 of the 6 devices a round: 2 simulated devices
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

    devices = config.train_nodes  # the run's devices per round, all simulated
    assert devices == 2 and len(calls) == 2 * config.num_server_rounds * devices  # 2 folds
    per_fold = len(calls) // 2
    for donor, fold in zip((6, 7), (calls[:per_fold], calls[per_fold:]), strict=True):
        batches, kwargs = fold[0]
        assert all(call == fold[0] for call in fold)  # every device and round: the same plan
        assert kwargs["epochs"] == 2 and kwargs["max_grad_norm"] == 0.1
        assert kwargs["learning_rate"] == 0.01
        accountant = RDPAccountant()  # Opacus's accountant, apart from our calibration
        accountant.history = [(kwargs["noise_multiplier"], 1 / batches,
                               2 * batches * config.num_server_rounds)]
        assert batches == -(-len(dataset.partition(donor)[0]) // config.batch_size)
        assert accountant.get_epsilon(config.delta) == pytest.approx(3.0, abs=0.011)


def shift_trained_parameters(steps):
    """A ``train_private`` stand-in: the k-th device trained adds k to what it trains."""

    def train(device, loader, specs, **kw):
        step = next(steps)
        with torch.no_grad():
            for param in device.parameters():
                if param.requires_grad:
                    param.add_(step)

    return train


def test_each_round_the_trained_parameters_become_the_mean_of_the_simulated_devices(monkeypatch):
    config = RunConfig.from_mapping({**TINY, "fraction-train": 1.0})  # 6 devices a round
    dataset = cached_dataset(config)
    model = build_model(config, dataset)
    head = dict(model.named_parameters())["classifier.2.weight"]
    encoder = next(p for n, p in model.named_parameters() if n.startswith("encoders."))
    start, encoder_start = head.detach().clone(), encoder.detach().clone()
    monkeypatch.setattr(dp_tuning, "train_private", shift_trained_parameters(iter(range(1, 99))))

    dp_tuning.train_like_a_federation(model, config, dataset, dataset.partition(6)[0],
                                      Candidate(1, 0.01, 1.0))

    # round 1: devices 1..6 from the start; round 2: devices 7..12 from round 1's mean
    assert torch.allclose(head, start + np.mean(range(1, 7)) + np.mean(range(7, 13)))
    assert torch.equal(encoder, encoder_start)  # fine-tune=top: the encoders stay exactly


def test_at_most_the_cap_of_devices_is_simulated(monkeypatch):
    config = RunConfig.from_mapping({**TINY, "fraction-train": 1.0})  # 6 devices a round
    dataset = cached_dataset(config)
    calls = []
    monkeypatch.setattr(dp_tuning, "MAX_SIMULATED_DEVICES", 4)
    monkeypatch.setattr(dp_tuning, "train_private", lambda *a, **kw: calls.append(kw))

    dp_tuning.train_like_a_federation(build_model(config, dataset), config, dataset,
                                      dataset.partition(6)[0], Candidate(1, 0.01, 1.0))

    assert len(calls) == 4 * config.num_server_rounds


def test_the_simulated_devices_are_the_runs_devices_per_round_up_to_a_cap():
    assert dp_tuning.simulated_devices(RunConfig.from_mapping(TINY)) == 2
    assert dp_tuning.simulated_devices(RunConfig.from_mapping(
        {**TINY, "fraction-train": 0.5})) == 3
    assert dp_tuning.simulated_devices(RunConfig.from_mapping(
        {**TINY, "num-clients": 50})) == dp_tuning.MAX_SIMULATED_DEVICES


@pytest.mark.parametrize(("overrides", "message"), [
    ({"public-devices": 1}, "needs public-devices >= 2"),
    ({"pretrain-epochs": 0, "public-devices": 2}, "needs pretrain-epochs >= 1"),
])
def test_tuning_without_donors_to_pretrain_and_tune_on_is_refused(overrides, message):
    config = RunConfig.from_mapping({**TINY, **overrides})

    with pytest.raises(ValueError, match=message):
        tune_on_public_devices(config, cached_dataset(config), GRID)


def test_the_command_prints_every_setting_and_the_overrides_to_run_with(monkeypatch, tmp_path):
    monkeypatch.setattr(dp_tuning, "candidates", lambda: GRID)
    out = tmp_path / "tuning.json"

    pairs = [f"-c{k}={str(v).lower()}" for k, v in TINY.items()]  # TOML values: true, 3.0

    shown = CliRunner().invoke(app, ["tune-dp", *pairs, "--out", str(out)])

    assert shown.exit_code == 0, shown.output
    report = json.loads(out.read_text())
    assert len(report["candidates"]) == len(GRID)
    assert report["simulated_devices"] == 2
    assert "2 simulated devices a round" in shown.output
    best = " ".join(f"-c {k}={v}" for k, v in report["best"].items())
    assert f"run with: {best}" in shown.output


def test_the_default_grid_covers_epochs_learning_rates_and_clipping():
    grid = candidates()

    assert len(grid) == len(set(grid)) == 18
    assert {c.max_grad_norm for c in grid} == {0.1, 1.0}


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
