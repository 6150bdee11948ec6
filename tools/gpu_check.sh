#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md in one run, on a machine with one GPU and jax[cuda],
# torch with CUDA, flax, optax, orbax and chex installed; results go to $OUT (default ./gpu_out).
#
#   bash tools/gpu_check.sh [wheel dir with pytorch_msssim, piq, piqa: pure Python, no deps]
#
# 1. the metric benchmark: every metric's forward + gradient at B=128 64x64 grey / RGB, MS-SSIM
#    B=32 192x192, SSIM / MS-SSIM of one 1080x1920 and one 2160x3840 RGB image, compile time
#    apart, XLA's memory per program, the PyTorch peers on the same GPU in the same run;
# 2. the CelebA VAE's training step with each loss against its L2 step, grey and RGB;
# 3. the test files of `perceptual` on the GPU (its values against the golden / peer values).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
if [[ $# -gt 0 ]]; then
  python3 -m pip install -q --no-deps "$1"/*.whl
fi
{ nvidia-smi; python3 -c "import jax, torch; print(jax.__version__, jax.devices(), torch.__version__)"; } \
  > "$OUT/machine.txt" 2>&1
python3 -m eval.benchmark_metrics --runs=30 --peers-python="$(command -v python3)" \
  > "$OUT/benchmark_metrics.txt" 2>&1
python3 -m eval.benchmark_training --arch celeba --channels 1 3 --batch 64 \
  --loss l2 ssim ms_ssim gmsm watson_dft > "$OUT/benchmark_training.txt" 2>&1
python3 -m pytest -q -p no:cacheprovider tests/perceptual > "$OUT/tests_perceptual.txt" 2>&1
tail -n 3 "$OUT"/*.txt
