# Sourced by bench/device_check.sh and bench/device_quality.sh: the repository
# root as the working folder, $OUT, the carried weights, the commit (no .git
# travels to the device machine) and $PY.
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export CPSTYLE_WEIGHTS=${CPSTYLE_WEIGHTS:-$PWD/weights/vgg16.h5}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
export CPSTYLE_COMMIT=${CPSTYLE_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
PY=${PYTHON:-python3}
