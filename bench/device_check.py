"""Merge a device check's pytest junit XMLs (the default convolutions, and
CPSTYLE_CONV=igemm), the conv tuner's totals, the benchmark JSON and issue 12's
capture measurement (bench/capture.py) into one
results file <date>-<gpu>-<commit>.json, and print the short table
(bench/device_check.sh)."""
import argparse
import datetime
import json
import os
import platform
import re
import xml.etree.ElementTree as ET


def test_counts(path):
    if not os.path.exists(path):
        return {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, "note": "no junit file"}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    c = dict(tests=0, failures=0, errors=0, skipped=0)
    failed_names = []
    for s in suites:
        for k in c:
            c[k] += int(s.get(k, 0))
        for case in s.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed_names.append(f"{case.get('classname')}::{case.get('name')}")
    passed = c["tests"] - c["failures"] - c["errors"] - c["skipped"]
    return {"passed": passed, "failed": c["failures"] + c["errors"], "skipped": c["skipped"],
            "failed_tests": failed_names}


def versions():
    v = {"python": platform.python_version()}
    for mod in ("numpy", "cupy", "torch", "h5py"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:
            v[mod] = None
    try:
        import cupy
        v["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        v["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
    except Exception:
        pass
    return v


def tune_summary(path):
    """The tuner's JSON (bench/tune_conv.py) in brief: totals per size and
    precision, failed and skipped shapes, compiles, seconds."""
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        t = json.load(f)
    shapes = t.get("shapes", [])
    return {"file": os.path.basename(path), "totals": t.get("totals", []),
            "tuned": sum(1 for r in shapes if r.get("status") == "tuned"),
            "failed": [r["key"] for r in shapes if r.get("status") == "failed"],
            "skipped": t.get("skipped", []), "aborted": t.get("aborted"),
            "im2col_faster": [r["key"] for r in shapes if r.get("im2col_faster")],
            "compiles": t.get("compiles"), "elapsed_s": t.get("elapsed_s")}


def gpu_name():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    except Exception:
        return "unknown-gpu"


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--tests", required=True)
    p.add_argument("--tests-igemm", help="junit XML of the gpu tests with CPSTYLE_CONV=igemm")
    p.add_argument("--tune", help="bench/tune_conv.py's JSON")
    p.add_argument("--bench", required=True)
    p.add_argument("--capture", help="bench/capture.py's JSON (issue 12)")
    p.add_argument("--out-dir", required=True)
    a = p.parse_args(argv)
    commit = os.environ.get("CPSTYLE_COMMIT", "unknown")
    name = gpu_name()
    bench = None
    if os.path.exists(a.bench):
        with open(a.bench) as f:
            bench = json.load(f)
        bench["commit"] = commit
    result = {"device": name, "commit": commit, "date": datetime.date.today().isoformat(),
              "versions": versions(), "tests": test_counts(a.tests),
              "tests_igemm": test_counts(a.tests_igemm) if a.tests_igemm else None,
              "tune": tune_summary(a.tune), "bench": bench, "capture": None}
    if a.capture and os.path.exists(a.capture):
        with open(a.capture) as f:
            result["capture"] = json.load(f)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    path = os.path.join(a.out_dir, f"{result['date']}-{slug}-{commit[:8]}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\n== device check | {name} | commit {commit[:8]} ==")
    ok = True
    for label, t in (("gpu tests", result["tests"]), ("gpu tests, igemm", result["tests_igemm"])):
        if t is None:
            continue
        print(f"{label}: {t['passed']} passed, {t['failed']} failed, {t.get('skipped', 0)} skipped"
              f"{' (' + t['note'] + ')' if t.get('note') else ''}")
        for n in t.get("failed_tests", []):
            print(f"  FAILED {n}")
        ok = ok and t["failed"] == 0 and t["passed"] > 0
    tune = result["tune"]
    if tune:
        print(f"tune_conv: {tune['tuned']} shapes tuned, {len(tune['failed'])} failed, "
              f"{len(tune['skipped'])} skipped, im2col faster on {len(tune['im2col_faster'])}"
              f"{', ABORTED: ' + tune['aborted'] if tune['aborted'] else ''}")
        for tot in tune["totals"]:
            try:
                from bench.tune_conv import format_total
                print(format_total(tot))
            except Exception as e:  # the tuner does not import: the numbers as they are
                print(f"{json.dumps(tot)} ({type(e).__name__})")
        for k in tune["failed"]:
            print(f"  FAILED {k}")
    else:
        print("tune_conv: no results")
    if bench:
        from bench.run import fmt_line
        for r in bench.get("cases", []):
            try:
                print(fmt_line("gpu", r))
            except Exception as e:  # a partial record still gets its name printed
                print(f"{r.get('name')}: {type(e).__name__} {e}")
        for tg in bench.get("summary", {}).get("targets", []):
            value = "-" if tg["value"] is None else f"{tg['value']:.3f}"
            print(f"target {tg['what']} <= {tg['limit']}: {value} {'met' if tg['met'] else 'NOT met'}")
        print(f"targets_met: {bench.get('targets_met')}")
    else:
        print("bench: no results")
    cap = result["capture"]
    if cap:
        for r in cap.get("engine", []):
            host = r["host_us_per_replay"]
            print(f"capture {r['case']} {r['precision']}: captured {r['captured_ms']:.3f}, uncaptured "
                  f"{r['uncaptured_ms']:.3f} ({r['unit']}), host "
                  f"{'-' if host is None else f'{host:.1f}'} us/replay (target <= 50), "
                  f"bitwise {'ok' if r['bitwise'] else 'DIFFERS'}")
        print(f"capture checks: {'passed' if cap.get('ok') else 'FAILED'}")
        ok = ok and bool(cap.get("ok"))
    elif a.capture:
        print("bench.capture: no results")
    print(f"results: {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
