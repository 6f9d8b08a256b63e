"""The schedule ablation runner (benchmarks/ablate_schedules.py) end to end in its --quick form, on two schedules."""

from __future__ import annotations

import json
import math

import pytest
from _tiny import load_benchmark


@pytest.mark.slow
def test_quick_ablation_writes_the_table_and_plot(tmp_path, capsys):
    runner = load_benchmark("ablate_schedules")
    results = tmp_path / "results"
    assert runner.main(["--quick", "--configs", "uniform", "learned", "--workers", "1",
                        "--out", str(tmp_path / "run"), "--results", str(results)]) == 0
    summary = json.loads((results / "ablation_quick.json").read_text())
    assert list(summary["table"]) == ["uniform", "learned"]
    for row in summary["table"].values():
        assert set(row) == {"worst_spearman", "mean_spearman", "hypervolume", "heldout_accuracy", "train_seconds"}
        assert 0.0 <= row["heldout_accuracy"]["mean"] <= 1.0
        assert row["hypervolume"]["mean"] >= 0.0 and math.isfinite(row["worst_spearman"]["mean"])
    # The learned schedule was updated from the held-out evaluations during training.
    learned = next(r for r in summary["runs"] if r["config"] == "learned")
    assert learned["schedule_stats"]["lambda_schedule/updates"] >= 1
    png = (results / "ablation_quick.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    table = capsys.readouterr().out
    assert "| uniform |" in table and "| learned |" in table and "worst-dim Spearman" in table
