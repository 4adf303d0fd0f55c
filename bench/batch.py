"""Batch overhead (issue 15's target): what scheduling, loading and writing add
to the jobs' own optimisation time, and how fast a rerun skips.

    python -m bench.batch [--quick] [--engines local,dask] [--workers N] [--out PATH]

Each engine runs, as a fresh `python -m cpstyle batch` subprocess (device cpu,
the CLI's default preset), every pair of 4 bundled photos x 3 bundled paintings:
12 jobs, content at 128 px, 30 iterations, into an empty folder; then the same
command again, which must skip all 12. Measured in the same run, from the log:

    overhead = batch wall time / (sum of the jobs' own style_transfer seconds / workers)

(workers: the distinct worker processes in the log). Then, per engine, the same
12 jobs in this process (cpstyle.batch.run_batch; Dask: a local cluster of worker
processes) while one busy worker is killed with SIGKILL after the first job is
done. Targets: overhead <= 1.15 with either engine; the rerun under 5 s; with a
worker killed, every job done exactly once and the log showing the lost attempt
and its retry. One line per case:

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


def kill_once_done(log, find_pid, deadline=120):
    """Once the log has a done record, SIGKILL the process find_pid() names (also
    tests/test_batch.py's worker-death tests) -> its pid, or None by the deadline."""
    import signal
    t0 = time.time()
    while time.time() - t0 < deadline:
        if log.exists() and '"done"' in log.read_text():
            pid = find_pid()
            if pid:
                os.kill(pid, signal.SIGKILL)
                return pid
        time.sleep(0.05)
    return None


def busy_dask_worker(client):
    """The pid of a Dask worker process that is running a task, or None."""
    running = client.run(lambda dask_worker: (os.getpid(), len(dask_worker.state.executing)))
    busy = [pid for pid, n in running.values() if n]
    return busy[0] if busy else None


def measure_kill(engine, case, workers, folder):
    """The batch run in this process (cpstyle.batch.run_batch) while one busy worker
    process is killed (SIGKILL) after the first job is done: every job must end
    done exactly once, and the log must show the lost attempt and its retry."""
    import multiprocessing
    import threading
    from cpstyle import batch
    out = folder / f"kill-{engine}"
    log = out / batch.LOG_NAME
    jobs = batch.pair_jobs(folder / "contents", folder / "styles")
    options = dict(content_size=case["size"], iterations=case["iterations"], seed=0)
    killed, kw = [], dict(options=options, workers=workers or 2, device="cpu", progress=False)
    cluster = client = None
    if engine == "local":
        before = {p.pid for p in multiprocessing.active_children()}

        def find():
            kids = [p.pid for p in multiprocessing.active_children() if p.pid not in before]
            return kids[0] if kids else None
    else:
        import distributed
        cluster = distributed.LocalCluster(n_workers=workers or 2, threads_per_worker=1,
                                           processes=True, dashboard_address=None)
        client = distributed.Client(cluster)
        kw.update(engine="dask", client=client)

        def find():
            return busy_dask_worker(client)
    t = threading.Thread(target=lambda: killed.append(kill_once_done(log, find)))
    t.start()
    t0 = time.perf_counter()
    try:
        summary = batch.run_batch(jobs, out, **kw)
    finally:
        t.join()
        if client is not None:
            client.close()
            cluster.close()
    wall = time.perf_counter() - t0
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    done = [r["output"] for r in recs if r["status"] == "done"]
    lost = [r for r in recs if r["status"] == "lost"]
    retried = [r for r in lost if any(x["output"] == r["output"] and x["attempt"] == r["attempt"] + 1
                                      and x["retry"] and x["status"] == "done" for x in recs)]
    files = sorted(p.name for p in out.iterdir())
    ok = (bool(killed and killed[0]) and sorted(done) == sorted(j.output for j in jobs)
          and bool(lost) and len(retried) == len(lost)
          and files == sorted([j.output for j in jobs] + [batch.LOG_NAME]))
    return dict(engine=engine, jobs=len(jobs), killed_pid=killed[0] if killed else None,
                done=len(done), lost=len(lost), retried=len(retried),
                every_job_done_once=ok, wall_s=wall, failed=summary.failed)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 x 2 jobs at 48 px, 3 iterations")
    ap.add_argument("--engines", default="local,dask")
    ap.add_argument("--workers", type=int, default=None, help="default: the batch's own")
    ap.add_argument("--out", default=None, help="the JSON (default bench/results/...)")
    args = ap.parse_args(argv)
    case = QUICK if args.quick else FULL
    print(_device(), flush=True)
    results, kills = [], []
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
            k = measure_kill(engine.strip(), case, args.workers, folder)
            kills.append(k)
            print(f"batch {k['engine']} | a worker killed (SIGKILL) mid-batch | {k['done']} of "
                  f"{k['jobs']} done, {k['lost']} lost and {k['retried']} re-run | every job "
                  f"done once: {k['every_job_done_once']} | wall {k['wall_s']:.1f} s", flush=True)
    ok = all(r["overhead"] <= OVERHEAD_TARGET and r["rerun_s"] < RERUN_TARGET_S for r in results) \
        and all(k["every_job_done_once"] for k in kills)
    if not args.quick:
        print(f"targets (overhead <= {OVERHEAD_TARGET}x, rerun < {RERUN_TARGET_S:g} s, a killed "
              f"worker's job re-run, every job done once): "
              f"{'met' if ok else 'NOT met'}")
    commit = _commit()
    out = Path(args.out) if args.out else RESULTS / f"batch-cpu-{commit}.json"
    doc = dict(device=_device(), commit=commit, quick=args.quick, case=case,
               targets=dict(overhead=OVERHEAD_TARGET, rerun_s=RERUN_TARGET_S),
               met=None if args.quick else ok, results=results, worker_killed=kills,
               time=time.strftime("%Y-%m-%d %H:%M:%S"))
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
