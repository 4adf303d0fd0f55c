#!/usr/bin/env bash
# The prepared check for a GPU machine (see bench/README.md): the `gpu` tests,
# then the GPU benchmark against PyTorch, then one results file
#   $OUT/<date>-<gpu>-<commit>.json   (commit it under bench/results/)
# and a short table. Runs from the repository root of a copy of the tree with
# the weights carried in weights/vgg16.h5. About 4-5 minutes on an H100/H200.
#
#   CPSTYLE_COMMIT=$(git rev-parse HEAD) bash bench/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export CPSTYLE_WEIGHTS=${CPSTYLE_WEIGHTS:-$PWD/weights/vgg16.h5}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
export CPSTYLE_COMMIT=${CPSTYLE_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
PY=${PYTHON:-python3}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
$PY -c "import cupy, numpy, torch; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__)"

start=$(date +%s)
timeout "${TEST_TIMEOUT:-240}" $PY -m pytest -q -m gpu -p no:cacheprovider \
    --junitxml="$OUT/gpu-tests.xml" tests/ 2>&1 | tee "$OUT/gpu-tests.log"
echo "gpu tests: $(( $(date +%s) - start )) s"

start=$(date +%s)
timeout "${BENCH_TIMEOUT:-300}" $PY -m bench --device gpu --out "$OUT/bench.json" ${BENCH_ARGS:-} \
    2>&1 | tee "$OUT/bench.log"
echo "bench: $(( $(date +%s) - start )) s"

timeout "${PROFILE_TIMEOUT:-90}" $PY -m bench.profile_ops --size 512 --size 1024 \
    --json "$OUT/profile.json" 2>&1 | tee "$OUT/profile.log"
# the same with every conv in the col2im form where it has no more columns
timeout "${PROFILE_TIMEOUT:-90}" $PY -m bench.profile_ops --size 1024 --col2im all \
    --json "$OUT/profile-col2im-all.json" 2>&1 | tee "$OUT/profile-col2im-all.log"
# each conv's GEMM alone, both lowerings, fp32 and tf32 (cuBLAS's view of the shapes)
timeout "${PROFILE_TIMEOUT:-90}" $PY -m bench.profile_ops --gemm-shapes --size 1024 \
    --json "$OUT/gemm-shapes.json" 2>&1 | tee "$OUT/gemm-shapes.log"

$PY bench/device_check.py --tests "$OUT/gpu-tests.xml" --bench "$OUT/bench.json" --out-dir "$OUT"
