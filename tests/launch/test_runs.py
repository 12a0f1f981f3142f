from fedmosaic.launch.runs import _read_history, resolve_run


def test_progress_reader_skips_a_half_written_history_line(tmp_path):
    history = tmp_path / "history.jsonl"
    history.write_text('{"round": 1, "accuracy": 0.5}\n{"round": 2, "accu')

    assert _read_history(history) == [{"round": 1, "accuracy": 0.5}]


def test_a_data_file_named_relative_to_the_working_directory_is_made_absolute(tmp_path,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)

    config, _ = resolve_run({"dataset": "my-data.npz"}, tmp_path / "run")

    assert config.dataset == str(tmp_path / "my-data.npz")
