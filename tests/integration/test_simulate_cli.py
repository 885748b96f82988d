"""``python -m reconciler simulate`` from the command line: the report, --json, a sweep with its PNG, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from reconciler.cli import main


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["simulate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_has_the_figures_an_operator_needs(capsys) -> None:
    code, out, _ = run(capsys, "--json", "--days", "2", "--sessions-per-day", "60", "--arrivals", "poisson")
    assert code == 0
    body = json.loads(out)
    for key in ("cost_usd", "gpu_usd", "storage_usd", "wait_p50_s", "wait_p95_s", "gpu_hours"):
        assert isinstance(body[key], float), key
    assert body["cost_usd"] == pytest.approx(body["gpu_usd"] + body["storage_usd"], abs=1e-3)
    assert set(body["wait_by_path"]) == {"warm", "standby_resume", "cold_create"}
    assert body["policy"]["idle_ttl_s"] == 300 and body["workload"]["arrivals"] == "poisson"
    assert body["sessions"] > 0 and body["elapsed_s"] >= 0


def test_the_seed_table_from_the_command_line(capsys) -> None:
    code, out, _ = run(capsys, "--seed-assumptions", "--sessions-per-day", "10", "--session-minutes", "30")
    assert code == 0
    leased = next(line for line in out.splitlines() if "GPU leased" in line)
    assert "120.00" in leased and "150.0" in leased
    assert "simulated 30 days in" in out and "planning passes" in out


@pytest.mark.parametrize(("args", "complaint"), [
    (["--schedule", "09:00-17:00"], "09:00-17:00=2"),
    (["--schedule", "09:00-09:00=1"], "empty"),
    (["--tz", "Nowhere/City"], "unknown time zone"),
    (["--resume-seconds", "60-30"], "low <= high"),
    (["--p-host-busy", "2"], "probability"),
    (["--idle-ttl", "-1"], "idle_ttl_s"),
    (["--sweep", "--sweep-standby", "one"], "comma-separated"),
])
def test_bad_input_is_named_and_nothing_runs(capsys, args, complaint) -> None:
    code, out, err = run(capsys, *args)
    assert code == 2 and out == ""
    assert err.startswith("simulate: ") and complaint in err and "Traceback" not in err


def test_a_sweep_prints_the_table_writes_the_frontier_and_recommends(capsys, tmp_path) -> None:
    png = tmp_path / "frontier.png"
    code, out, _ = run(capsys, "--sweep", "--days", "3", "--sessions-per-day", "40", "--sweep-idle-ttl", "0,600",
                       "--sweep-standby", "0,1", "--sweep-hot-spares", "0,1", "--sweep-schedule", "none",
                       "--target-p95", "2", "--plot", str(png))
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    lines = out.splitlines()
    rows = [line for line in lines if line[:2] in ("  ", "* ", "->") and line[2:].strip()[:1].isdigit()]
    assert len(rows) == 8
    assert sum(line.startswith("->") for line in rows) == 1
    assert any(line.startswith("recommended: ") for line in lines)
    code, out, _ = run(capsys, "--sweep", "--json", "--days", "3", "--sessions-per-day", "40",
                       "--sweep-idle-ttl", "0,600", "--sweep-standby", "0,1", "--sweep-hot-spares", "0,1",
                       "--sweep-schedule", "none", "--plot", "")
    body = json.loads(out)
    assert len(body["runs"]) == 8 and body["plot"] is None
    assert body["recommended"]["wait_p95_s"] <= 2.0
    meeting = [r["cost_usd"] for r in body["runs"] if r["wait_p95_s"] <= 2.0 and r["sessions_without_pod"] == 0]
    assert body["recommended"]["cost_usd"] == min(meeting)


def test_the_command_is_there_with_help() -> None:
    result = subprocess.run([sys.executable, "-m", "reconciler", "simulate", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0
    for flag in ("--sessions-per-day", "--session-minutes", "--days", "--gpu-price", "--idle-ttl", "--standby",
                 "--hot-spares", "--schedule", "--volume-gb", "--resume-seconds", "--create-seconds", "--arrivals",
                 "--seed", "--json", "--sweep", "--target-p95"):
        assert flag in result.stdout


def test_long_runs_show_progress_on_stderr(capsys) -> None:
    code, out, err = run(capsys, "--days", "3", "--sessions-per-day", "400", "--progress")
    assert code == 0 and "simulating [" in err and "100%" in err.splitlines()[-1]
    assert "simulating" not in out  # the report stays clean for a pipe
    code, _, err = run(capsys, "--days", "1", "--json")
    assert code == 0 and err == ""  # not a terminal: no bar unless asked
