"""Image files in and out, and checks on images given to the API (DESIGN.md §2).

API images are float32 (H, W, 3) RGB arrays with values 0..255, as in the Hvass
tutorial; cupy arrays are accepted where an array is. Loading refuses anything
it cannot decode completely (truncated files included) and any header claiming
more than MAX_IMAGE_PIXELS before decoding it; saving is atomic.

Saving quantises x in 0..255 to 8 bits as rint(clip(x, 0, 255)) (Pillow writes
the file), or to 16 bits as rint(clip(x, 0, 255)·65535/255) = rint(clip(x)·257),
exact in float64, so an 8-bit value v becomes v·257. Pillow cannot write 48-bit
RGB, so 16-bit PNG (IHDR depth 16, colour type 2, every row filtered "Up") and
baseline TIFF (little-endian, uncompressed, one strip) are written here, a band
of rows at a time so a print-size float image is never copied whole.

Tests: tests/test_images.py. Bundled demo images: cpstyle/data/ (LICENSES.md).
"""
import numbers
import os
import re
import struct
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFile, ImageFont, ImageOps

from .atomic import atomic_path
from .backend import get_array_module, is_gpu_array, to_host
from .layers import MIN_IMAGE_SIZE

# Headers claiming more pixels than this are refused before decoding (a 100 MP
# image is already 1.2 GB as float32 RGB).
MAX_IMAGE_PIXELS = 100_000_000

SAVE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG",
                ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP"}
BITS = (8, 16)  # per channel, save_image's `bits`
SUFFIXES_16BIT = (".png", ".tif", ".tiff")

_DATA = Path(__file__).resolve().parent / "data"
DEMO_CONTENT = "tubingen.jpg"
DEMO_STYLE = "starry_night.jpg"

_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_truncated_lock = threading.Lock()




def demo_paths():
    """(content_path, style_path) of the bundled demo pair: Tuebingen's Neckarfront
    (Andreas Praefcke, CC BY 3.0) and Van Gogh's Starry Night (public domain)."""
    return _DATA / DEMO_CONTENT, _DATA / DEMO_STYLE


# ---------------------------------------------------------------- loading

def _fit(width, height, max_size):
    """Size with the long side at max_size, aspect kept. The short side is
    truncated like the tutorial's `(size * factor).astype(int)` (but >= 1);
    the long side is max_size exactly."""
    factor = max_size / max(width, height)
    if width >= height:
        return max_size, max(1, int(height * factor + 1e-9))
    return max(1, int(width * factor + 1e-9)), max_size


def _decode(im):
    """im.load() with truncated files treated as errors, whatever the global
    ImageFile.LOAD_TRUNCATED_IMAGES says."""
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        im.load()
        return
    with _truncated_lock:
        old = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            im.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = old


def _too_large(path, what, size_text):
    return ValueError(f"cannot read {what} {path}: its header claims {size_text}, over "
                      f"the limit of {MAX_IMAGE_PIXELS // 1_000_000} megapixels "
                      f"(cpstyle.images.MAX_IMAGE_PIXELS)")


def _open_rgb(path, what):
    """Open, check the size, decode, apply EXIF orientation. Returns a PIL image in
    mode RGB, or a float32 (H, W) array 0..255 for 16-bit greyscale."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"cannot read {what} {path}: it is a folder") from None
    except OSError as e:
        raise type(e)(f"cannot open {what} {path}: {e.strerror or e}") from None
    with fh, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(fh)
        except Image.DecompressionBombError as e:
            m = re.search(r"\((\d+) pixels\)", str(e))
            raise _too_large(path, what, f"{m.group(1)} pixels" if m else "too many pixels") from None
        except Exception as e:
            raise ValueError(f"cannot read {what} {path}: not an image PIL can read "
                             f"({type(e).__name__}: {e})") from None
        with im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise _too_large(path, what, f"{w}x{h} pixels")
            if w < 1 or h < 1:
                raise ValueError(f"cannot read {what} {path}: its size is {w}x{h}")
            try:
                _decode(im)
            except Exception as e:
                raise ValueError(f"cannot read {what} {path}: {type(e).__name__}: "
                                 f"{e}") from None
            try:
                out = ImageOps.exif_transpose(im)
            except Exception:  # a broken EXIF block: the pixels are still good
                out = im.copy()
        return _to_rgb(out, path, what)


def _to_rgb(im, path, what):
    mode = im.mode
    if mode in _16BIT_MODES:  # 16-bit greyscale (PNG/TIFF): 0..65535 -> 0..255
        a = np.asarray(im).astype(np.float32)
        return np.clip(a, 0.0, 65535.0) * np.float32(255.0 / 65535.0)
    if mode == "RGB":
        return im
    if mode == "P":
        mode = "RGBA" if "transparency" in im.info else "RGB"
        im = im.convert(mode)
    if mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "F":
        raise ValueError(f"cannot read {what} {path}: 32-bit float images (mode F) "
                         f"have no agreed value range; save it as 8/16-bit")
    try:
        return im.convert("RGB")  # L, 1, CMYK, YCbCr, ...
    except Exception as e:
        raise ValueError(f"cannot read {what} {path}: cannot convert mode {mode} to "
                         f"RGB ({e})") from None


def load_image(filename, max_size=None, what="image"):
    """Image file -> float32 (H, W, 3) RGB, values 0..255, C-contiguous.

    max_size: if given and the long side is larger, scale down (LANCZOS) so the
    long side is max_size, keeping the aspect ratio (never scales up).
    Greyscale, palette, alpha (composited on white), CMYK and 16-bit images become
    RGB; EXIF orientation is applied. `what` names the image in error messages.
    Missing file -> FileNotFoundError; unreadable, truncated or oversized
    (> MAX_IMAGE_PIXELS) -> ValueError."""
    if max_size is not None:
        if isinstance(max_size, bool) or not isinstance(max_size, numbers.Real) \
                or not max_size >= 1:
            raise ValueError(f"max_size must be a positive number of pixels, got {max_size!r}")
        max_size = int(max_size)
    path = Path(filename).expanduser()
    img = _open_rgb(path, what)
    if isinstance(img, np.ndarray):  # 16-bit greyscale, already float
        h, w = img.shape
        if max_size is not None and max(w, h) > max_size:
            nw, nh = _fit(w, h, max_size)
            img = resize_to(img, nh, nw)
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2), dtype=np.float32)
    if max_size is not None and max(img.size) > max_size:
        img = img.resize(_fit(*img.size, max_size), Image.LANCZOS)
    return np.ascontiguousarray(np.asarray(img, dtype=np.float32))


# ---------------------------------------------------------------- checks

def validate_image(image, what="content image"):
    """Check an API input image: numpy/cupy array, (H, W, 3), both sides >=
    MIN_IMAGE_SIZE, finite, values within 0..255 (a little slack: -1..256).
    Returns it as float32 C-contiguous on the same backend (the same object when
    it already is). Problems -> ValueError naming `what`."""
    if not (isinstance(image, np.ndarray) or is_gpu_array(image)):
        hint = " (use cpstyle.load_image to read a file)" if isinstance(
            image, (str, os.PathLike, Image.Image)) else ""
        raise ValueError(f"{what} must be a numpy or cupy array of shape (H, W, 3), "
                         f"got {type(image).__name__}{hint}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what} must have shape (H, W, 3) (RGB), got {tuple(image.shape)}")
    h, w = image.shape[:2]
    if min(h, w) < MIN_IMAGE_SIZE:
        raise ValueError(f"{what} is {w}x{h} pixels; both sides must be at least "
                         f"{MIN_IMAGE_SIZE} (VGG-16 pools four times)")
    if image.dtype.kind not in "fiu":
        raise ValueError(f"{what} has dtype {image.dtype}; expected float32 values 0..255")
    xp = get_array_module(image)
    a = xp.ascontiguousarray(image, dtype=np.float32)
    if not bool(xp.isfinite(a).all()):
        raise ValueError(f"{what} holds NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if lo < -1.0 or hi > 256.0:
        raise ValueError(f"{what} has values from {lo:g} to {hi:g}; the API expects "
                         f"RGB values 0..255 (as load_image returns)")
    return a


# ---------------------------------------------------------------- resizing

def resize_to(image, height, width, clip=True):
    """Resize a float image (H, W) or (H, W, C) to (height, width) with LANCZOS,
    channel by channel in PIL's float mode (no 8-bit rounding). Returns float32 on
    the input's backend; clipped to 0..255 unless clip=False (LANCZOS overshoots)."""
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"cannot resize to {width}x{height}")
    gpu = is_gpu_array(image)
    a = np.asarray(to_host(image), dtype=np.float32)
    if a.ndim not in (2, 3):
        raise ValueError(f"resize_to expects (H, W) or (H, W, C), got {a.shape}")
    chans = a[:, :, None] if a.ndim == 2 else a
    if chans.shape[:2] == (height, width):
        out = chans.copy()
    else:
        out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(chans[:, :, c]), "F")
                                   .resize((width, height), Image.LANCZOS))
                        for c in range(chans.shape[2])], axis=2)
    if clip:
        np.clip(out, 0.0, 255.0, out=out)
    out = np.ascontiguousarray(out[:, :, 0] if a.ndim == 2 else out, dtype=np.float32)
    if gpu:
        return get_array_module(image).asarray(out)
    return out


# ---------------------------------------------------------------- saving

def _host_pixels(image, what="image"):
    """A (H, W, 3) image of numbers as a host array, checked (not copied)."""
    a = np.asarray(to_host(image))
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"{what} must have shape (H, W, 3), got {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{what} is empty: shape {a.shape}")
    if a.dtype.kind not in "fiub":
        raise ValueError(f"{what} has dtype {a.dtype}; expected numbers 0..255")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(f"{what} holds NaN or infinite values; nothing was written")
    return a


def _to_uint8(image, what="image"):
    a = _host_pixels(image, what)
    if a.dtype == np.uint8:
        return a
    return np.rint(np.clip(a.astype(np.float64), 0.0, 255.0)).astype(np.uint8)


def _blocks16(a, rows=256):
    """Bands of `rows` rows of a checked image as uint16: rint(clip(x)·257)."""
    for y in range(0, a.shape[0], rows):
        band = np.clip(a[y:y + rows].astype(np.float64), 0.0, 255.0)
        yield np.rint(band * 257.0).astype(np.uint16)  # (rows, W, 3)


def _chunk(fh, kind, data):
    fh.write(struct.pack(">I", len(data)) + kind)
    fh.write(data)
    fh.write(struct.pack(">I", zlib.crc32(data, zlib.crc32(kind))))


def write_png16(fh, a):
    """A checked (H, W, 3) 0..255 image -> fh as a 48-bit RGB PNG. Filter 2 (Up)
    on every row: each byte minus the byte above, mod 256 (row 0: minus zeros)."""
    h, w = a.shape[:2]
    fh.write(b"\x89PNG\r\n\x1a\n")
    _chunk(fh, b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    z = zlib.compressobj(6)
    above = np.zeros(w * 6, np.uint8)
    for block in _blocks16(a):
        rows = block.astype(">u2").view(np.uint8).reshape(len(block), w * 6)  # big-endian
        up = np.empty((len(rows), 1 + w * 6), np.uint8)
        up[:, 0] = 2
        np.subtract(rows, np.vstack([above[None], rows[:-1]]), out=up[:, 1:])
        above = rows[-1]
        data = z.compress(up.tobytes())
        if data:
            _chunk(fh, b"IDAT", data)
    _chunk(fh, b"IDAT", z.flush())
    _chunk(fh, b"IEND", b"")


def write_tiff16(fh, a):
    """A checked (H, W, 3) 0..255 image -> fh as a baseline RGB TIFF, 16 bits per
    sample, little-endian, uncompressed, one strip (at most 4 GB: no BigTIFF)."""
    h, w = a.shape[:2]
    nbytes = h * w * 6
    if nbytes >= 1 << 32:
        raise ValueError(f"a {w}x{h} image is over the 4 GB a 16-bit TIFF strip holds; "
                         f"save it as .png")
    short, long_, rational = 3, 4, 5
    extra = 8 + 2 + 13 * 12 + 4           # after the header and the IFD
    bits_at, xres_at, yres_at, pixels_at = extra, extra + 6, extra + 14, extra + 22
    entries = [(256, long_, 1, w), (257, long_, 1, h), (258, short, 3, bits_at),
               (259, short, 1, 1), (262, short, 1, 2), (273, long_, 1, pixels_at),
               (277, short, 1, 3), (278, long_, 1, h), (279, long_, 1, nbytes),
               (282, rational, 1, xres_at), (283, rational, 1, yres_at),
               (284, short, 1, 1), (296, short, 1, 2)]  # sorted tags; 72 dpi, inch
    fh.write(b"II" + struct.pack("<HI", 42, 8) + struct.pack("<H", len(entries)))
    for tag, kind, count, value in entries:  # a SHORT value sits in the low bytes
        fh.write(struct.pack("<HHII", tag, kind, count, value))
    fh.write(struct.pack("<I", 0) + struct.pack("<3H", 16, 16, 16)
             + struct.pack("<4I", 72, 1, 72, 1))
    for block in _blocks16(a):
        fh.write(block.astype("<u2").tobytes())


def check_bits(path, bits, what="bits"):
    """ValueError unless `bits` (8 or 16 per channel) fits the format of path's
    suffix; names the format and the suffixes that hold 16 bits."""
    if isinstance(bits, bool) or bits not in BITS:
        raise ValueError(f"{what} must be 8 or 16 (per channel), got {bits!r}")
    suffix = Path(path).suffix.lower()
    if bits == 16 and suffix in SAVE_FORMATS and suffix not in SUFFIXES_16BIT:
        raise ValueError(f"{what} 16: {path} would be {SAVE_FORMATS[suffix]}, which holds "
                         f"8 bits per channel; 16 bits need {', '.join(SUFFIXES_16BIT)}")
    return bits


def write_image(fh, image, fmt, quality=95, bits=8):
    """(H, W, 3) 0..255 -> an open binary file in `fmt` (a SAVE_FORMATS value) with
    `bits` per channel (16: PNG and TIFF only)."""
    if bits == 16:
        if fmt not in ("PNG", "TIFF"):
            raise ValueError(f"{fmt} holds 8 bits per channel; 16 bits need PNG or TIFF")
        (write_png16 if fmt == "PNG" else write_tiff16)(fh, _host_pixels(image))
        return
    opts = {"quality": int(quality)} if fmt in ("JPEG", "WEBP") else {}
    Image.fromarray(_to_uint8(image), "RGB").save(fh, format=fmt, **opts)


def save_image(image, filename, quality=95, bits=8):
    """Write a (H, W, 3) 0..255 image (numpy or cupy) to filename, format from the
    suffix (.jpg/.jpeg, .png, .tif/.tiff, .webp); values are clipped and rounded to
    `bits` per channel: 8, or 16 for .png and .tif/.tiff (module docstring).
    Atomic: written to a temp file in the same folder, then os.replace, so an
    existing file is never left half-written. Returns the Path."""
    path = Path(filename).expanduser()
    fmt = SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot save {path}: unknown image suffix {path.suffix!r}; "
                         f"use one of {', '.join(SAVE_FORMATS)}")
    if isinstance(quality, bool) or not isinstance(quality, numbers.Integral) \
            or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an integer 1..100, got {quality!r}")
    check_bits(path, bits)
    pixels = _to_uint8(image) if bits == 8 else _host_pixels(image)
    folder = path.parent
    if not folder.is_dir():
        why = "is not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"cannot save image {path}: folder {folder} {why}")
    if path.is_dir():
        raise IsADirectoryError(f"cannot save image {path}: it is a folder")
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                write_image(fh, pixels, fmt, quality, bits)
    except OSError as e:
        if e.errno is not None or isinstance(e, PermissionError):
            raise type(e)(f"cannot save image {path}: {e.strerror or e}") from None
        raise
    return path


# ---------------------------------------------------------------- contact sheet

def _caption_font(size):
    try:
        return ImageFont.load_default(size=size)  # scalable, Pillow >= 10.1 with FreeType
    except (TypeError, AttributeError, OSError, ImportError):
        return ImageFont.load_default()


def make_sheet(content, mixed, style, path, gap=10):
    """Save a Content | Mixed | Style picture (the tutorial's plot_images): the three
    images side by side at the mixed image's height, white gaps, a caption under
    each in PIL's default font. Returns the Path written (via save_image)."""
    imgs = [np.asarray(to_host(x), dtype=np.float32) for x in (content, mixed, style)]
    for name, a in zip(("content", "mixed", "style"), imgs):
        if a.ndim != 3 or a.shape[2] != 3 or min(a.shape[:2]) < 1:
            raise ValueError(f"make_sheet: {name} image must be (H, W, 3), got {a.shape}")
    height = imgs[1].shape[0]
    font_size = max(12, min(32, height // 16))
    caption_height = 2 * font_size
    tiles = []
    for a in imgs:
        h, w = a.shape[:2]
        nw = max(1, int(round(w * height / h)))
        tiles.append(a if (h, w) == (height, nw) else resize_to(a, height, nw))
    total_w = sum(t.shape[1] for t in tiles) + gap * (len(tiles) + 1)
    sheet = np.full((height + 2 * gap + caption_height, total_w, 3), 255.0, np.float32)
    x = gap
    lefts = []
    for t in tiles:
        sheet[gap:gap + height, x:x + t.shape[1]] = t
        lefts.append((x, t.shape[1]))
        x += t.shape[1] + gap
    canvas = Image.fromarray(_to_uint8(sheet), "RGB")
    draw = ImageDraw.Draw(canvas)
    font = _caption_font(font_size)
    labels = ("Content", "Mixed", "Style")
    _, y0, _, y1 = draw.textbbox((0, 0), "".join(labels), font=font)  # one baseline
    ty = gap + height + (gap + caption_height - (y1 - y0)) // 2 - y0
    for (left, width), label in zip(lefts, labels):
        x0, _, x1, _ = draw.textbbox((0, 0), label, font=font)
        tx = left + (width - (x1 - x0)) // 2 - x0
        draw.text((tx, ty), label, fill=(0, 0, 0), font=font)
    return save_image(np.asarray(canvas, dtype=np.float32), path)
