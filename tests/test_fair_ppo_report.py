"""`openrlhf-fair ppo-report`: per-group reward, weights and F over steps, from TensorBoard logs written the way
OpenRLHF's TensorboardLogger writes them (``train/<metric>`` per global step). The same command on a real run's
logs is checked in tests/test_fair_ppo_multinode.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from openrlhf_fair.report import ppo as ppo_report

BIN = Path(sys.executable).parent


def write_run(folder: Path, series: dict[str, list[float]]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder))
    for tag, values in series.items():
        for step, value in enumerate(values, 1):
            writer.add_scalar(f"train/{tag}", value, step)
    writer.close()


FAIR_RUN = {
    "fairness/label_reward/easy": [1.5, 1.25, 1.0],
    "fairness/label_reward/hard": [-1.5, -1.0, -0.25],
    "fairness/weight_min": [0.8, 0.85, 0.9],
    "fairness/weight_max": [1.2, 1.15, 1.1],
    "fairness/F": [0.6, 0.7, 0.9],
    "fairness/jain": [0.62, 0.71, 0.91],
    "policy_loss": [0.1, 0.2, 0.3],
}


def test_report_reads_the_series_and_writes_table_plot_and_json(tmp_path):
    write_run(tmp_path / "tb" / "fair" / "run_2026", FAIR_RUN)
    write_run(tmp_path / "tb" / "plain" / "run_2026", {"policy_loss": [0.1, 0.2]})
    out = tmp_path / "report"
    assert ppo_report.main(["--logdir", str(tmp_path / "tb"), "--out", str(out)]) == 0
    doc = json.loads((out / "ppo_report.json").read_text())
    fair = doc["tb/fair/run_2026"]
    assert set(fair) == {k for k in FAIR_RUN if k.startswith("fairness/")}  # non-fairness metrics left out
    assert fair["fairness/label_reward/hard"] == [[1, -1.5], [2, -1.0], [3, -0.25]]
    assert doc["tb/plain/run_2026"] == {}
    table = (out / "ppo_report.md").read_text()
    assert "| tb/fair/run_2026 | 3 | easy +1.500 -> +1.000; hard -1.500 -> -0.250 | 3.000 -> 1.250 |" in table
    assert "0.850..1.150" in table and "0.6000 -> 0.9000" in table
    assert "| tb/plain/run_2026 | - | no fairness metrics" in table
    assert (out / "ppo_report.png").stat().st_size > 10_000


def test_several_logdirs_are_compared(tmp_path):
    write_run(tmp_path / "a", FAIR_RUN)
    write_run(tmp_path / "b", {**FAIR_RUN, "fairness/F": [0.5, 0.5, 0.5]})
    out = tmp_path / "report"
    assert ppo_report.main(["--logdir", str(tmp_path / "a"), "--logdir", str(tmp_path / "b"), "--out", str(out)]) == 0
    doc = json.loads((out / "ppo_report.json").read_text())
    assert list(doc) == ["a", "b"] and doc["b"]["fairness/F"][-1] == [3, 0.5]


def test_missing_or_empty_logdir_is_a_clear_error(tmp_path, capsys):
    assert ppo_report.main(["--logdir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert ppo_report.main(["--logdir", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert "no TensorBoard event files" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_cli_subcommand():
    result = subprocess.run([str(BIN / "openrlhf-fair"), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "  ppo-report " in result.stdout
    result = subprocess.run([str(BIN / "openrlhf-fair"), "ppo-report", "--logdir", "/nonexistent/tb"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "openrlhf-fair ppo-report: --logdir /nonexistent/tb: not a folder" in result.stderr
    assert "Traceback" not in result.stderr
