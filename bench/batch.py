"""Batch overhead (issue 15's target): what scheduling, loading and writing add
to the jobs' own optimisation time, and how fast a rerun skips.

    python -m bench.batch [--quick] [--engines local,dask] [--workers N] [--out PATH]

Each engine runs, as a fresh `python -m cpstyle batch` subprocess (device cpu,
the CLI's default preset), every pair of 4 bundled photos x 3 bundled paintings:
12 jobs, content at 128 px, 30 iterations, into an empty folder; then the same
command again, which must skip all 12. Measured in the same run, from the log:

    overhead = batch wall time / (sum of the jobs' own style_transfer seconds / workers)

(workers: the distinct worker processes in the log). Targets: overhead <= 1.15
with either engine; the rerun under 5 s. One line per case:

    batch local | 12 jobs 128 px 30 it | 2 workers | wall 61.2 s | jobs 110.3 s | 1.11x | rerun 0.9 s

--quick: 2 x 2 jobs at 48 px, 3 iterations (a smoke test; targets not checked).
Results: bench/results/batch-cpu-<commit>.json (--out elsewhere)."""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DATA = REPO / "cpstyle" / "data"
CONTENTS = ("tubingen.jpg", "chelsea.jpg", "grace_hopper.jpg", "summer_palace.jpg")
STYLES = ("starry_night.jpg", "great_wave.jpg", "the_scream.jpg")
FULL = dict(contents=4, styles=3, size=128, iterations=30)
QUICK = dict(contents=2, styles=2, size=48, iterations=3)
OVERHEAD_TARGET = 1.15
RERUN_TARGET_S = 5.0


def _commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short=8", "HEAD"], cwd=REPO, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _device():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu: {cpu}, {os.cpu_count()} cores"


def _batch(folder, case, engine, workers, extra=()):
    """One `cpstyle batch` run -> (wall seconds, stdout's last line)."""
    cmd = [sys.executable, "-m", "cpstyle", "batch", "--contents", str(folder / "contents"),
           "--styles", str(folder / "styles"), "--out-dir", str(folder / f"out-{engine}"),
           "--content-size", str(case["size"]), "--iterations", str(case["iterations"]),
           "--device", "cpu", "--seed", "0", "--engine", engine, "-q", *extra]
    if workers:
        cmd += ["--workers", str(workers)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"bench.batch: {' '.join(cmd)} exited {p.returncode}:\n{p.stderr}")
    return wall, p.stdout.strip().splitlines()[-1]


def measure(engine, case, workers=None, folder=None):
    """One engine: the batch, then its rerun -> a result dict."""
    jobs = case["contents"] * case["styles"]
    wall, line = _batch(folder, case, engine, workers)
    log = folder / f"out-{engine}" / "cpstyle-batch.jsonl"
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    done = [r for r in recs if r["status"] == "done"]
    if len(done) != jobs:
        raise SystemExit(f"bench.batch: {engine}: {len(done)} of {jobs} jobs done ({line})")
    n_workers = len({r["worker"] for r in done})
    job_seconds = sum(r["seconds"] for r in done)
    rerun, rerun_line = _batch(folder, case, engine, workers)
    if f"0 done, {jobs} skipped" not in rerun_line:
        raise SystemExit(f"bench.batch: {engine}: the rerun did not skip every job: {rerun_line}")
    return dict(engine=engine, jobs=jobs, size=case["size"], iterations=case["iterations"],
                workers=n_workers, wall_s=wall, job_seconds=job_seconds,
                overhead=wall / (job_seconds / n_workers), rerun_s=rerun,
                target_hits=sum(r.get("target_hits") or 0 for r in done),
                job_s_median=sorted(r["seconds"] for r in done)[len(done) // 2])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 x 2 jobs at 48 px, 3 iterations")
    ap.add_argument("--engines", default="local,dask")
    ap.add_argument("--workers", type=int, default=None, help="default: the batch's own")
    ap.add_argument("--out", default=None, help="the JSON (default bench/results/...)")
    args = ap.parse_args(argv)
    case = QUICK if args.quick else FULL
    print(_device(), flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="cpstyle-bench-batch-") as tmp:
        folder = Path(tmp)
        for sub, names, n in (("contents", CONTENTS, case["contents"]),
                              ("styles", STYLES, case["styles"])):
            (folder / sub).mkdir()
            for name in names[:n]:
                shutil.copy(DATA / name, folder / sub / name)
        for engine in args.engines.split(","):
            r = measure(engine.strip(), case, args.workers, folder)
            results.append(r)
            print(f"batch {r['engine']} | {r['jobs']} jobs {r['size']} px {r['iterations']} it | "
                  f"{r['workers']} workers | wall {r['wall_s']:.1f} s | jobs {r['job_seconds']:.1f} s "
                  f"| {r['overhead']:.2f}x | rerun {r['rerun_s']:.1f} s", flush=True)
    ok = all(r["overhead"] <= OVERHEAD_TARGET and r["rerun_s"] < RERUN_TARGET_S for r in results)
    if not args.quick:
        print(f"targets (overhead <= {OVERHEAD_TARGET}x, rerun < {RERUN_TARGET_S:g} s): "
              f"{'met' if ok else 'NOT met'}")
    commit = _commit()
    out = Path(args.out) if args.out else RESULTS / f"batch-cpu-{commit}.json"
    doc = dict(device=_device(), commit=commit, quick=args.quick, case=case,
               targets=dict(overhead=OVERHEAD_TARGET, rerun_s=RERUN_TARGET_S),
               met=None if args.quick else ok, results=results,
               time=time.strftime("%Y-%m-%d %H:%M:%S"))
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
