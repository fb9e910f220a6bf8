#!/usr/bin/env bash
# The one GPU check (issues 4 and 19): build the CUDA library (or take a carried build of the
# same sources), run every CUDA test with -m gpu, then the benchmarks, each part in its own
# process under its own time limit AND inside one overall budget, so one failure or hang
# cannot take the rest down and the whole run ends inside the device tool's 10-minute command
# limit. Expected on an H100/H200: about 5-7 minutes (build ~1 min or 0 when carried, tests
# ~2 min, bf16 GEMMs ~0.5 min, the four 20-step GPT-2 runs ~1.5 min, matmul + attention
# ~1.5 min).
#
#   benchmarks/gpu_check.sh [OUTDIR]       (default: $OUT if set, else benchmarks/results/gpu_run)
#   benchmarks/gpu_check.sh --dry          parse, import every Python entry point, collect the
#                                          tests, print the plan; no GPU, nothing measured
#   benchmarks/gpu_check.sh --prebuild     build the library here for sm_90 into build/cuda/
#                                          with a stamp of its sources, so a device run that
#                                          carries build/cuda can skip the build
#   GPU_CHECK_SECTIONS="bf16gemm step matmul attention sanitize"   benchmark parts, in order
#                                          (sanitize: the bf16 kernels once under compute-sanitizer
#                                          memcheck and racecheck; also: train, gpu_check.py's
#                                          older float32 step)
#   GPU_CHECK_BUDGET_S=540                 the whole run's budget; a part gets what is left
#   GPU_CHECK_TESTS=0                      skip the tests (a rerun of benchmarks only)
#   MICROGPT_CUDA_ARCHS=90                 build targets (default 90 here: one arch, faster)
#
# Device call (the carried paths exist once --prebuild and the wheel download have run here):
#   carry: .whl build/cuda microgpt/backends/_cpu.abi3.so microgpt/tokenizer/_bpe.abi3.so
#          microgpt/data/_minhash.abi3.so        (the C cores, built here by pip install -e .)
#   command: bash benchmarks/gpu_check.sh        timeout_s 600
# cffi and pycparser are not on the device image: their wheels travel in .whl/ (or .wheels/),
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl cffi==2.0.0 pycparser==3.0
# and are installed into a temporary folder first. A carried build whose stamp does not match
# the sources, or that does not load there, is rebuilt.
#
# Writes OUTDIR/build.log, tests.log, special_values.log, profile.md (one step's kernels, ours
# and PyTorch's), sanitize.log, gpu_check.json, gpu.md (the rows of
# every part merged after each one, so a later hang keeps the earlier figures) and prints the
# table last.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=run
case "${1:-}" in --dry) MODE=dry; shift;; --prebuild) MODE=prebuild; shift;; esac
OUTDIR=${1:-${OUT:-benchmarks/results/gpu_run}}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MICROGPT_CUDA_ARCHS=${MICROGPT_CUDA_ARCHS:-90}
SECTIONS=${GPU_CHECK_SECTIONS:-bf16gemm step matmul attention sanitize}
BUDGET=${GPU_CHECK_BUDGET_S:-540}
PREBUILT=build/cuda/_microgpt_cuda.so           # gpu_check.sh --prebuild puts a build here
STAMP=build/cuda/sources.sha256
GPU_TESTS="tests/test_cuda_kernels.py tests/test_cuda_binding.py tests/test_cuda_model.py tests/test_cuda_bf16.py
           tests/test_cuda_bf16_train.py tests/test_paged_attention.py"
SPECIAL_TESTS="tests/test_kernel_special_values.py"
T0=$(date +%s)

sources_hash() { cat cuda/*.cu cuda/*.cuh cuda/*.h microgpt/backends/cuda_build.py | sha256sum | cut -d' ' -f1; }

# cap for a part: its own limit, or what is left of the budget less 10 s, whichever is smaller
limit_for() {
    local left=$(( BUDGET - ($(date +%s) - T0) - 10 ))
    (( left < 1 )) && left=1
    (( left < $1 )) && echo "$left" || echo "$1"
}

part_cap() {   # seconds each benchmark part may take
    case $1 in bf16gemm) echo 75;; step) echo 150;; matmul) echo 50;; attention) echo 60;; train) echo 120;;
               sanitize) echo 90;; *) echo 60;; esac
}

part_cmd() {   # the command of a benchmark part, writing its rows to $2
    case $1 in
        bf16gemm) echo "python3 benchmarks/bench_gpu_bf16.py --sections gemm,attention --rows $2";;
        step) echo "python3 benchmarks/bench_gpu_bf16.py --sections step --rows $2 --profile $OUTDIR/profile.md";;
        matmul|attention|train) echo "python3 benchmarks/gpu_check.py --sections $1 --rows $2";;
        sanitize) echo "python3 benchmarks/bench_gpu_bf16.py --kernels-once";;   # under compute-sanitizer
        *) return 1;;
    esac
}

if [[ $MODE == dry ]]; then
    bash -n "$0" || exit 1
    echo "plan: tests ($GPU_TESTS $SPECIAL_TESTS), then parts: $SECTIONS; budget ${BUDGET} s"
    for s in $SECTIONS; do
        part_cmd "$s" /dev/null >/dev/null || { echo "unknown part $s"; exit 1; }
        echo "  $s: $(part_cmd "$s" PARTS/$s.json) (limit $(part_cap "$s") s)"
    done
    python3 -c "import microgpt.backends.cuda_build" || exit 1
    python3 benchmarks/bench_gpu_bf16.py --dry || exit 1
    python3 benchmarks/gpu_check.py --help >/dev/null || exit 1
    python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import gpu_check, gpu_train_peer" || exit 1
    # shellcheck disable=SC2086
    python3 -m pytest -q -m gpu --collect-only -p no:cacheprovider $GPU_TESTS $SPECIAL_TESTS >/dev/null || exit 1
    echo "dry run: ok"
    exit 0
fi

if [[ $MODE == prebuild ]]; then
    mkdir -p build/cuda
    python3 -m microgpt.backends.cuda_build --out "$PREBUILT" || exit 1
    sources_hash > "$STAMP" && echo "stamped $STAMP for sm_$MICROGPT_CUDA_ARCHS"
    exit 0
fi

mkdir -p "$OUTDIR"
PARTS=$(mktemp -d)
for dir in .whl .wheels; do
    if ! python3 -c "import cffi, pycparser" 2>/dev/null && ls $dir/cffi-*.whl $dir/pycparser-*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --target "$PARTS/site" $dir/cffi-*.whl \
            $dir/pycparser-*.whl || exit 1
        export PYTHONPATH="$PYTHONPATH:$PARTS/site"
    fi
done
python3 -c "import cffi, pycparser" || { echo "cffi/pycparser missing: carry their wheels in .whl/"; exit 1; }
nvidia-smi -L || echo "nvidia-smi: no GPU listed"
# the C cores (ignored builds): carried from here, else built now (seconds; minhash needs none)
for module in tokenizer/_bpe:tokenizer/bpe_build.py backends/_cpu:backends/cpu_build.py; do
    name=${module%%:*}; builder=${module#*:}
    python3 -c "import microgpt.${name//\//.}" 2>/dev/null ||
        { echo "building microgpt/$name"; python3 "microgpt/$builder" >/dev/null || echo "microgpt/$name: build failed"; }
done

echo "== build =="
start=$(date +%s)
if [[ -f $PREBUILT && -f $STAMP && "$(cat $STAMP)" == "$(sources_hash)" ]] &&
   MICROGPT_CUDA_LIB=$PWD/$PREBUILT python3 -c \
       "from microgpt.backends import cuda_runtime as rt; assert rt.AVAILABLE, rt.UNAVAILABLE_REASON" \
       >"$OUTDIR/build.log" 2>&1; then
    export MICROGPT_CUDA_LIB=$PWD/$PREBUILT
    echo "carried library $PREBUILT matches the sources and loads: no build" | tee -a "$OUTDIR/build.log"
else
    echo "no carried library of these sources that loads here: building" | tee -a "$OUTDIR/build.log"
    timeout "$(limit_for 240)" python3 -m microgpt.backends.cuda_build >"$OUTDIR/build.log" 2>&1 ||
        { tail -30 "$OUTDIR/build.log"; echo "BUILD FAILED"; exit 1; }
fi
echo "build took $(( $(date +%s) - start )) s"

if [[ ${GPU_CHECK_TESTS:-1} != 0 ]]; then
    echo "== CUDA tests (pytest -m gpu) =="
    # shellcheck disable=SC2086
    timeout "$(limit_for 150)" python3 -m pytest -m gpu -rfE -p no:cacheprovider --continue-on-collection-errors $GPU_TESTS \
        2>&1 | tee "$OUTDIR/tests.log" | tail -40
    echo "== NaN/inf patterns of every kernel against the reference (pytest -m gpu) =="
    timeout "$(limit_for 60)" python3 -m pytest -m gpu -rfE -p no:cacheprovider --continue-on-collection-errors $SPECIAL_TESTS \
        2>&1 | tee "$OUTDIR/special_values.log" | tail -20
fi

echo "== benchmarks =="
for section in $SECTIONS; do
    limit=$(limit_for "$(part_cap "$section")")
    if (( limit < 20 )); then
        echo "$section: SKIPPED, ${limit} s left of the ${BUDGET} s budget"
        continue
    fi
    echo "-- $section (limit $limit s)"
    if [[ $section == sanitize ]]; then   # the bf16 kernels once under memcheck, then racecheck
        sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
        for tool in memcheck racecheck; do
            echo "== compute-sanitizer --tool $tool ==" >>"$OUTDIR/sanitize.log"
            timeout "$(limit_for $(( limit / 2 )))" "$sanitizer" --tool "$tool" --error-exitcode 9 \
                $(part_cmd sanitize) >>"$OUTDIR/sanitize.log" 2>&1
            echo "sanitize $tool: exit status $? ($(grep -c 'WRONG' "$OUTDIR/sanitize.log") WRONG lines so far;" \
                 "$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUTDIR/sanitize.log" | tail -1))"
        done
        continue
    fi
    # shellcheck disable=SC2046
    timeout "$limit" $(part_cmd "$section" "$PARTS/$section.json") || echo "$section: exit status $?"
    python3 benchmarks/gpu_check.py --merge "$PARTS"/*.json --out "$OUTDIR" >/dev/null   # keep results so far
done
python3 benchmarks/gpu_check.py --merge "$PARTS"/*.json --out "$OUTDIR"
echo "tests: $(tail -1 "$OUTDIR/tests.log" 2>/dev/null)"
echo "special values: $(tail -1 "$OUTDIR/special_values.log" 2>/dev/null)"
echo "total $(( $(date +%s) - T0 )) s"
