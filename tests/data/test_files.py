import json

import numpy as np
import pandas as pd
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedmosaic import records
from fedmosaic.clients.app import train_locally
from fedmosaic.config import RunConfig
from fedmosaic.data.datasets import load_dataset
from fedmosaic.data.modality import ModalityKind, pad_series
from fedmosaic.simulation.inprocess import run_in_process
from fedmosaic.task import build_model

N = 120


def npz_file(tmp_path, **arrays):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), N // 3)  # stored sorted by label
    contents = {"labels": labels,
                "accel": rng.normal(labels[:, None, None], 1.0, (N, 3, 16)).astype(np.float32),
                "camera": rng.normal(size=(N, 1, 8, 8)).astype(np.float32),
                "log": rng.integers(0, 7, (N, 5)),
                "stats": rng.normal(size=(N, 4))}
    contents.update(arrays)
    contents = {k: v for k, v in contents.items() if v is not None}
    path = tmp_path / "data.npz"
    np.savez(path, **contents)
    return path


def load(path, **overrides):
    return load_dataset(RunConfig.from_mapping({"dataset": str(path), "num-clients": 4,
                                                **overrides}))


def test_an_npz_round_trip_reads_every_modality_kind_and_keeps_every_sample(tmp_path):
    dataset = load(npz_file(tmp_path))

    kinds = {s.name: (s.kind, s.shape, s.vocab_size) for s in dataset.specs}
    assert kinds == {"accel": (ModalityKind.SENSOR, (3, 16), None),
                     "camera": (ModalityKind.IMAGE, (1, 8, 8), None),
                     "log": (ModalityKind.TOKENS, (5,), 7),
                     "stats": (ModalityKind.SENSOR, (1, 4), None)}
    parts = [dataset.partition(p) for p in range(4)]
    assert sum(len(tr) + len(te) for tr, te in parts) + len(dataset.central_test()) == N
    assert len(dataset.central_test()) == round(0.2 * N)
    for train, _ in parts:  # shuffled before the IID split: every device sees every class
        assert set(train.labels) == {0, 1, 2}


def test_a_device_array_gives_a_natural_partition(tmp_path):
    devices = np.arange(N) % 4
    dataset = load(npz_file(tmp_path, device=devices))

    assert dataset.num_partitions == 4
    with pytest.raises(ValueError, match="names 4 devices, so num-clients .* must be 4, got 3 "):
        load(npz_file(tmp_path, device=devices), **{"num-clients": 3})


def test_a_csv_round_trip_and_a_label_skewed_split(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 50)
    table = pd.DataFrame({"label": labels, "height": rng.normal(labels, 0.1),
                          "weight": rng.normal(size=200)})
    path = tmp_path / "people.csv"
    table.to_csv(path, index=False)

    iid = load(path)
    skewed = load(path, partitioner="dirichlet", **{"dirichlet-alpha": 0.05})

    (spec,) = iid.specs
    assert (spec.name, spec.kind, spec.shape) == ("features", ModalityKind.SENSOR, (1, 2))
    iid_classes = [len(set(iid.partition(p)[0].labels)) for p in range(4)]
    skewed_classes = [len(set(skewed.partition(p)[0].labels)) for p in range(4)]
    assert iid_classes == [4, 4, 4, 4] and min(skewed_classes) < 4


def partly_padded():
    """Sensor series whose last step is NaN in one channel only: not padding."""
    accel = np.zeros((N, 3, 16), np.float32)
    accel[:, 0, -1] = np.nan
    return accel


@pytest.mark.parametrize(("arrays", "message"), [
    ({"labels": None}, "expected an array 'labels' of shape \\(N,\\)"),
    ({"labels": np.zeros(N)}, "'labels' must hold integer class ids"),
    ({"accel": np.zeros((N - 1, 3, 16), np.float32)}, "'accel' must have 120 rows"),
    ({"weird": np.zeros((N, 2, 2, 2, 2), np.float32)}, "'weird' of float32 .* fits no modality"),
    ({"log": -np.ones((N, 5), np.int64)}, "token array 'log' must hold ids >= 0"),
    ({"mask": np.ones((N, 2), bool)}, "'mask' must be bool of shape \\(120, 4\\)"),
    ({"camera": np.full((N, 1, 8, 8), np.nan, np.float32)}, "'camera' holds NaN"),
    ({"accel": np.concatenate([np.full((N, 3, 1), np.nan), np.zeros((N, 3, 15))], axis=2)
      .astype(np.float32)}, "'accel' of sample 0 has NaN that is not padding"),
    ({"accel": partly_padded()}, "'accel' of sample 0 has NaN that is not padding"),
])
def test_a_malformed_npz_names_what_was_expected(tmp_path, arrays, message):
    with pytest.raises(ValueError, match=message):
        load(npz_file(tmp_path, **arrays))


@pytest.mark.parametrize(("table", "message"), [
    ({"class": [0, 1], "x": [0.1, 0.2]}, "expected a column 'label'"),
    ({"label": [0, 1], "x": ["a", "b"]}, "non-numeric columns \\['x'\\]"),
    ({"label": [0, 1], "x": [0.1, None]}, "empty cells in columns \\['x'\\]"),
    ({"label": [0.5, 1.0], "x": [0.1, 0.2]}, "'label' must hold integer class ids"),
])
def test_a_malformed_csv_names_what_was_expected(tmp_path, table, message):
    path = tmp_path / "bad.csv"
    pd.DataFrame(table).to_csv(path, index=False)

    with pytest.raises(ValueError, match=message):
        load(path)


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load(tmp_path / "absent.npz")


def test_a_run_on_an_npz_file_completes_and_reports_its_partitions(tmp_path):
    config = run_in_process({"dataset": str(npz_file(tmp_path)), "num-clients": 3,
                             "num-server-rounds": 1, "local-epochs": 1,
                             "out-dir": str(tmp_path), "run-name": "file"})

    summary = json.loads((config.run_dir() / "summary.json").read_text())
    assert summary["rounds"] == 1
    partitions = summary["partitions"]
    assert partitions["total_devices"] == 3 and partitions["warnings"] == []
    assert [sum(d["label_counts"]) for d in partitions["devices"]] == [
        d["train_samples"] for d in partitions["devices"]]
    assert (config.run_dir() / "partitions.png").stat().st_size > 0


def ragged_npz(tmp_path):
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(2), 30)
    windows = [rng.normal(label, 1.0, (2, int(rng.integers(8, 25)))).astype(np.float32)
               for label in labels]
    path = tmp_path / "ragged.npz"
    np.savez(path, labels=labels, accel=pad_series(windows, length=24))
    return path


def test_a_run_on_ragged_series_completes(tmp_path):
    config = run_in_process({"dataset": str(ragged_npz(tmp_path)), "num-clients": 2,
                             "num-server-rounds": 1, "local-epochs": 1, "telemetry": True,
                             "out-dir": str(tmp_path), "run-name": "ragged"})

    summary = json.loads((config.run_dir() / "summary.json").read_text())
    assert summary["rounds"] == 1 and summary["history"][0]["replies"] >= 2
    assert np.isfinite(summary["final_loss"])


def test_dp_sgd_on_ragged_series_is_a_clear_error(tmp_path):
    run_config = RunConfig.from_mapping({"dataset": str(ragged_npz(tmp_path)),
                                         "num-clients": 2, "dp": True}).to_mapping()
    context = Context(run_id=1, node_id=1, node_config={records.PARTITION_ID: 0},
                      state=RecordDict(), run_config=run_config)
    dataset = load_dataset(RunConfig.from_mapping(run_config))
    arrays = ArrayRecord(build_model(RunConfig.from_mapping(run_config), dataset).state_dict())
    message = Message(RecordDict({records.ARRAYS: arrays, records.CONFIG: ConfigRecord({})}),
                      dst_node_id=1, message_type="train")

    with pytest.raises(ValueError, match="does not support ragged"):
        train_locally(message, context)
