"""The GPU check script (benchmarks/gpu_check.sh) runs end to end in its CPU dry-run mode and prints
its one table: every row present, the scores' agreement and the training steps measured."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_gpu_check_dry_run_prints_the_whole_table():
    env = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = {line.split(" | ")[0].strip("| "): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    for name in ("load average before", "model", "exact ranking, bf16", "rerank K=4, bf16", "bf16 vs fp32 scores",
                 "SDPA backend, scoring", "training step, B x B, B=2", "training step, hard negatives, B=2",
                 "training step, hard negatives, B=4", "SDPA backend, training", "load average after"):
        assert name in rows, (name, proc.stdout)
    assert "13 x 7 = 91 pairs" in rows["exact ranking, bf16"]
    spearman = float(re.search(r"Spearman ([0-9.]+)", rows["bf16 vs fp32 scores"]).group(1))
    assert 0.99 < spearman <= 1.0  # bf16 ranks as fp32 does, give or take near-ties
    # B x B; hard: 2 B (1 + min(K, B - 1) + min(R, B - 1)) with K = R = 8 (coattn/negatives.py)
    for name, pairs in (("training step, B x B, B=2", 4), ("training step, hard negatives, B=2", 12),
                        ("training step, hard negatives, B=4", 56)):
        assert f"{pairs:,} cascade pairs per step" in rows[name] and "samples/s" in rows[name], rows[name]
    assert re.search(r"(flash|memory-efficient|cudnn|math)", rows["SDPA backend, scoring"])
