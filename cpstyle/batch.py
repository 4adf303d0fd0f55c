"""Batches (issue 15, DESIGN.md §11): many independent style transfers, resumable,
on a process pool or a Dask cluster, with the engine of `cpstyle run`.

    cpstyle batch MANIFEST --out-dir DIR [run options]
    cpstyle batch --contents DIR --styles DIR --out-dir DIR [run options]
    cpstyle.batch.run_batch(jobs, out_dir, options={...}, engine="local")

A job is (content, style, output, run-option overrides). The run options given
to the batch are every job's defaults; a job's own keys win. A job's life:

  client  settings resolved as `run` resolves them (cli.run_settings: preset,
          --style-strength, the option checks), then
            id = sha256(cpstyle version, sha256 of the content, style and --init
                        files' bytes, the resolved settings)
          skipped when its output exists and the log has (id, output) done;
          else its images read and checked (cli.run_inputs) and, on the CPU, the
          memory preflight with 1/workers of the memory free at the start
  worker  style_transfer on the worker's model (weights loaded once per worker;
          targets' forwards memoised, see CachedVGG16), the result encoded as
          the output's format -> bytes, final losses, seconds, device
  client  the bytes written atomically (cpstyle/atomic.py), one record appended
          to the log (default OUT-DIR/cpstyle-batch.jsonl), one line per attempt:

  {"time", "id", "content", "style", "output" (relative to the out dir),
   "status": done | failed | lost (its worker died; re-run) | interrupted (Ctrl-C),
   "error" (one line or null), "attempt" (1, 2, ...), "retry" (attempt > 1),
   "seconds" (the job's own style_transfer time), "wall" (submit to written),
   "device", "worker", "engine", "losses" {content, style, denoise} at the result,
   "iterations", "size" [h, w], "target_hits" (forwards taken from the memo),
   "started", "finished" (the worker's clock, epoch seconds), "version"}

Engines. local: concurrent.futures.ProcessPoolExecutor (spawned), one worker
per GPU (CUDA_VISIBLE_DEVICES handed out by the pool's initializer) or, on the
CPU, `workers` processes of cores // workers threads each (CPSTYLE_THREADS,
OPENBLAS/OMP_NUM_THREADS), never more jobs in flight than workers; a worker that
dies breaks the pool: its jobs in flight are logged `lost`, the pool is made
again and they are re-submitted (at most MAX_ATTEMPTS attempts). dask (extra
cpstyle[dask]): `distributed`, a local cluster of such workers (Nanny processes,
one thread each, resource GPU=1 per GPU worker) or the user's (scheduler
address or file); each attempt's start is an event on topic EVENT_TOPIC, so a
job that Dask re-ran after its worker died is logged `lost` then `done`.
Workers return encoded bytes and only the client writes: no shared file system.

Exit status of `cpstyle batch`: 0 every job done or skipped, 3 some failed
(the last line says how many), 2 a bad command line or manifest (nothing run),
130 Ctrl-C (the jobs in flight are lost; rerunning finishes the rest).
Tests: tests/test_batch.py; benchmark: bench/batch.py."""
import argparse
import collections
import copy
import csv
import dataclasses
import datetime
import hashlib
import io
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from . import __version__, cli
from .atomic import write_atomic
from .driver import INITS, style_transfer
from .images import SAVE_FORMATS, check_bits, write_image
from .vgg16 import VGG16

LOG_NAME = "cpstyle-batch.jsonl"
MAX_ATTEMPTS = 3           # a job whose worker died this often is failed (Dask's allowed-failures)
EVENT_TOPIC = "cpstyle-batch-start"
TARGET_CACHE_BYTES = 512 << 20  # a worker's memo of target forwards (CachedVGG16)
IMAGE_SUFFIXES = tuple(SAVE_FORMATS) + (".bmp",)
QUALITY = 95               # JPEG/WebP quality, as save_image's
EXIT_FAILED = 3
BATCH_ONLY = ("device",)   # run options that are the batch's, not a job's
PATH_KEYS = ("content", "style", "output")


# ---------------------------------------------------------------- run options

def _run_actions():
    """{dest: argparse action} of `run`'s options (cli._run_options), less the
    batch-level ones: what a manifest row may override."""
    p = argparse.ArgumentParser(add_help=False)
    cli._run_options(p, outputs=False)
    return {a.dest: a for a in p._actions if a.dest not in BATCH_ONLY}


RUN_ACTIONS = _run_actions()
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def option_value(name, value):
    """A job's (or the API's) value of run option `name` as `run` parses it from
    its command line; ValueError naming the option otherwise."""
    action = RUN_ACTIONS[name]
    flag = action.option_strings[0]
    if isinstance(action, argparse.BooleanOptionalAction) or action.nargs == 0:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError(f"{flag}: expected true or false, got {value!r}")
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    text = str(value)
    if action.type is not None:
        try:
            parsed = action.type(text)
        except argparse.ArgumentTypeError as e:
            raise ValueError(f"{flag}: {e}") from None
    else:
        parsed = text
    if action.choices is not None and parsed not in action.choices:
        raise ValueError(f"{flag}: invalid choice {text!r} (choose from "
                         f"{', '.join(map(str, action.choices))})")
    return parsed


def option_name(key):
    """A manifest key: 'style-weight', 'Style_Weight' -> 'style_weight'."""
    return str(key).strip().lower().replace("-", "_")


def base_options(options=None):
    """The batch's defaults: `run`'s own defaults, then `options` (a dict of run
    options by long name, or the namespace `cpstyle batch` parsed)."""
    ns = argparse.Namespace(**{d: a.default for d, a in RUN_ACTIONS.items()})
    if isinstance(options, argparse.Namespace):
        for d in RUN_ACTIONS:
            if hasattr(options, d):
                setattr(ns, d, getattr(options, d))
        return ns
    for key, value in (options or {}).items():
        name = option_name(key)
        if name not in RUN_ACTIONS:
            raise ValueError(f"unknown run option {key!r}")
        setattr(ns, name, None if value is None else option_value(name, value))
    return ns


# ---------------------------------------------------------------- jobs

@dataclasses.dataclass
class Job:
    content: Path
    style: Path
    output: str                      # relative to the out dir
    options: dict = dataclasses.field(default_factory=dict)  # option name -> raw value
    where: str = ""                  # e.g. "jobs.csv line 3", for messages


def _job_from_row(row, folder, where):
    keys = {}
    for key, value in row.items():
        if key is None:
            raise ValueError(f"{where}: more cells than the header has columns")
        name = option_name(key)
        if name in keys:
            raise ValueError(f"{where}: key {key!r} given twice")
        keys[name] = value
    missing = [k for k in PATH_KEYS if keys.get(k) in (None, "")]
    if missing:
        raise ValueError(f"{where}: no {', '.join(missing)} (every job needs content, "
                         f"style and output)")
    options = {}
    for name, value in keys.items():
        if name in PATH_KEYS:
            continue
        if name not in RUN_ACTIONS:
            why = " (a batch setting: give it on the command line)" if name in BATCH_ONLY else ""
            raise ValueError(f"{where}: unknown key {name!r}{why}; keys are content, style, "
                             f"output and run options by long name (style_weight, ...)")
        if value is None or value == "":
            continue  # an empty cell: the batch's default
        if name == "init" and str(value) not in INITS:
            value = str(folder / Path(str(value)).expanduser())
        options[name] = value
    return Job(folder / Path(str(keys["content"])).expanduser(),
               folder / Path(str(keys["style"])).expanduser(), str(keys["output"]), options,
               where)


def read_manifest(path):
    """CSV with a header row, or JSON Lines (by the suffix .csv / .jsonl / .ndjson,
    else by the first character) -> [Job]; paths relative to the manifest's folder.
    ValueError (naming the line) for a manifest that cannot be read as one."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"manifest {path} is a folder; give a .csv or .jsonl file "
                                f"(or --contents DIR --styles DIR)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"manifest not found: {path}") from None
    except UnicodeDecodeError:
        raise ValueError(f"manifest {path}: not a text file (CSV or JSON Lines)") from None
    folder = path.parent
    suffix = path.suffix.lower()
    as_json = suffix in (".jsonl", ".ndjson") or (suffix != ".csv" and
                                                    text.lstrip().startswith("{"))
    jobs = []
    if as_json:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path.name} line {n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object {{\"content\": ...}}")
            jobs.append(_job_from_row(row, folder, where))
    else:
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames:
            raise ValueError(f"manifest {path} is empty")
        names = [option_name(f) for f in reader.fieldnames]
        missing = [k for k in PATH_KEYS if k not in names]
        if missing:
            raise ValueError(f"manifest {path}: the header row has no {', '.join(missing)} "
                             f"column (got {', '.join(reader.fieldnames)})")
        for row in reader:
            if not any((v or "").strip() for k, v in row.items() if k is not None):
                continue
            jobs.append(_job_from_row(row, folder, f"{path.name} line {reader.line_num}"))
    if not jobs:
        raise ValueError(f"manifest {path} lists no jobs")
    return jobs


def image_files(folder, option):
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise NotADirectoryError(f"{option} {folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{option} {folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def pair_jobs(contents, styles, ext=".jpg"):
    """Every content image with every style image (sorted by name), outputs
    CONTENTSTEM_STYLESTEM.ext."""
    ext = ext if ext.startswith(".") else "." + ext
    if ext.lower() not in SAVE_FORMATS:
        raise ValueError(f"--ext {ext}: use one of {', '.join(SAVE_FORMATS)}")
    return [Job(c, s, f"{c.stem}_{s.stem}{ext}", where=f"{c.name} x {s.name}")
            for c in image_files(contents, "--contents") for s in image_files(styles, "--styles")]


def _as_job(j, n):
    if isinstance(j, Job):
        return j
    if isinstance(j, dict):
        return _job_from_row(j, Path("."), f"job {n}")
    raise TypeError(f"job {n}: expected a cpstyle.batch.Job or a dict, got {type(j).__name__}")


def check_jobs(jobs, out_dir):
    """Batch-level problems (ValueError): two jobs writing one file, a job
    writing over its input."""
    seen = {}
    for job in jobs:
        out = (out_dir / job.output).resolve()
        if out in seen:
            raise ValueError(f"{job.where}: output {job.output} is also {seen[out].where}'s; "
                             f"every job needs its own output")
        seen[out] = job
        for src in (job.content, job.style):
            if out == Path(src).resolve():
                raise ValueError(f"{job.where}: output {job.output} is its input {src}")


# ---------------------------------------------------------------- ids and the log

_digests = {}


def file_digest(path):
    """sha256 of a file's bytes (memoised per path, size and mtime)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _digests[key] = h.hexdigest()
    return _digests[key]


def job_settings(args):
    """The resolved run options (after cli.run_settings) that make the picture."""
    out = {}
    for d in RUN_ACTIONS:
        v = getattr(args, d, None)
        out[d] = list(v) if isinstance(v, tuple) else v
    out.pop("quiet", None)
    out.pop("memory_plan", None)  # how the memory is spent, not the picture
    if out.get("output_bits") == 8:  # the default: ids made before the option stay valid
        del out["output_bits"]
    return out


def job_id(job, args):
    """sha256 over the version, the input files' content and the settings (the
    --init file by its content too), 16 hex digits."""
    settings = job_settings(args)
    init = settings.get("init")
    if init not in (None, *INITS):
        settings["init"] = "sha256:" + _input_digest(init, "initial image")
    doc = dict(version=__version__, content=_input_digest(job.content, "content image"),
               style=_input_digest(job.style, "style image"), settings=settings)
    text = json.dumps(doc, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _input_digest(path, what):
    try:
        return file_digest(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"{what} {path}: is a folder") from None
    except OSError as e:
        raise OSError(f"{what} {path}: {e.strerror or e}") from None


def read_log(path):
    """{(id, output)} of the jobs the log has as done; unreadable lines (a line
    cut by a crash) are ignored."""
    done = set()
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(r, dict) and r.get("status") == "done":
                    done.add((r.get("id"), r.get("output")))
    except FileNotFoundError:
        pass
    return done


class Log:
    """Append-only JSON Lines; one write per record, flushed and fsynced."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "a+b")
        self.f.seek(0, os.SEEK_END)
        if self.f.tell() > 0:  # a line cut by a crash: start on a new one
            self.f.seek(-1, os.SEEK_END)
            if self.f.read(1) != b"\n":
                self.f.write(b"\n")
        self.lock = threading.Lock()

    def write(self, record):
        line = json.dumps(record, default=str, separators=(", ", ": ")) + "\n"
        with self.lock:
            self.f.write(line.encode())
            self.f.flush()
            os.fsync(self.f.fileno())

    def close(self):
        self.f.close()


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------- the worker

class CachedVGG16(VGG16):
    """VGG-16 whose forwards without a workspace (StyleObjective's targets: the
    content's taps and each style's, before its Gram) are memoised by the input's
    pixels, the taps asked for, pooling, precision path, dtype and device: a
    style used again at the same size and layers costs no forward. The Gram (7-14%
    of a forward) is still made per job. Least recently used entries go beyond
    `limit` bytes; with_pooling/with_igemm copies share the memo."""

    @classmethod
    def wrap(cls, model, limit=TARGET_CACHE_BYTES):
        m = copy.copy(model)
        m.__class__ = cls
        m.memo, m.memo_limit, m.memo_lock = collections.OrderedDict(), limit, threading.Lock()
        m.hits = 0
        return m

    def forward(self, x, tap_ids, workspace=None):
        if workspace is not None:
            return super().forward(x, tap_ids, workspace)
        from .backend import to_host
        pixels = to_host(x)
        key = (hashlib.sha256(pixels.tobytes()).hexdigest(), pixels.shape,
               tuple(sorted(set(tap_ids))), self.pooling, self.igemm_precision,
               self.dtype.str, self.device)
        with self.memo_lock:
            hit = self.memo.get(key)
            if hit is not None:
                self.memo.move_to_end(key)
                self.hits += 1
                return dict(hit), []  # the callers without a workspace drop the cache
        taps, caches = super().forward(x, tap_ids)
        size = sum(int(t.nbytes) for t in taps.values())
        if size <= self.memo_limit:
            with self.memo_lock:
                self.memo[key] = dict(taps)
                while sum(int(t.nbytes) for e in self.memo.values() for t in e.values()) \
                        > self.memo_limit:
                    self.memo.popitem(last=False)
        return taps, caches


_worker = {}
_worker_lock = threading.Lock()


def _init_local_worker(env, gpu_ids):
    """ProcessPoolExecutor initializer: the thread settings, a GPU of its own,
    and Ctrl-C left to the client (which ends the pool)."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(env)
    if gpu_ids is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_ids.get())


def _worker_model(device):
    with _worker_lock:
        if _worker.get("device") != device:
            _worker["model"] = CachedVGG16.wrap(VGG16.load(device=device))
            _worker["device"] = device
        return _worker["model"]


def _device_name(device):
    if device != "gpu":
        return "cpu"
    return f"gpu {os.environ.get('CUDA_VISIBLE_DEVICES', '0')}"


def run_job(payload):
    """One job on a worker -> a result dict (never raises for a job's own problem:
    status failed and the one-line error)."""
    started = time.time()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    if payload.get("engine") == "dask":
        try:
            from distributed import get_worker
            w = get_worker()
            worker = w.address
            w.log_event(EVENT_TOPIC, {"key": payload["key"], "worker": worker, "time": started})
        except (ImportError, ValueError):
            pass
    result = dict(worker=worker, device=_device_name(payload["device"]), status="failed",
                  error=None, seconds=None, losses=None, data=None, target_hits=0,
                  version=__version__)
    last = {}
    try:
        model = _worker_model(payload["device"])
        hits = model.hits
        t0 = time.perf_counter()
        mixed = style_transfer(payload["content"], payload["style"],
                               num_iterations=payload["iterations"], device=payload["device"],
                               model=model, check_memory=False,
                               callback=lambda p: last.update(p.losses),
                               callback_every=max(1, payload["iterations"]),
                               **payload["options"])
        result["seconds"] = time.perf_counter() - t0
        result["target_hits"] = model.hits - hits
        result["data"] = encode_image(mixed, payload["suffix"], bits=payload["bits"])
        result.update(status="done", losses=dict(last) or None, started=started,
                      finished=time.time())
    except (ValueError, OSError, MemoryError) as e:
        result["error"] = cli._message(e)
    except Exception as e:  # a bug: the batch goes on, the log says what
        result["error"] = f"internal error: {type(e).__name__}: {cli._message(e)}"
    return result


def encode_image(image, suffix, quality=QUALITY, bits=8):
    """(H, W, 3) 0..255 -> the file's bytes in the format of `suffix` with `bits`
    per channel (save_image's)."""
    buf = io.BytesIO()
    write_image(buf, image, SAVE_FORMATS[suffix.lower()], quality, bits)
    return buf.getvalue()


# ---------------------------------------------------------------- engines

class Lost(Exception):
    """The job's worker died (the local pool broke); it may be re-run."""


def cpu_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def gpu_count():
    from .backend import _cupy
    cp = _cupy()
    try:
        return int(cp.cuda.runtime.getDeviceCount()) if cp is not None else 0
    except Exception:
        return 0


def thread_env(threads):
    n = str(threads)
    return {"CPSTYLE_THREADS": n, "OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n,
            "MKL_NUM_THREADS": n}


class LocalEngine:
    name = "local"

    def __init__(self, workers, device, threads):
        self.workers, self.device, self.threads = workers, device, threads
        self.capacity = workers
        self.pool = None
        self._start()

    def _start(self):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        ctx = mp.get_context("spawn")
        gpu_ids = None
        if self.device == "gpu":
            gpu_ids = ctx.Queue()
            for i in range(self.workers):
                gpu_ids.put(i)
        # the environment a spawned worker starts with: OpenBLAS reads its thread
        # count when NumPy loads, before the initializer runs
        env = thread_env(self.threads)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            self.pool = ProcessPoolExecutor(self.workers, mp_context=ctx,
                                            initializer=_init_local_worker,
                                            initargs=(env, gpu_ids))
            for _ in range(self.workers):  # start them all now, under this environment
                self.pool.submit(os.getpid)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def submit(self, payload):
        return self.pool.submit(run_job, payload)

    def wait(self, futures):
        from concurrent.futures import FIRST_COMPLETED, wait
        done = wait(futures, return_when=FIRST_COMPLETED)[0]
        # results first: one that came in as the pool broke is kept, not re-run
        return sorted(done, key=lambda f: f.exception() is not None)

    def result(self, future):
        from concurrent.futures.process import BrokenProcessPool
        try:
            return future.result()
        except BrokenProcessPool:
            raise Lost("its worker process died (the pool broke)") from None

    def restart(self):
        self.close(cancel=True)
        self._start()

    def close(self, cancel=False, futures=()):
        if self.pool is None:
            return
        if cancel:  # Ctrl-C or a broken pool: end the workers now, not after their jobs
            for p in list((getattr(self.pool, "_processes", None) or {}).values()):
                if p.is_alive():
                    p.terminate()
        self.pool.shutdown(wait=True, cancel_futures=cancel)
        self.pool = None

    def describe(self):
        per = "a GPU each" if self.device == "gpu" else f"{self.threads} thread" + \
            ("s" if self.threads > 1 else "") + " each"
        return f"local, {self.workers} worker{'s' if self.workers > 1 else ''} ({per})"


class MissingExtra(ValueError):
    """An optional dependency is not installed (a one-line user error, exit 2)."""


def import_distributed():
    try:
        import distributed
    except ImportError:
        raise MissingExtra("--engine dask needs the `distributed` package: pip install "
                          "'cpstyle[dask]'") from None
    return distributed


class DaskEngine:
    name = "dask"

    def __init__(self, workers, device, threads, scheduler=None, scheduler_file=None,
                 client=None, resources=None):
        distributed = import_distributed()
        self.device = device
        self.cluster = None
        self.own_client = client is None
        if client is not None:
            self.client = client
        elif scheduler is not None or scheduler_file is not None:
            try:
                self.client = distributed.Client(scheduler, scheduler_file=scheduler_file,
                                                 timeout="20s")
            except (OSError, TimeoutError) as e:
                where = scheduler or f"--scheduler-file {scheduler_file}"
                raise OSError(f"cannot reach the Dask scheduler at {where}: "
                              f"{cli._message(e)}") from None
        else:
            self.cluster = local_cluster(workers, device, threads)
            self.client = distributed.Client(self.cluster)
        if resources is None and device == "gpu":
            resources = {"GPU": 1}
        self.resources = resources
        try:
            self._connect(workers)
        except BaseException:
            self.close()
            raise

    def _connect(self, workers):
        self.starts = collections.defaultdict(list)
        self.lock = threading.Lock()
        self.client.subscribe_topic(EVENT_TOPIC, self._started)
        if self.cluster is not None:
            self.client.wait_for_workers(workers)
        self._slots_at = (0.0, 0)
        info = self.client.scheduler_info()["workers"]
        if info and self.resources and not self.slots():
            need = ",".join(f"{k}={v}" for k, v in self.resources.items())
            raise ValueError(f"no Dask worker offers the resource {need} that each job "
                             f"asks for; start the workers with --resources {need}")
        self.workers = self.slots()

    def slots(self):
        """Jobs the cluster runs at once (its threads, or what its workers'
        resources admit); asked of the scheduler at most every 2 s."""
        t, n = self._slots_at
        if time.monotonic() - t < 2.0:
            return n
        info = self.client.scheduler_info()["workers"].values()
        if self.resources:
            n = sum(min(int(w.get("resources", {}).get(k, 0) // v)
                        for k, v in self.resources.items()) for w in info)
        else:
            n = sum(w.get("nthreads", 1) for w in info)
        self._slots_at = (time.monotonic(), n)
        return n

    @property
    def capacity(self):
        return self.slots() + 1  # one queued: no idle gap while the client writes

    def _started(self, event):
        _, msg = event
        with self.lock:
            self.starts[msg["key"]].append(msg)

    def submit(self, payload):
        payload = dict(payload, engine="dask")
        return self.client.submit(run_job, payload, key=payload["key"], pure=False,
                                  resources=self.resources)

    def wait(self, futures):
        from distributed import wait
        return wait(futures, return_when="FIRST_COMPLETED").done

    def result(self, future):
        from distributed import KilledWorker
        try:
            res = future.result()
        except KilledWorker as e:
            res = dict(status="failed", error=f"its worker died on every attempt "
                       f"({cli._message(e)})", worker=None, device=None, data=None)
        with self.lock:
            starts = self.starts.pop(future.key, [])
        # Dask re-ran the job after its worker died: the earlier starts were lost
        res["lost"] = starts[:-1] if res.get("worker") else starts
        return res

    def restart(self):
        pass

    def close(self, cancel=False, futures=()):
        try:
            if cancel and futures:
                self.client.cancel(list(futures))
            self.client.unsubscribe_topic(EVENT_TOPIC)
        except Exception:
            pass
        if self.own_client:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def describe(self):
        where = "local cluster" if self.cluster is not None else \
            f"cluster {self.client.scheduler_info().get('address')}"
        return f"dask ({where}), {self.workers} worker slot{'s' if self.workers != 1 else ''}"


def local_cluster(workers, device, threads):
    """A Dask cluster on this machine: Nanny worker processes of one thread each,
    one per GPU (CUDA_VISIBLE_DEVICES, resource GPU=1) or `workers` on the CPU
    with `threads` threads each."""
    from distributed import Nanny, Scheduler, SpecCluster
    specs = {}
    for i in range(workers):
        env = thread_env(threads)
        options = {"nthreads": 1, "env": env, "silence_logs": 40}
        if device == "gpu":
            env["CUDA_VISIBLE_DEVICES"] = str(i)
            options["resources"] = {"GPU": 1}
        specs[f"cpstyle-{i}"] = {"cls": Nanny, "options": options}
    return SpecCluster(workers=specs, scheduler={"cls": Scheduler, "options":
                       {"dashboard_address": None}}, silence_logs=40)


# ---------------------------------------------------------------- the client

@dataclasses.dataclass
class Summary:
    jobs: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    lost: int = 0             # attempts lost to a dead worker (their jobs re-run)
    seconds: float = 0.0      # the batch's wall time
    job_seconds: float = 0.0  # the sum of the done jobs' own style_transfer times
    workers: int = 0
    engine: str = ""
    log: str = ""
    records: list = dataclasses.field(default_factory=list)

    def line(self):
        return (f"{self.jobs} job{'s' if self.jobs != 1 else ''}: {self.done} done, "
                f"{self.skipped} skipped, {self.failed} failed in {self.seconds:.1f} s; "
                f"log {self.log}")


class _Bar:
    def __init__(self, total, enabled):
        self.bar = None
        self.t0 = time.perf_counter()
        if enabled and total:
            from tqdm import tqdm
            self.bar = tqdm(total=total, file=sys.stderr, unit="job", dynamic_ncols=True,
                            desc="batch")

    def update(self, s, n=1):
        if self.bar is None:
            return
        rate = (s.done + s.failed) / max(1e-9, time.perf_counter() - self.t0) * 60
        self.bar.set_postfix_str(f"done {s.done} failed {s.failed} skipped {s.skipped}  "
                                 f"{rate:.1f} jobs/min", refresh=False)
        self.bar.update(n)

    def say(self, text):
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


@dataclasses.dataclass
class _Task:
    job: Job
    args: argparse.Namespace = None
    settings: tuple = None
    id: str = None
    error: str = None
    attempt: int = 1
    payload: dict = None
    submitted: float = 0.0
    size: list = None         # [h, w] of the content as run
    iterations: int = None    # over all scales


def _resolve(job, base, device):
    """A job's options (the batch's, then its own) checked as `run` checks them;
    its id. Sets task.error (one line) on a problem of the job's own."""
    task = _Task(job)
    try:
        args = copy.copy(base)
        for name, value in job.options.items():
            setattr(args, name, option_value(name, value))
        if args.content_size == "max":
            raise ValueError("--content-size max is for `cpstyle run` (in a batch the "
                             "workers share the memory); give a size in pixels")
        suffix = Path(job.output).suffix.lower()
        if suffix not in SAVE_FORMATS:
            raise ValueError(f"output {job.output}: unknown image suffix {suffix!r}; use "
                             f"one of {', '.join(SAVE_FORMATS)}")
        check_bits(job.output, args.output_bits, "--output-bits")
        task.settings = cli.run_settings(args, 1)
        args.content, args.style, args.device = str(job.content), [str(job.style)], device
        check = cli.check_precision(getattr(args, "precision", None) or "fp32", device)
        args.precision = check
        task.args = args
        task.id = job_id(job, args)
    except (ValueError, OSError) as e:
        task.error = cli._message(e)
    return task


def _prepare(task, device, budget):
    """The job's images read and checked, the memory preflight -> its payload."""
    from .memory import check_plan_cpu
    content, styles, iterations, num_scales, options, plan = cli.run_inputs(
        task.args, [str(task.job.style)], task.settings, device)
    if device == "cpu":
        choice = check_plan_cpu(plan, include_weights=True,
                                available=budget if budget is not None else 10 ** 18,
                                memory_plan=getattr(task.args, "memory_plan", "auto"))
        options["memory_plan"] = choice.bands or "whole"
    task.size, task.iterations = list(content.shape[:2]), iterations * num_scales
    return dict(content=content, style=styles[0], iterations=iterations, options=options,
                device=device, suffix=Path(task.job.output).suffix.lower(),
                bits=task.args.output_bits,
                key=f"cpstyle-{task.id}-{task.attempt}-{os.getpid()}-{time.monotonic_ns()}")


def run_batch(jobs, out_dir, *, options=None, log=None, force=False, engine="local",
              workers=None, device="auto", scheduler=None, scheduler_file=None,
              client=None, resources=None, dry_run=False, progress=True, say=None):
    """Run `jobs` (Job objects or dicts with content, style, output and run
    options by long name) into out_dir -> Summary. `options`: every job's
    defaults (run options by long name, or the namespace of `cpstyle batch`).
    engine "local" or "dask" (scheduler / scheduler_file / client: the user's
    cluster; resources: what each job holds on a Dask worker, {"GPU": 1} on a
    GPU). Batch-level problems raise ValueError/OSError before anything runs;
    a job's own problem is logged and counted as failed."""
    out_dir = Path(out_dir).expanduser()
    jobs = [_as_job(j, n) for n, j in enumerate(jobs, 1)]
    if not jobs:
        raise ValueError("no jobs")
    if engine not in ("local", "dask"):
        raise ValueError(f"unknown engine {engine!r}: use local or dask")
    if engine == "local" and (scheduler or scheduler_file or client):
        raise ValueError("--scheduler and --scheduler-file are for --engine dask")
    if engine == "dask":
        import_distributed()
    base = base_options(options)
    device = cli.resolve_cli_device(device if device else "auto")
    check_jobs(jobs, out_dir)
    log_path = Path(log).expanduser() if log else out_dir / LOG_NAME
    if not dry_run:
        out_dir.mkdir(parents=True, exist_ok=True)
        _probe(out_dir)
    done_before = set() if force else read_log(log_path)
    summary = Summary(jobs=len(jobs), engine=engine, log=str(log_path))
    tasks, todo = [], []
    for job in jobs:
        task = _resolve(job, base, device)
        tasks.append(task)
        if task.error is None and (task.id, job.output) in done_before \
                and (out_dir / job.output).exists():
            summary.skipped += 1
            continue
        todo.append(task)
    runnable = [t for t in todo if t.error is None]
    if device == "gpu":
        n_default = max(1, gpu_count())
    else:
        n_default = cpu_cores()
    n_workers = max(1, min(workers or n_default, len(runnable) or 1))
    if device == "gpu" and engine == "local":
        n_workers = min(n_workers, max(1, gpu_count()))
    threads = max(1, cpu_cores() // n_workers) if device == "cpu" else 1
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    if dry_run:
        return _dry_run(tasks, todo, summary, out_dir, engine, n_workers, threads)

    budget = None
    if device == "cpu":
        from .memory import available_cpu
        free = available_cpu()
        budget = None if free is None else free / n_workers
    t0 = time.perf_counter()
    bar = _Bar(0, False)
    out_log = Log(log_path)
    eng = None
    in_flight = {}
    # a style's jobs one after another: a worker's next job likely reuses its targets
    pending = collections.deque(sorted(todo, key=lambda t: str(t.job.style)))
    try:
        if runnable:
            if engine == "local":
                eng = LocalEngine(n_workers, device, threads)
            else:
                eng = DaskEngine(n_workers, device, threads, scheduler, scheduler_file,
                                 client, resources)
            summary.workers = eng.workers
            if progress:
                say(f"batch: {len(todo)} of {len(jobs)} jobs to run ({summary.skipped} "
                    f"done before) on {eng.describe()}")
        bar = _Bar(len(todo), progress)
        while pending or in_flight:
            while pending and (eng is None or len(in_flight) < eng.capacity):
                task = pending.popleft()
                if task.error is None and task.payload is None:
                    try:
                        task.payload = _prepare(task, device, budget)
                    except (ValueError, OSError, MemoryError) as e:
                        task.error = cli._message(e)
                if task.error is not None:
                    _record(out_log, summary, task, "failed", task.error, {}, engine, t0)
                    bar.say(f"cpstyle: {task.job.where}: failed: {task.error}")
                    bar.update(summary)
                    continue
                task.submitted = time.perf_counter()
                in_flight[eng.submit(task.payload)] = task
            if not in_flight:
                continue
            for fut in eng.wait(list(in_flight)):
                if fut not in in_flight:
                    continue  # re-submitted after a broken pool
                task = in_flight.pop(fut)
                try:
                    res = eng.result(fut)
                except Lost as e:
                    _lost_pool(eng, in_flight, pending, task, str(e), out_log, summary,
                               engine, t0, bar)
                    break
                _finish(task, res, out_dir, out_log, summary, engine, t0, bar)
    except KeyboardInterrupt:
        for task in in_flight.values():
            _record(out_log, summary, task, "interrupted", "Ctrl-C", {}, engine, t0)
        bar.close()
        if eng is not None:
            eng.close(cancel=True, futures=list(in_flight))
            eng = None
        say(f"cpstyle: batch interrupted: {summary.done} done, {len(in_flight)} in flight "
            f"lost; run the same command again to finish")
        raise
    finally:
        bar.close()
        if eng is not None:
            eng.close()
        out_log.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _probe(folder):
    cli.probe_folder(folder, f"--out-dir {folder}: cannot write there")


def _record(log, summary, task, status, error, res, engine, t0):
    rec = dict(time=_now(), id=task.id, content=str(task.job.content),
               style=str(task.job.style), output=task.job.output, status=status,
               error=error, attempt=task.attempt, retry=task.attempt > 1,
               seconds=res.get("seconds"),
               wall=round(time.perf_counter() - task.submitted, 3) if task.submitted else None,
               device=res.get("device"), worker=res.get("worker"), engine=engine,
               losses=res.get("losses"), iterations=task.iterations, size=task.size,
               target_hits=res.get("target_hits"), started=res.get("started"),
               finished=res.get("finished"),
               version=res.get("version", __version__))
    log.write(rec)
    summary.records.append(rec)
    if status == "done":
        summary.done += 1
        summary.job_seconds += res.get("seconds") or 0.0
    elif status == "failed":
        summary.failed += 1
    elif status == "lost":
        summary.lost += 1
    return rec


def _finish(task, res, out_dir, log, summary, engine, t0, bar):
    for lost in res.pop("lost", []):  # Dask re-ran it: the earlier attempts' workers died
        _record(log, summary, task, "lost", f"worker {lost.get('worker')} died mid-job; "
                f"Dask re-ran it", {"worker": lost.get("worker")}, engine, t0)
        task.attempt += 1
    if res.get("status") == "done":
        try:
            path = out_dir / task.job.output
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, res["data"])
        except OSError as e:
            res = dict(res, status="failed", error=f"cannot write {task.job.output}: "
                       f"{cli._message(e)}")
    if res.get("status") == "done":
        _record(log, summary, task, "done", None, res, engine, t0)
    else:
        _record(log, summary, task, "failed", res.get("error"), res, engine, t0)
        bar.say(f"cpstyle: {task.job.where}: failed: {res.get('error')}")
    task.payload = None
    bar.update(summary)


def _lost_pool(eng, in_flight, pending, first, why, log, summary, engine, t0, bar):
    """The local pool broke: every job in flight lost; a new pool, the jobs
    re-submitted first (or failed after MAX_ATTEMPTS)."""
    lost = [first] + list(in_flight.values())
    in_flight.clear()
    for task in lost:
        _record(log, summary, task, "lost", why, {}, engine, t0)
    bar.say(f"cpstyle: a worker died; re-running {len(lost)} job"
            f"{'s' if len(lost) > 1 else ''} in flight")
    eng.restart()
    for task in reversed(lost):
        task.attempt += 1
        task.submitted = 0.0
        if task.attempt > MAX_ATTEMPTS:
            task.error = f"its worker died on each of {MAX_ATTEMPTS} attempts"
            task.payload = None
        pending.appendleft(task)


def _dry_run(tasks, todo, summary, out_dir, engine, n_workers, threads):
    will = {id(t) for t in todo}
    bad = 0
    for t in tasks:
        head = f"{t.job.content} + {t.job.style} -> {out_dir / t.job.output}"
        if t.error is not None:
            bad += 1
            print(f"fail  {'-' * 16}  {head}: {t.error}")
        elif id(t) in will:
            extra = " ".join(f"{k}={v}" for k, v in t.job.options.items())
            print(f"run   {t.id}  {head}" + (f"  ({extra})" if extra else ""))
        else:
            print(f"skip  {t.id}  {head} (done)")
    summary.failed = bad
    per = f"{threads} thread{'s' if threads > 1 else ''} each"
    print(f"{len(tasks)} jobs: {len(todo) - bad} to run, {summary.skipped} skipped (done), "
          f"{bad} bad; engine {engine}, {n_workers} worker{'s' if n_workers > 1 else ''} "
          f"({per}); log {summary.log}")
    return summary


# ---------------------------------------------------------------- `cpstyle batch`

def main(args):
    """`cpstyle batch` -> exit status (0, or EXIT_FAILED if a job failed)."""
    if args.manifest and (args.contents or args.styles):
        raise ValueError("give a MANIFEST or --contents and --styles, not both")
    if args.manifest:
        jobs = read_manifest(args.manifest)
    elif args.contents and args.styles:
        jobs = pair_jobs(args.contents, args.styles, args.ext)
        if jobs:  # --ext is the batch's: a bad pair with --output-bits is a bad command line
            check_bits(jobs[0].output, args.output_bits, "--output-bits")
    elif args.contents or args.styles:
        raise ValueError("--contents and --styles go together (every content with "
                         "every style)")
    else:
        raise ValueError("give a MANIFEST (CSV or JSON Lines) or --contents DIR --styles DIR")
    if args.engine == "local" and (args.scheduler or args.scheduler_file):
        raise ValueError("--scheduler and --scheduler-file are for --engine dask")
    if args.scheduler and args.scheduler_file:
        raise ValueError("give --scheduler or --scheduler-file, not both")
    if not args.dry_run and args.engine == "local":  # (a Dask worker has its own)
        from . import weights
        path = weights.default_path()
        if not path.exists():
            cli._say(f"{cli.FETCH_NOTICE} into {path} ...")
            cli._fetch(path)
    summary = run_batch(jobs, args.out_dir, options=args, log=args.log, force=args.force,
                        engine=args.engine, workers=args.workers, device=args.device,
                        scheduler=args.scheduler, scheduler_file=args.scheduler_file,
                        dry_run=args.dry_run, progress=not args.quiet)
    if args.dry_run:
        return EXIT_FAILED if summary.failed else 0
    print(summary.line(), flush=True)
    return EXIT_FAILED if summary.failed else 0
