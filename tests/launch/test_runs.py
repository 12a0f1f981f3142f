from fedmosaic.launch.runs import _read_history


def test_progress_reader_skips_a_half_written_history_line(tmp_path):
    history = tmp_path / "history.jsonl"
    history.write_text('{"round": 1, "accuracy": 0.5}\n{"round": 2, "accu')

    assert _read_history(history) == [{"round": 1, "accuracy": 0.5}]
