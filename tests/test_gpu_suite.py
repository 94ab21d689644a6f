"""benchmarks/gpu_suite.py runs end to end with --tiny (CPU, small shapes), so that the
GPU call, when a GPU is lent, cannot fail on a typo: every case in one process (quick), and
one case in a child process as the GPU run starts each."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SUITE = ROOT / "benchmarks" / "gpu_suite.py"


@pytest.mark.e2e
def test_the_gpu_suite_runs_every_case_with_tiny_shapes(tmp_path):
    out = tmp_path / "gpu.md"
    done = subprocess.run(
        [sys.executable, str(SUITE), "--tiny", "--in-process", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    for heading in ("## 1. Token-level KD loss", "## 2. Classic KD step", "## 3. `llm_token_kd`"):
        assert heading in text
    assert "failed" not in text and "timed out" not in text and "not run" not in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    methods = {"naive", "distill", "distill-compiled"}
    assert {row.split(" | ")[2] for row in rows if " | forward KL | " in row} == methods
    for step in ("student step", "distill KD step", "distill, teacher cache (unchecked)"):
        assert any(row.startswith(f"| {step} | ") for row in rows)
    for variant in ("labels only", "live teacher", "top-64 cache"):
        assert any(row.startswith(f"| {variant} | ") for row in rows)


@pytest.mark.e2e
def test_a_case_runs_in_a_child_process_and_answers_in_json():
    params = json.dumps({"n": 64, "dtype": "float32"})
    done = subprocess.run(
        [sys.executable, str(SUITE), "--case", "matmul", "--params", params],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["tflops"] > 0
