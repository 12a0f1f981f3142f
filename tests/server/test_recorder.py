import json

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedmosaic.server.recorder import RoundRecord, RunRecorder


def record(round_, accuracy):
    return RoundRecord(round=round_, accuracy=accuracy, loss=1.0 - accuracy, bytes_up=100 * round_,
                       bytes_down=200 * round_, seconds=1.5, federated_accuracy=accuracy - 0.1)


def test_recorder_writes_history_tensorboard_checkpoints_summary_and_plot(tmp_path):
    recorder = RunRecorder(tmp_path / "run", {"seed": 3})
    recorder.initial_accuracy = 0.1

    for round_, accuracy in ((1, 0.5), (2, 0.75)):
        recorder.record_round(record(round_, accuracy))
        recorder.checkpoint(round_, {"w": torch.full((2,), float(round_))}, {"round": round_})
    summary = recorder.finish()

    run = tmp_path / "run"
    lines = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [x["accuracy"] for x in lines] == [0.5, 0.75]
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk == summary
    assert summary["rounds"] == 2 and summary["final_accuracy"] == 0.75
    assert summary["total_bytes_up"] == 300 and summary["total_bytes_down"] == 600
    assert summary["config"] == {"seed": 3}
    assert set(summary["history"][0]) >= {"round", "accuracy", "loss", "bytes_up", "bytes_down",
                                          "seconds"}
    checkpoint = torch.load(run / "checkpoints" / "round-002.pt")
    assert checkpoint["round"] == 2 and torch.equal(checkpoint["model_state"]["w"],
                                                    torch.full((2,), 2.0))
    assert len(checkpoint["history"]) == 2
    assert (run / "summary.png").read_bytes()[:4] == b"\x89PNG"
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert [e.value for e in events.Scalars("round/accuracy")] == [0.5, 0.75]
    assert [e.step for e in events.Scalars("round/bytes_up")] == [1, 2]
