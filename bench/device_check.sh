#!/usr/bin/env bash
# The prepared check for a GPU machine (see bench/README.md), in this order:
#   1. the `gpu` tests as committed (the default convolutions, CPSTYLE_CONV unset)
#   2. python -m bench.tune_conv --size 512 --size 1024: the implicit-GEMM conv's
#      tiles per shape, written to the tree's cpstyle/data/conv_tiles.json (which
#      steps 3 and 4 then use) and copied to $OUT
#   3. the `gpu` tests again with CPSTYLE_CONV=igemm
#   4. the GPU benchmark against PyTorch with CPSTYLE_CONV=igemm ($BENCH_ARGS passed on;
#      the tutorial's fp32/tf32 cases also once uncaptured, CPSTYLE_CAPTURE=0)
#   5. python -m bench.capture (issue 12): our Gram kernels against cupy.matmul per
#      shape, captured against uncaptured iterations (checked bitwise first), the
#      host time per replayed graph
# then one results file $OUT/<date>-<gpu>-<commit>.json (commit it under bench/results/).
# What comes back is only $OUT, at most 8 files: this script writes 8 there
# (device-check.log, gpu-tests.xml, tune_conv.json, conv_tiles.json,
# gpu-tests-igemm.xml, bench.json, capture.json, the results file). Runs from the
# repository root of a copy of the tree, with the weights carried in weights/vgg16.h5.
# Expected 4-5 minutes on an H100/H200. With every step at its timeout it is
# 140 + 145 + 100 + 160 + 45 s = 590 s, which still fits a 600 s command (the first
# test run compiles every igemm tile set; the second finds them in CuPy's cache).
#
#   CPSTYLE_COMMIT=$(git rev-parse HEAD) bash bench/device_check.sh
set -uo pipefail
# shellcheck source=bench/device_env.sh
source "$(dirname "$0")/device_env.sh"
unset CPSTYLE_CONV

step() {  # step NAME TIMEOUT COMMAND...: run it, say how long it took and how it ended
    local name=$1 limit=$2 start rc
    shift 2
    echo "== $name (timeout ${limit} s) =="
    start=$(date +%s)
    timeout "$limit" "$@"
    rc=$?
    echo "== $name: $(( $(date +%s) - start )) s, exit $rc$([ $rc -eq 124 ] && echo ' (timed out)') =="
}

main() {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
    $PY -c "import cupy, numpy, torch; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__)"

    step "gpu tests" "${TEST_TIMEOUT:-140}" $PY -m pytest -q -m gpu -p no:cacheprovider \
        --junitxml="$OUT/gpu-tests.xml" tests/

    step "tune_conv" "${TUNE_TIMEOUT:-145}" $PY -m bench.tune_conv --size 512 --size 1024 \
        --budget-s "${TUNE_BUDGET:-100}" --json "$OUT/tune_conv.json"
    if [ -f cpstyle/data/conv_tiles.json ]; then
        cp cpstyle/data/conv_tiles.json "$OUT/conv_tiles.json"
    fi

    CPSTYLE_CONV=igemm step "gpu tests, CPSTYLE_CONV=igemm" "${TEST2_TIMEOUT:-100}" \
        $PY -m pytest -q -m gpu -p no:cacheprovider --junitxml="$OUT/gpu-tests-igemm.xml" tests/

    # shellcheck disable=SC2086  # BENCH_ARGS is a list of words
    CPSTYLE_CONV=igemm step "bench, CPSTYLE_CONV=igemm" "${BENCH_TIMEOUT:-160}" \
        $PY -m bench --device gpu --out "$OUT/bench.json" ${BENCH_ARGS:-}

    CPSTYLE_CONV=igemm step "bench.capture" "${CAPTURE_TIMEOUT:-45}" \
        $PY -m bench.capture --json "$OUT/capture.json"

    $PY bench/device_check.py --tests "$OUT/gpu-tests.xml" --tests-igemm "$OUT/gpu-tests-igemm.xml" \
        --tune "$OUT/tune_conv.json" --bench "$OUT/bench.json" --capture "$OUT/capture.json" \
        --out-dir "$OUT"
}

main 2>&1 | tee "$OUT/device-check.log"
exit "${PIPESTATUS[0]}"
