"""``mode = async`` on Flower's Ray simulation runtime: push and pull through the real Grid."""

from fedmosaic.launch.runs import run_simulation


def test_an_async_run_aggregates_every_buffer_and_accounts_for_all_work(tmp_path):
    summary = run_simulation(
        {"dataset": "synthetic", "num-clients": 8, "num-server-rounds": 3, "local-epochs": 1,
         "samples-per-client": 24, "fraction-evaluate": 0.0, "mode": "async",
         "concurrency": 4, "buffer-size": 2},
        out=tmp_path / "async", show_progress=False)

    assert [r["round"] for r in summary["history"]] == [1, 2, 3]
    run = summary["async"]
    handled = sum(r["replies"] + r["failed_replies"] for r in summary["history"])
    # every dispatched training reached the server: aggregated, rejected, or in flight at the
    # end and entered with the last version (unused)
    assert run["dispatched"] == handled
    assert sum(r["rejected_reasons"].get("unused", 0) for r in summary["history"]) == run[
        "unused_at_end"]
    assert all(r["replies"] >= 2 for r in summary["history"])
    losses = [r["loss"] for r in summary["history"]]
    assert len(set(losses)) == 3  # each version is a new model
