"""Smoke test of the metric benchmark's command (figures are not asserted: timing is not a test)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_benchmark_prints_table_and_bound():
  out = subprocess.run(
    [sys.executable, "-m", "eval.benchmark_metrics", "--threads=1", "--losses", "l2", "ssim"]
    + ["--runs=1", "--no-ms-ssim-case"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    check=True,
  ).stdout
  rows = [line.split() for line in out.splitlines() if line.startswith("B=128 64x64")]
  ours = [(r[1], r[2]) for r in rows if r[2] in ("l2", "ssim")]
  assert ours == [(f"64x64x{c}", n) for c in (1, 3) for n in ("l2", "ssim")]
  assert all(float(r[3]) > 0 for r in rows)
  assert "GFLOP/s (float32 GEMM peak" in out
  assert "ssim grey B=128 64x64x1: 373 FLOP/pixel" in out
  volumes = [line.split()[2] for line in out.splitlines() if line.startswith("B=8 64x64x64x1")]
  assert volumes == ["l2", "ssim"]  # the 3-D row (peers only with --peers-python)
  assert "ssim grey B=8 64x64x64x1: 527 FLOP/pixel" in out
