"""Merge a device check's pytest junit XML and benchmark JSON into one results
file <date>-<gpu>-<commit>.json and print the short table (bench/device_check.sh)."""
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


def gpu_name():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    except Exception:
        return "unknown-gpu"


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--tests", required=True)
    p.add_argument("--bench", required=True)
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
              "versions": versions(), "tests": test_counts(a.tests), "bench": bench}
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    path = os.path.join(a.out_dir, f"{result['date']}-{slug}-{commit[:8]}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    t = result["tests"]
    print(f"\n== device check | {name} | commit {commit[:8]} ==")
    print(f"gpu tests: {t['passed']} passed, {t['failed']} failed, {t.get('skipped', 0)} skipped")
    for n in t.get("failed_tests", []):
        print(f"  FAILED {n}")
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
    print(f"results: {path}")
    return 0 if t["failed"] == 0 and t["passed"] > 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
