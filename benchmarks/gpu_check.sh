#!/usr/bin/env bash
# The one GPU check (issue 4): build the CUDA library, run every CUDA kernel test, then the
# benchmarks (matmul ladder vs cuBLAS, attention vs SDPA, a GPT-2 124M training step vs
# PyTorch eager), each section in its own process under a time limit so one failure or
# hang cannot take the rest down. About 4-5 minutes on an H100.
#
#   benchmarks/gpu_check.sh [OUTDIR]       (default: $OUT if set, else benchmarks/results/gpu_run)
#   GPU_CHECK_SECTIONS="matmul train attention"   the benchmark sections, in this order
#   MICROGPT_CUDA_ARCHS=90                         build for one arch only (faster)
#
# Writes OUTDIR/tests.log, OUTDIR/special_values.log, OUTDIR/gpu_check.json and OUTDIR/gpu.md
# and prints one table last.
# cffi/pycparser: if python3 lacks them and .wheels/ holds their wheels, they are installed
# to a temporary folder first (a GPU machine without network access).
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-benchmarks/results/gpu_run}}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PARTS=$(mktemp -d)

if ! python3 -c "import cffi, pycparser" 2>/dev/null && ls .wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target "$PARTS/site" .wheels/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:$PARTS/site"
fi
nvidia-smi -L || echo "nvidia-smi: no GPU listed"

echo "== build =="
start=$(date +%s)
python3 -m microgpt.backends.cuda_build || { echo "BUILD FAILED"; exit 1; }
echo "build took $(( $(date +%s) - start )) s"

echo "== CUDA kernel tests (pytest -m gpu) =="
timeout 75 python3 -m pytest -m gpu -rfE -p no:cacheprovider tests/test_cuda_kernels.py tests/test_cuda_binding.py tests/test_cuda_model.py \
    2>&1 | tee "$OUTDIR/tests.log" | tail -40
echo "== NaN/inf patterns of every kernel against the reference (pytest -m gpu) =="
timeout 60 python3 -m pytest -m gpu -rfE -p no:cacheprovider tests/test_kernel_special_values.py \
    2>&1 | tee "$OUTDIR/special_values.log" | tail -20

echo "== benchmarks =="
for section in ${GPU_CHECK_SECTIONS:-matmul train attention}; do
    case $section in matmul) limit=50;; train) limit=120;; *) limit=60;; esac
    timeout $limit python3 benchmarks/gpu_check.py --sections "$section" --rows "$PARTS/$section.json"
    python3 benchmarks/gpu_check.py --merge "$PARTS"/*.json --out "$OUTDIR" >/dev/null   # keep results so far
done
python3 benchmarks/gpu_check.py --merge "$PARTS"/*.json --out "$OUTDIR"
echo "tests: $(tail -1 "$OUTDIR/tests.log")"
