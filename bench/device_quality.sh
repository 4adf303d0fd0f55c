#!/usr/bin/env bash
# The quality benchmark's GPU side (issue 10's GPU target: the quality preset in
# at most 0.25x the classic PyTorch recipe's time on the same GPU), a second,
# optional device call after bench/device_check.sh. The device machine's carry
# has room for the VGG-16 file only (59 MB of 64 MiB), not AlexNet's (9.9 MB),
# so the run there only makes and times the pictures (--no-score); they come back
# as one tar (a device run returns at most 8 files) and are scored here:
#
#   there: CPSTYLE_COMMIT=$(git rev-parse HEAD) bash bench/device_quality.sh
#   here:  mkdir -p /tmp/qgpu && tar xf quality-pictures.tar -C /tmp/qgpu &&
#          cp quality-gpu-*.json bench/results/ &&
#          python -m bench.quality --score bench/results/quality-gpu-...json --work-dir /tmp/qgpu
#
# Writes $OUT/quality-gpu-<sizes>-<commit>.json, $OUT/quality-pictures.tar and
# $OUT/device-quality.log. Expected 2-4 minutes on an H100/H200 (not yet run
# there: about 3 s a picture for the anchor's 300 L-BFGS iterations at 512 px
# is an estimate); QUALITY_TIMEOUT (default 300 s) bounds it.
set -uo pipefail
# shellcheck source=bench/device_env.sh
source "$(dirname "$0")/device_env.sh"
WORK=${TMPDIR:-/tmp}/cpstyle-quality-gpu

main() {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    rm -rf "$WORK" && mkdir -p "$WORK"
    timeout "${QUALITY_TIMEOUT:-300}" $PY -m bench.quality --device gpu --no-score \
        --sizes "${QUALITY_SIZES:-256,512}" --methods classic,quality \
        --out-dir "$OUT" --work-dir "$WORK"
    echo "== bench.quality: exit $? =="
    tar cf "$OUT/quality-pictures.tar" -C "$WORK" .
}

main 2>&1 | tee "$OUT/device-quality.log"
exit "${PIPESTATUS[0]}"
