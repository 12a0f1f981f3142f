import json

import torch
from typer.testing import CliRunner

from fedmosaic import records
from fedmosaic.cli import app
from fedmosaic.privacy.ledger import PrivacyLedger
from fedmosaic.privacy.report import load_ledger


def ledger():
    book = PrivacyLedger()
    book.record_reply(1, {records.PARTITION_ID: 3, records.DP_EPSILON_SPENT: 0.5,
                          records.DP_EPSILON_BUDGET: 3.0, records.DP_DELTA: 1e-5,
                          records.DP_NOISE_MULTIPLIER: 1.5, records.DP_SAMPLE_RATE: 0.2,
                          records.DP_STEPS: 5, records.DP_REFUSED: 0})
    book.record_reply(2, {records.PARTITION_ID: 3, records.DP_EPSILON_SPENT: 0.5,
                          records.DP_REFUSED: 1})
    return book


def test_privacy_report_prints_the_summary_ledger(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"privacy": ledger().state_dict()}))

    result = CliRunner().invoke(app, ["privacy-report", str(tmp_path)], terminal_width=200)

    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "partition 3" in line)
    cells = [cell.strip() for cell in row.strip().strip("│").split("│")]
    spent = f"{ledger().devices[3].epsilon_spent:.4f}"
    # device, ε spent, budget, δ, σ, rounds joined (1), refusals (round 2)
    assert cells == ["partition 3", spent, "3", "1e-05", "1.5000", "1", "2"]


def test_mid_run_the_newest_checkpoint_is_read(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    torch.save({"server_state": {"privacy": PrivacyLedger().state_dict()}},
               tmp_path / "checkpoints" / "round-001.pt")
    torch.save({"server_state": {"privacy": ledger().state_dict()}},
               tmp_path / "checkpoints" / "round-002.pt")

    assert load_ledger(tmp_path) == ledger()


def test_a_folder_without_a_run_is_an_error(tmp_path):
    result = CliRunner().invoke(app, ["privacy-report", str(tmp_path)])

    assert result.exit_code == 2
    assert "holds no summary.json" in " ".join(result.output.split())


def test_the_report_lists_each_scored_nodes_risk(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"privacy": ledger().state_dict()}))
    def scores(risk):
        return {"risk": risk, "risk-channel": 0.9, "risk-sensitivity": 0.5,
                "risk-context": 0.25, "risk-resources": 0.125}
    rounds = [{"round": 1, "risk": {"2": scores(0.2), "10": scores(0.4)}},
              {"round": 2, "risk": {"2": scores(0.6)}}]
    (tmp_path / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))

    result = CliRunner().invoke(app, ["privacy-report", str(tmp_path)], terminal_width=200)

    assert result.exit_code == 0, result.output
    rows = [[cell.strip() for cell in line.strip().strip("│").split("│")]
            for line in result.output.splitlines() if line.strip().startswith("│ ")]
    risk_rows = [row for row in rows if len(row) == 8]
    # node, rounds, mean risk, latest risk, channel, sensitivity, context, resources
    assert risk_rows == [["2", "2", "0.400", "0.600", "0.900", "0.500", "0.250", "0.125"],
                         ["10", "1", "0.400", "0.400", "0.900", "0.500", "0.250", "0.125"]]
