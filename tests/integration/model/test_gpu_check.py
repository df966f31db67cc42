"""The prepared GPU script runs end to end (on CPU with --smoke) and writes every figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_the_gpu_check_smoke_run_writes_training_decode_and_estimate_figures(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--smoke", "--out", str(out),
                           "--peak-fp32", "1e11", "--peak-bf16", "2e11"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["smoke"] is True
    for precision in ("float32", "bf16"):
        figures = report["training"][precision]
        assert figures["tokens_per_s"] > 0 and figures["loss_finite"]
        assert report["rtx_4060_hours"][precision] > 0
    assert report["decode"]["batch_1"]["step_ms"] > 0 and report["decode"]["batch_64"]["tokens_per_s"] > 0
    assert "RTX 4060 estimate" in done.stdout


def test_without_a_gpu_the_full_run_says_how_to_check_it(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--out", str(tmp_path / "x.json")],
                          cwd=ROOT, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0 and "--smoke" in (done.stderr + done.stdout)
