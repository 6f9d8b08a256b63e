"""The prepared GPU measurement (benchmarks/gpu_check.sh) in its CPU dry mode: the same three commands on the 7M
shape, so the script a lent GPU runs once is known to work before the GPU time is spent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_gpu_check_dry_run_writes_the_three_results(tmp_path):
    env = {**os.environ, "GPU_CHECK_OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    for name, tuning in (("lora", True), ("full", False)):
        result = json.loads((tmp_path / f"gpu_check_{name}.json").read_text())
        settings = result["settings"]
        assert (settings["k"], settings["lora"], settings["gradient_checkpointing"]) == (4, tuning, True)
        assert {row["variant"] for row in result["rows"]} >= {"a", "b", "c"}
        assert all(row["step_seconds"] > 0 and row["peak_rss_mib"] > 0 for row in result["rows"])
        assert result["ratios"][0]["a_over_c"] > 0
    trl = json.loads((tmp_path / "gpu_check_trl.json").read_text())
    assert trl["settings"]["gradient_checkpointing"] is True
    assert {row["trainer"] for row in trl["rows"]} == {"ours", "trl"}
