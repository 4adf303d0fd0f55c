"""Atomic file writes: the data goes to a temp file in the destination's folder,
is fsynced, and replaces the destination with os.replace, so neither a reader
nor a failure (Ctrl-C included) ever sees a half-written file; the temp file is
removed on any failure. Used by images.save_image, weights.write_h5 and the
trace. Tests: tests/test_images.py, tests/test_weights.py, tests/test_trace.py."""
import contextlib
import os
import tempfile
from pathlib import Path


def _current_umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _current_umask()  # read once: os.umask() is process-wide and racy later


@contextlib.contextmanager
def atomic_path(dest, mode=None):
    """Yields a temp path beside `dest`; when the block ends without an error the
    file is fsynced, given `mode` (default: 0o666 less the umask, as a plain
    open() would) and renamed onto `dest`."""
    dest = Path(dest).expanduser()
    try:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    except OSError as e:
        raise type(e)(f"folder {dest.parent} is not writable ({e.strerror or e})") from None
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, (0o666 & ~UMASK) if mode is None else mode)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_atomic(path, data):
    """bytes -> path, atomically. Returns the Path."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path).expanduser()
