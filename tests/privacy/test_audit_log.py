import hashlib
import json

import pytest
from typer.testing import CliRunner

from fedmosaic.cli import app
from fedmosaic.privacy.controller.audit import GENESIS_HASH, AuditLog, verify_audit_log


def write_log(path, entries=5):
    log = AuditLog(path, policy_hash="p" * 64)
    for i in range(entries):
        log.append(i // 2 + 1, f"device-{i % 2}", [0.1 * i, 1.0], {"spend-share": 0.1 * (i + 1)},
                   {"cap": 3.0, "spent": 0.2 * i, "within-cap": True})
    return log


def lines(path):
    return path.read_text().splitlines()


def rewrite(path, rows):
    path.write_text("".join(row + "\n" for row in rows))


def test_entries_chain_by_hand_computed_hashes(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = write_log(path, entries=2)

    first, second = (json.loads(line) for line in lines(path))
    body = {k: v for k, v in first.items() if k != "hash"}
    expected = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                              .encode()).hexdigest()
    digest = hashlib.sha256(b"[0.0,1.0]").hexdigest()
    assert first["hash"] == expected and first["previous_hash"] == GENESIS_HASH
    assert first["observation_digest"] == digest
    assert second["previous_hash"] == first["hash"] and log.last_hash == second["hash"]
    verdict = verify_audit_log(path)
    assert verdict.ok and verdict.entries == 2 and verdict.last_hash == second["hash"]


def edit(rows):
    entry = json.loads(rows[2])
    entry["action"]["spend-share"] = 0.9
    return [*rows[:2], json.dumps(entry), *rows[3:]]


def insert(rows):
    forged = json.loads(rows[1])
    forged["device"] = "forged"
    body = {k: v for k, v in forged.items() if k != "hash"}
    forged["hash"] = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                                    .encode()).hexdigest()
    return [*rows[:2], json.dumps(forged), *rows[2:]]


@pytest.mark.parametrize("tamper, bad_line, words", [
    (edit, 3, "edited"),
    (lambda rows: [rows[0], *rows[2:]], 2, "removed"),
    (insert, 3, "entry 2"),
    (lambda rows: [rows[0], rows[2], rows[1], *rows[3:]], 2, "entry 1"),
    (lambda rows: [*rows[:-1], rows[-1][:-30]], 5, "JSON"),
    (lambda rows: [*rows[:3], "not json at all", *rows[3:]], 4, "JSON"),
    (lambda rows: [*rows[:1], json.dumps({"index": 1}), *rows[1:]], 2, "keys"),
])
def test_every_kind_of_tampering_names_the_first_bad_line(tmp_path, tamper, bad_line, words):
    path = tmp_path / "audit.jsonl"
    write_log(path)
    rewrite(path, tamper(lines(path)))

    verdict = verify_audit_log(path)

    assert not verdict.ok
    assert verdict.first_bad_line == bad_line
    assert words in verdict.reason and verdict.reason.startswith(f"line {bad_line}:")


def test_an_entry_from_another_log_breaks_the_previous_hash(tmp_path):
    mine, other = tmp_path / "mine.jsonl", tmp_path / "other.jsonl"
    write_log(mine)
    AuditLog(other, policy_hash="q" * 64).append(1, "device-9", [2.0], {"spend-share": 0.5}, {})
    AuditLog(other, policy_hash="q" * 64).append(1, "device-9", [3.0], {"spend-share": 0.5}, {})
    AuditLog(other, policy_hash="q" * 64).append(2, "device-9", [4.0], {"spend-share": 0.5}, {})
    rows, foreign = lines(mine), lines(other)[2]
    rewrite(mine, [*rows[:2], foreign, *rows[3:]])  # index 2 fits, the chain does not

    verdict = verify_audit_log(mine)

    theirs, ours = json.loads(foreign)["previous_hash"], json.loads(rows[1])["hash"]
    assert (verdict.ok, verdict.entries, verdict.first_bad_line) == (False, 2, 3)
    assert verdict.reason == (f"line 3: previous_hash is {theirs[:12]}… but line 2's hash is "
                              f"{ours[:12]}…")
    assert verdict.last_hash == ours


def test_lines_cut_off_the_end_need_the_recorded_last_hash(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = write_log(path)
    recorded = log.last_hash
    rewrite(path, lines(path)[:-2])

    assert verify_audit_log(path).ok  # the file alone cannot tell
    verdict = verify_audit_log(path, expected_last_hash=recorded)
    assert not verdict.ok and verdict.first_bad_line == 4 and "removed from the end" in (
        verdict.reason)


def test_a_resumed_log_continues_the_chain_and_refuses_a_tampered_file(tmp_path):
    path = tmp_path / "audit.jsonl"
    write_log(path, entries=3)

    resumed = AuditLog(path, policy_hash="q" * 64)
    resumed.append(9, "device-0", [1.0], {"spend-share": 1.0}, {"within-cap": True})
    assert resumed.entries == 4 and verify_audit_log(path).ok

    rewrite(path, edit(lines(path)))
    with pytest.raises(ValueError, match="does not verify.*line 3"):
        AuditLog(path, policy_hash="q" * 64)


def test_the_cli_verifies_a_run_folder(tmp_path):
    log = write_log(tmp_path / "controller-audit.jsonl")
    (tmp_path / "summary.json").write_text(json.dumps(
        {"controller": {"audit_last_hash": log.last_hash}}))
    runner = CliRunner()

    ok = runner.invoke(app, ["audit", "verify", str(tmp_path)])
    ok_file = runner.invoke(app, ["audit", "verify", str(tmp_path / "controller-audit.jsonl")])
    rewrite(tmp_path / "controller-audit.jsonl", edit(lines(tmp_path / "controller-audit.jsonl")))
    tampered = runner.invoke(app, ["audit", "verify", str(tmp_path)])
    missing = runner.invoke(app, ["audit", "verify", str(tmp_path / "elsewhere")])

    assert ok.exit_code == 0 and f"audit log OK: 5 entries, last hash {log.last_hash}" in (
        ok.output.replace("\n", ""))
    assert ok_file.exit_code == 0 and "audit log OK: 5 entries" in ok_file.output
    assert tampered.exit_code == 1 and "audit log TAMPERED: line 3:" in tampered.output
    assert missing.exit_code == 2 and "expected an audit log" in missing.output
    assert "controller-audit.jsonl" in missing.output.replace("\n", "")


def test_an_empty_file_verifies_with_no_entries(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.touch()

    verdict = verify_audit_log(path)
    log = AuditLog(path, policy_hash="p" * 64)

    assert (verdict.ok, verdict.entries, verdict.first_bad_line) == (True, 0, None)
    assert verdict.last_hash == GENESIS_HASH == "0" * 64
    assert (log.entries, log.last_hash) == (0, GENESIS_HASH)
