"""Smoke test of bench/gpu_check.py on CPU: it runs at tiny sizes, prints its one table, passes
its precision checks and reaches no Ray or vLLM import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_cpu_and_prints_its_table():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--small", "--device", "cpu"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "GPU check on CPU" in out
    assert "| check | fp32 | bf16 | result | status |" in out
    for row in ("RM step, bf16 autocast vs fp32: gradient", "policy step, bf16 autocast vs fp32: loss",
                "merge.average M=4, out= reused (fp32)", "merge.slerp_many M=2, out= reused (bf16)", "imports"):
        assert f"| {row} |" in out, row
    assert "FAIL" not in out


def test_gpu_check_imports_neither_ray_nor_vllm():
    code = (
        "import sys; sys.path.insert(0, 'bench'); import gpu_check; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'vllm')); "
        "assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
