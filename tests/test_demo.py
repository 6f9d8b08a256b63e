"""The demo pipeline end to end on a miniature setting: world → SFT → three methods → controllability → report."""

from __future__ import annotations

import json

import pytest

from lambda_dpo.demo.cli import DemoSettings, run_demo


@pytest.mark.slow
def test_miniature_demo_writes_report_plots_and_models(tmp_path):
    settings = DemoSettings(num_train=48, sft_steps=6, dpo_steps=3, batch_size=4, eval_prompts=2, samples=1,
                            grid_n=2, max_new_tokens=8, hidden=32, layers=1)
    summary = run_demo(str(tmp_path), settings=settings)
    assert set(summary["methods"]) == {"λ-DPO", "unconditioned", "DPO"}
    for row in summary["methods"].values():
        assert set(row["spearman"]) == {"concise", "detailed", "polite"}
        assert 0.0 <= row["heldout_accuracy"] <= 1.0
        assert row["hypervolume"] >= 0.0
    report = (tmp_path / "report.md").read_text()
    assert "| λ-DPO |" in report and "| unconditioned |" in report and "| DPO |" in report
    for png in ("score_vs_lambda.png", "pareto.png"):
        data = (tmp_path / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert json.loads((tmp_path / "report.json").read_text())["settings"]["dpo_steps"] == 3
    for name in ("lambda-dpo", "unconditioned", "dpo"):
        assert (tmp_path / "models" / name / "lambda_dpo.json").exists()
