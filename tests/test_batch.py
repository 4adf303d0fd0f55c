"""Batches (cpstyle/batch.py): manifests and pairs, per-job options, resume / skip /
force, atomic writes, a bad job among good ones, the local engine with 2 workers,
the Dask engine (an in-process cluster; two worker processes with a fake GPU
resource each), and a worker killed mid-job on both engines.

Jobs are tiny (32x40 content, a few iterations) on the real weights (marker
`weights`; skipped without them), so a test costs a worker start (~1 s) and a
fraction of a second per job."""
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.batch import busy_dask_worker, kill_once_done
from cpstyle import batch, cli, images
from cpstyle.ops import parallel
from test_cli import _no_debug  # noqa: F401 (autouse: CLI errors as a user sees them)
from test_images import read_png16

FAST = {"iterations": 3, "style_size": 32}




@pytest.fixture
def folders(tmp_path, rng):
    """contents/ a.png b.png (40x32), styles/ x.jpg y.png (36x36)."""
    c, s = tmp_path / "contents", tmp_path / "styles"
    c.mkdir()
    s.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(c / name)
    for name in ("x.jpg", "y.png"):
        Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(s / name)
    return c, s


def records(log):
    return [json.loads(line) for line in Path(log).read_text().splitlines()]


def run_cli(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc, err, *words):
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("cpstyle: error: "), err
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    return lines[0]


def pair_dicts(folders, **options):
    c, s = folders
    return [dict(content=str(cc), style=str(ss), output=f"{cc.stem}_{ss.stem}.png", **options)
            for cc in sorted(c.iterdir()) for ss in sorted(s.iterdir())]


def files_in(folder):
    return sorted(p.name for p in Path(folder).iterdir())


# ---------------------------------------------------------------- jobs (no model)

def test_manifest_csv_relative_paths_and_overrides(tmp_path, folders):
    m = tmp_path / "jobs.csv"
    m.write_text("content,style,output,Style-Weight,iterations,init\n"
                 "contents/a.png,styles/x.jpg,out/a_x.jpg,2.5,,\n"
                 "\n"
                 "contents/b.png,styles/y.png,b.png,,7,content\n")
    jobs = batch.read_manifest(m)
    assert [j.content for j in jobs] == [tmp_path / "contents/a.png", tmp_path / "contents/b.png"]
    assert [j.style for j in jobs] == [tmp_path / "styles/x.jpg", tmp_path / "styles/y.png"]
    assert [j.output for j in jobs] == ["out/a_x.jpg", "b.png"]
    assert jobs[0].options == {"style_weight": "2.5"}  # empty cells: the batch's default
    assert jobs[1].options == {"iterations": "7", "init": "content"}
    assert jobs[1].where == "jobs.csv line 4"


def test_manifest_jsonl(tmp_path, folders):
    sub = tmp_path / "m"
    sub.mkdir()
    m = sub / "jobs.jsonl"
    m.write_text(json.dumps({"content": "../contents/a.png", "style": "../styles/x.jpg",
                             "output": "o.png", "multiscale": True, "seed": None}) + "\n\n"
                 + json.dumps({"content": "../contents/b.png", "style": "../styles/y.png",
                               "output": "p.png", "init": "start.png"}) + "\n")
    jobs = batch.read_manifest(m)
    assert jobs[0].content == sub / "../contents/a.png"
    assert jobs[0].options == {"multiscale": True}
    assert jobs[1].options == {"init": str(sub / "start.png")}  # a file: manifest-relative


def test_pairs_are_every_content_with_every_style(folders):
    jobs = batch.pair_jobs(*folders, ext="png")
    assert [j.output for j in jobs] == ["a_x.png", "a_y.png", "b_x.png", "b_y.png"]


def test_option_values_parse_as_run_parses_them():
    assert batch.option_value("iterations", "7") == 7
    assert batch.option_value("style_weight", 2) == 2.0
    assert batch.option_value("multiscale", "yes") is True
    assert batch.option_value("style_layers", [0, "conv2_1"]) == "0,conv2_1"
    for name, value, words in (("iterations", "-1", ">= 0"), ("optimizer", "sgd", "invalid choice"),
                               ("constant_weights", "maybe", "true or false")):
        with pytest.raises(ValueError, match="--" + name.replace("_", "-")) as e:
            batch.option_value(name, value)
        assert words in str(e.value)


@pytest.mark.parametrize("manifest, words", [
    ("content,style\na.png,x.png\n", ("no output column",)),
    ("content,style,output,colour\na.png,x.png,o.png,red\n", ("line 2", "unknown key 'colour'")),
    ("content,style,output,device\na.png,x.png,o.png,gpu\n", ("'device'", "command line")),
    ("content,style,output\na.png,x.png,o.png\nb.png,x.png,o.png\n", ("line 3", "also")),
    ("content,style,output\n", ("no jobs",)),
    ('{"content": "a.png", "style": "x.png", "output": "o.png"}\n{"content": \n',
     ("line 2", "not json")),
    ('{"content": "a.png", "output": "o.png"}\n', ("line 1", "no style")),
])
def test_bad_manifest_is_one_line_exit_2(capsys, tmp_path, manifest, words):
    m = tmp_path / ("jobs.jsonl" if manifest.startswith("{") else "jobs.csv")
    m.write_text(manifest)
    one_line_error(*run_cli(capsys, "batch", m, "--out-dir", tmp_path / "out")[::2], *words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, words", [
    ((), ("manifest",)),
    (("--contents", "."), ("go together",)),
    (("--contents", "nope", "--styles", "."), ("nope", "not a folder")),
    (("--contents", ".", "--styles", ".", "--scheduler", "tcp://x:1"), ("--engine dask",)),
    (("--contents", ".", "--styles", ".", "--iterations", "-2"), ("--iterations",)),
    (("--contents", ".", "--styles", ".", "--output-bits", "16"),  # --ext .jpg
     ("--output-bits 16", "JPEG", ".png, .tif, .tiff")),
])
def test_bad_command_line_is_one_line_exit_2(capsys, tmp_path, folders, argv, words):
    c, s = folders
    argv = [str(c) if a == "." and i == 1 else str(s) if a == "." else a
            for i, a in enumerate(argv)]
    one_line_error(*run_cli(capsys, "batch", *argv, "--out-dir", tmp_path / "o")[::2], *words)


def test_output_bits_in_the_job_id(folders):
    c, s = folders
    base = batch.base_options(FAST)
    ids = {bits: batch._resolve(batch.Job(c / "a.png", s / "x.jpg", "a_x.png",
                                          {"output_bits": bits}), base, "cpu").id
           for bits in ("8", "16")}
    assert None not in ids.values() and ids["8"] != ids["16"]
    assert "output_bits" not in batch.job_settings(base)  # 8: the ids made before it hold
    bad = batch._resolve(batch.Job(c / "a.png", s / "x.jpg", "a_x.jpg", {"output_bits": 16}),
                         base, "cpu")
    assert "--output-bits 16" in bad.error and "JPEG" in bad.error


def test_encode_image_16_bits_is_save_image_s(tmp_path, rng):
    a = rng.uniform(0, 255, (9, 17, 3)).astype(np.float32)
    for suffix in (".png", ".tif"):
        saved = images.save_image(a, tmp_path / f"x{suffix}", bits=16).read_bytes()
        assert batch.encode_image(a, suffix, bits=16) == saved


def test_missing_distributed_names_the_extra(capsys, tmp_path, folders, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "distributed", None)
    c, s = folders
    one_line_error(*run_cli(capsys, "batch", "--contents", c, "--styles", s, "--out-dir",
                            tmp_path / "o", "--engine", "dask")[::2], "cpstyle[dask]")


def test_threads_follow_cpstyle_threads(monkeypatch):
    monkeypatch.setenv("CPSTYLE_THREADS", "1")
    assert parallel.workers() == 1
    monkeypatch.delenv("CPSTYLE_THREADS")
    assert parallel.workers() == min(os.cpu_count() or 1, 8)


def test_target_memo_skips_the_forward_and_changes_nothing(rng):
    from cpstyle import VGG16
    from cpstyle.objective import StyleObjective
    from cpstyle.vgg16 import random_params
    chans = [(3, 4), (4, 4), (4, 6), (6, 6), (6, 8)]
    plain = VGG16(random_params(chans, rng), device="cpu")
    cached = batch.CachedVGG16.wrap(plain)
    content = rng.uniform(0, 255, (20, 18, 3)).astype(np.float32)
    style = rng.uniform(0, 255, (22, 22, 3)).astype(np.float32)
    kw = dict(content_layer_ids=[3], style_layer_ids=[0, 2, 4])
    ref = StyleObjective(content, style, model=plain, **kw)
    first = StyleObjective(content, style, model=cached, **kw)
    assert cached.hits == 0
    again = StyleObjective(content, style, model=cached, **kw)
    assert cached.hits == 2  # the content's forward and the style's
    for obj in (first, again):
        for i in (0, 2, 4):
            np.testing.assert_array_equal(obj.style_targets[i], ref.style_targets[i])
    avg = cached.with_pooling("avg")
    StyleObjective(content, style, model=avg, **kw)
    assert avg.memo is cached.memo and cached.hits == 2  # another pooling: computed
    x = content[None]
    cached.forward(x, [0], parallel.Workspace())  # the iterations' forwards: never memoised
    assert cached.hits == 2


# ---------------------------------------------------------------- runs (real weights)

@pytest.mark.weights
def test_local_two_workers_resume_skip_force(tmp_path, folders, weights_path, capsys):
    c, s = folders
    out = tmp_path / "out"
    argv = ["batch", "--contents", c, "--styles", s, "--out-dir", out, "--ext", "png",
            "--workers", "2", "--iterations", "3", "--style-size", "32", "-q"]
    rc, stdout, err = run_cli(capsys, *argv)
    assert rc == 0, err
    assert stdout.strip().splitlines()[-1].startswith("4 jobs: 4 done, 0 skipped, 0 failed")
    log = out / batch.LOG_NAME
    recs = records(log)
    assert sorted(r["output"] for r in recs) == ["a_x.png", "a_y.png", "b_x.png", "b_y.png"]
    assert {r["status"] for r in recs} == {"done"} and {r["attempt"] for r in recs} == {1}
    assert len({r["worker"] for r in recs}) == 2
    for r in recs:
        assert r["device"] == "cpu" and r["iterations"] == 3 and r["size"] == [32, 40]
        assert set(r["losses"]) == {"content", "style", "denoise"} and r["seconds"] > 0
    assert files_in(out) == sorted(["a_x.png", "a_y.png", "b_x.png", "b_y.png", log.name])
    # rerun: every job skipped, nothing run or logged
    rc, stdout, _ = run_cli(capsys, *argv)
    assert rc == 0 and "4 jobs: 0 done, 4 skipped, 0 failed" in stdout
    assert len(records(log)) == 4
    # an output gone: only that job again
    (out / "b_y.png").unlink()
    rc, stdout, _ = run_cli(capsys, *argv)
    assert "4 jobs: 1 done, 3 skipped" in stdout
    assert records(log)[-1]["output"] == "b_y.png"
    # another setting is another job (another id)
    rc, stdout, _ = run_cli(capsys, *argv[:-1], "--style-weight", "5", "-q")
    assert "4 jobs: 4 done, 0 skipped" in stdout
    assert len({r["id"] for r in records(log)}) == 8
    # --force redoes them, the files replaced whole
    inode = (out / "a_x.png").stat().st_ino
    rc, stdout, _ = run_cli(capsys, *argv, "--force")
    assert "4 jobs: 4 done, 0 skipped" in stdout
    assert (out / "a_x.png").stat().st_ino != inode  # replaced by rename, not rewritten
    assert files_in(out) == sorted(["a_x.png", "a_y.png", "b_x.png", "b_y.png", log.name])


@pytest.mark.weights
def test_bad_jobs_are_logged_and_the_batch_goes_on(tmp_path, folders, weights_path, capsys):
    c, s = folders
    (tmp_path / "fake.png").write_text("not a picture\n")
    m = tmp_path / "jobs.csv"
    m.write_text("content,style,output,style_weight,iterations\n"
                 "contents/a.png,styles/x.jpg,good1.png,,\n"
                 "fake.png,styles/x.jpg,unreadable.png,,\n"
                 "contents/b.png,styles/y.png,badopt.png,-1,\n"
                 "contents/b.png,styles/y.png,badsuffix.xyz,,\n"
                 "contents/a.png,missing.jpg,nostyle.png,,\n"
                 "contents/b.png,styles/y.png,good2.png,,2\n")
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capsys, "batch", m, "--out-dir", out, "--workers", "1",
                              "--iterations", "3", "--style-size", "32", "-q")
    assert rc == batch.EXIT_FAILED == 3
    assert stdout.strip().splitlines()[-1].startswith("6 jobs: 2 done, 0 skipped, 4 failed")
    recs = {r["output"]: r for r in records(out / batch.LOG_NAME)}
    assert recs["good1.png"]["status"] == recs["good2.png"]["status"] == "done"
    assert recs["good1.png"]["iterations"] == 3 and recs["good2.png"]["iterations"] == 2
    for name, words in (("unreadable.png", ("fake.png", "cannot read")),
                        ("badopt.png", ("--style-weight", ">= 0")),
                        ("badsuffix.xyz", ("unknown image suffix",)),
                        ("nostyle.png", ("style image", "not found"))):
        r = recs[name]
        assert r["status"] == "failed" and "\n" not in r["error"], r
        for w in words:
            assert w in r["error"], (w, r["error"])
    assert err.count("failed:") == 4  # each said once on stderr as it happens
    assert files_in(out) == sorted(["good1.png", "good2.png", batch.LOG_NAME])
    # a rerun retries the failed ones only
    rc, stdout, _ = run_cli(capsys, "batch", m, "--out-dir", out, "--iterations", "3",
                            "--style-size", "32", "-q")
    assert rc == 3 and "6 jobs: 0 done, 2 skipped, 4 failed" in stdout


@pytest.mark.weights
def test_16_bit_outputs(tmp_path, folders, weights_path):
    out = tmp_path / "out"
    s = batch.run_batch(pair_dicts(folders)[:1], out, options={**FAST, "output_bits": 16},
                        workers=1, progress=False)
    assert (s.done, s.failed) == (1, 0)
    got = read_png16(out / "a_x.png")
    assert got.shape == (32, 40, 3) and (got % 257).any()  # not 8-bit values widened


@pytest.mark.weights
def test_writes_are_atomic(tmp_path, folders, weights_path, monkeypatch):
    """A write that fails at the rename leaves no output and no temp file; the
    job is failed and the next run does it."""
    from cpstyle import atomic
    jobs = pair_dicts(folders)[:1]
    out = tmp_path / "out"

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    s = batch.run_batch(jobs, out, options=FAST, workers=1, progress=False)
    monkeypatch.undo()
    assert (s.done, s.failed) == (0, 1)
    assert "No space left" in s.records[-1]["error"]
    assert files_in(out) == [batch.LOG_NAME]
    s = batch.run_batch(jobs, out, options=FAST, workers=1, progress=False)
    assert (s.done, s.failed, s.skipped) == (1, 0, 0)
    assert files_in(out) == sorted([batch.LOG_NAME, "a_x.png"])


def test_dry_run_lists_and_writes_nothing(tmp_path, folders, capsys):
    c, s = folders
    out = tmp_path / "out"
    rc, stdout, _ = run_cli(capsys, "batch", "--contents", c, "--styles", s, "--out-dir", out,
                            "--dry-run", "--workers", "2", "--style-weight", "-1")
    assert rc == 2  # a bad default is a bad command line: nothing listed
    rc, stdout, _ = run_cli(capsys, "batch", "--contents", c, "--styles", s, "--out-dir", out,
                            "--dry-run", "--workers", "2")
    lines = stdout.strip().splitlines()
    assert rc == 0 and len(lines) == 5 and all(l.startswith("run ") for l in lines[:4])
    assert "4 jobs: 4 to run, 0 skipped (done), 0 bad; engine local, 2 workers" in lines[-1]
    assert not out.exists()


def _assert_every_job_done_once(summary, out, outputs):
    recs = records(out / batch.LOG_NAME)
    done = [r["output"] for r in recs if r["status"] == "done"]
    assert sorted(done) == sorted(outputs)  # each exactly once
    lost = [r for r in recs if r["status"] == "lost"]
    assert lost, "the log shows no lost attempt"
    for r in lost:  # each lost attempt is followed by the same job's next attempt, done
        after = [x for x in recs if x["output"] == r["output"] and x["attempt"] == r["attempt"] + 1]
        assert after and after[-1]["retry"] is True, (r, recs)
    assert files_in(out) == sorted(outputs + [batch.LOG_NAME])  # no temp files, no copies
    assert summary.done == len(outputs) and summary.failed == 0


@pytest.mark.weights
def test_local_worker_killed_mid_job(tmp_path, folders, weights_path):
    import multiprocessing
    jobs = pair_dicts(folders) + [dict(j, output="again_" + j["output"]) for j in pair_dicts(folders)]
    out = tmp_path / "out"
    log = out / batch.LOG_NAME
    before = {p.pid for p in multiprocessing.active_children()}
    killed = []

    def killer():
        def child():
            kids = [p.pid for p in multiprocessing.active_children() if p.pid not in before]
            return kids[0] if kids else None
        killed.append(kill_once_done(log, child))
    t = threading.Thread(target=killer)
    t.start()
    s = batch.run_batch(jobs, out, options=dict(FAST, iterations=20), workers=2, progress=False)
    t.join()
    assert killed and killed[0]
    _assert_every_job_done_once(s, out, [j["output"] for j in jobs])


@pytest.mark.weights
def test_dask_in_process_cluster(tmp_path, folders, weights_path):
    dd = pytest.importorskip("distributed")
    with dd.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                         dashboard_address=None) as cluster, dd.Client(cluster) as client:
        out = tmp_path / "out"
        s = batch.run_batch(pair_dicts(folders), out, options=FAST, engine="dask",
                            client=client, progress=False)
        assert (s.done, s.failed) == (4, 0)
        recs = records(out / batch.LOG_NAME)
        assert {r["engine"] for r in recs} == {"dask"} and {r["attempt"] for r in recs} == {1}
        # one worker, styles in order: the second job of a style takes its targets' forward
        assert sum(r["target_hits"] for r in recs) >= 2
        s = batch.run_batch(pair_dicts(folders), out, options=FAST, engine="dask",
                            client=client, progress=False)
        assert (s.done, s.skipped) == (0, 4)


@pytest.mark.weights
def test_dask_two_worker_processes_with_a_gpu_resource_each(tmp_path, folders, weights_path):
    dd = pytest.importorskip("distributed")
    with dd.LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                         resources={"GPU": 1}, dashboard_address=None) as cluster:
        out = tmp_path / "out"
        s = batch.run_batch(pair_dicts(folders), out, options=FAST, engine="dask",
                            scheduler=cluster.scheduler_address, resources={"GPU": 1},
                            progress=False)
    assert (s.done, s.failed) == (4, 0) and s.workers == 2
    recs = records(out / batch.LOG_NAME)
    by_worker = {}
    for r in recs:
        by_worker.setdefault(r["worker"], []).append((r["started"], r["finished"]))
    assert len(by_worker) == 2  # both workers took jobs
    for spans in by_worker.values():  # two threads each, one GPU each: one job at a time
        spans.sort()
        assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:])), spans
    with pytest.raises(ValueError, match="GPU=1"):  # a cluster without the resource
        with dd.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                             dashboard_address=None) as c2:
            batch.run_batch(pair_dicts(folders), tmp_path / "o2", options=FAST, engine="dask",
                            scheduler=c2.scheduler_address, resources={"GPU": 1},
                            progress=False)


@pytest.mark.weights
def test_dask_worker_killed_mid_job(tmp_path, folders, weights_path):
    dd = pytest.importorskip("distributed")
    jobs = pair_dicts(folders) + [dict(j, output="again_" + j["output"]) for j in pair_dicts(folders)]
    out = tmp_path / "out"
    log = out / batch.LOG_NAME
    with dd.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                         dashboard_address=None) as cluster, dd.Client(cluster) as client:
        killed = []

        t = threading.Thread(target=lambda: killed.append(
            kill_once_done(log, lambda: busy_dask_worker(client))))
        t.start()
        s = batch.run_batch(jobs, out, options=dict(FAST, iterations=20), engine="dask",
                            client=client, progress=False)
        t.join()
    assert killed and killed[0]
    _assert_every_job_done_once(s, out, [j["output"] for j in jobs])
    lost = [r for r in records(log) if r["status"] == "lost"]
    assert all("Dask re-ran it" in r["error"] for r in lost)
