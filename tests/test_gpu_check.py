"""``benchmarks/gpu_check.py`` without CUDA: says so, checks its pieces import, writes its files, exits 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("OUT", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    if not torch.cuda.is_available():
        assert "CUDA is not available" in proc.stdout
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert results["mode"] == "dry-run"
    assert results["parts"]["imports"]["ok"], results["parts"]["imports"]
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| imports | ok |" in table
