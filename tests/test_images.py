"""cpstyle/images.py: loading (modes, EXIF, max_size, refusals), validate_image,
atomic save_image, resize_to, make_sheet and the bundled demo images. Every image
is made in the test with PIL, except the bundled ones."""
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from cpstyle import images as I
from cpstyle.layers import MIN_IMAGE_SIZE


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


# ---------------------------------------------------------------- load_image: modes

def test_load_rgb_png_exact(tmp_path, rng):
    a = rng.integers(0, 256, (21, 34, 3), dtype=np.uint8)
    p = _save(Image.fromarray(a), tmp_path / "x.png")
    got = I.load_image(p)
    assert got.dtype == np.float32 and got.shape == (21, 34, 3) and got.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(got, a.astype(np.float32))


def test_load_greyscale(tmp_path, rng):
    a = rng.integers(0, 256, (17, 19), dtype=np.uint8)
    got = I.load_image(_save(Image.fromarray(a, "L"), tmp_path / "g.png"))
    assert got.shape == (17, 19, 3)
    for c in range(3):
        np.testing.assert_array_equal(got[:, :, c], a)


def test_load_rgba_composited_on_white(tmp_path):
    a = np.zeros((4, 3, 4), np.uint8)
    a[0, 0] = (10, 20, 30, 255)   # opaque: its own colour
    a[0, 1] = (10, 20, 30, 0)     # transparent: white
    a[0, 2] = (0, 0, 0, 128)      # half: about 127
    got = I.load_image(_save(Image.fromarray(a, "RGBA"), tmp_path / "a.png"))
    assert got.shape == (4, 3, 3)
    np.testing.assert_array_equal(got[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(got[0, 1], [255, 255, 255])
    assert np.all(np.abs(got[0, 2] - 127) <= 1)


def test_load_la(tmp_path):
    a = np.array([[[50, 255], [50, 0]]], np.uint8)  # (1, 2, 2)
    got = I.load_image(_save(Image.fromarray(a, "LA"), tmp_path / "la.png"))
    np.testing.assert_array_equal(got[0], [[50, 50, 50], [255, 255, 255]])


def test_load_palette(tmp_path):
    p_img = Image.new("P", (5, 4))
    p_img.putpalette([255, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)
    p_img.putpixel((1, 2), 1)
    got = I.load_image(_save(p_img, tmp_path / "p.png"))
    np.testing.assert_array_equal(got[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(got[2, 1], [0, 255, 0])


def test_load_palette_with_transparency(tmp_path):
    p_img = Image.new("P", (3, 2))
    p_img.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    p_img.putpixel((2, 1), 1)
    p_img.info["transparency"] = 1
    got = I.load_image(_save(p_img, tmp_path / "pt.png", transparency=1))
    np.testing.assert_array_equal(got[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(got[1, 2], [255, 255, 255])


def test_load_16bit_greyscale(tmp_path):
    a = np.array([[0, 257 * 100, 65535]], np.uint16)
    img = Image.fromarray(a)
    assert img.mode.startswith("I;16")
    got = I.load_image(_save(img, tmp_path / "g16.png"))
    assert got.shape == (1, 3, 3)
    np.testing.assert_allclose(got[0, :, 0], [0, 100, 255], atol=1e-3)
    np.testing.assert_array_equal(got[..., 0], got[..., 2])


def test_load_16bit_with_max_size(tmp_path):
    a = np.full((40, 80), 65535, np.uint16)
    got = I.load_image(_save(Image.fromarray(a), tmp_path / "g16.png"), max_size=20)
    assert got.shape == (10, 20, 3)
    np.testing.assert_allclose(got, 255.0, atol=1e-3)


def test_load_cmyk_jpeg(tmp_path):
    img = Image.new("CMYK", (16, 16), (0, 0, 0, 0))  # no ink: white
    got = I.load_image(_save(img, tmp_path / "c.jpg", quality=95))
    assert got.shape == (16, 16, 3)
    assert np.all(got > 245)


def test_exif_orientation_applied(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (255, 0, 0)  # left half red
    a[:, 20:] = (0, 0, 255)  # right half blue
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    got = I.load_image(_save(img, tmp_path / "r.png", exif=exif.tobytes()))
    assert got.shape == (40, 20, 3)  # portrait once rotated
    np.testing.assert_array_equal(got[5, 10], [255, 0, 0])   # left went to the top
    np.testing.assert_array_equal(got[35, 10], [0, 0, 255])


# ---------------------------------------------------------------- load_image: max_size

def _blank(tmp_path, w, h, name="b.png"):
    return _save(Image.new("RGB", (w, h), (40, 80, 120)), tmp_path / name)


@pytest.mark.parametrize("w,h,max_size,shape", [
    (200, 100, 50, (25, 50, 3)),      # landscape scaled down
    (100, 200, 50, (50, 25, 3)),      # portrait
    (1024, 640, 300, (187, 300, 3)),  # the tutorial's style image: short side truncated
    (60, 30, 100, (30, 60, 3)),       # smaller than max_size: never scaled up
    (64, 32, 64, (32, 64, 3)),        # equal: untouched
])
def test_max_size(tmp_path, w, h, max_size, shape):
    got = I.load_image(_blank(tmp_path, w, h), max_size=max_size)
    assert got.shape == shape
    np.testing.assert_allclose(got[shape[0] // 2, shape[1] // 2], [40, 80, 120], atol=1)


@pytest.mark.parametrize("bad", [0, -5, 0.5, "300", True])
def test_bad_max_size(tmp_path, bad):
    with pytest.raises(ValueError, match="max_size"):
        I.load_image(_blank(tmp_path, 8, 8), max_size=bad)


# ---------------------------------------------------------------- load_image: refusals

def test_missing_file(tmp_path):
    p = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match=f"image not found: {p}"):
        I.load_image(p)
    with pytest.raises(OSError, match=f"content image not found: {p}"):
        I.load_image(p, what="content image")


def test_text_file_named_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("just some text, not a JPEG\n")
    with pytest.raises(ValueError, match=f"cannot read image {p}: not an image"):
        I.load_image(p)


def test_folder_refused(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        I.load_image(tmp_path)


def _truncated_jpeg(tmp_path, rng):
    a = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    full = _save(Image.fromarray(a), tmp_path / "full.jpg", quality=90).read_bytes()
    p = tmp_path / "trunc.jpg"
    p.write_bytes(full[: len(full) // 2])
    return p


def test_truncated_jpeg_refused(tmp_path, rng):
    p = _truncated_jpeg(tmp_path, rng)
    with pytest.raises(ValueError, match=f"cannot read image {p}: .*truncated"):
        I.load_image(p)


def test_truncated_jpeg_refused_even_if_pil_told_to_allow(tmp_path, rng, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    p = _truncated_jpeg(tmp_path, rng)
    with pytest.raises(ValueError, match="truncated"):
        I.load_image(p)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored


def _png_header_only(path, width, height):
    """A PNG whose IHDR claims width x height RGB, with a tiny IDAT: nothing big is
    ever allocated unless a reader decodes it."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("w,h,size_text", [
    (30000, 30000, "900000000 pixels"),  # past PIL's own bomb error
    (12000, 9000, "12000x9000 pixels"),  # between PIL's warning and its error
])
def test_huge_header_refused_before_decoding(tmp_path, w, h, size_text):
    p = _png_header_only(tmp_path / "bomb.png", w, h)
    assert p.stat().st_size < 200
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match=f"{p}: its header claims {size_text}, over the "
                                             f"limit of 100 megapixels"):
            I.load_image(p)
    assert not [c for c in caught if issubclass(c.category, Image.DecompressionBombWarning)]


def test_float_mode_refused(tmp_path):
    p = _save(Image.fromarray(np.ones((4, 4), np.float32), "F"), tmp_path / "f.tif")
    with pytest.raises(ValueError, match="mode F"):
        I.load_image(p)


# ---------------------------------------------------------------- validate_image

def test_validate_good_inputs(rng):
    a = rng.uniform(0, 255, (20, 30, 3)).astype(np.float32)
    assert I.validate_image(a) is a  # already float32 C-contiguous: no copy
    u8 = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    got = I.validate_image(u8)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, u8)
    strided = rng.uniform(0, 255, (40, 60, 3))[::2, ::2]  # float64, not contiguous
    got = I.validate_image(strided)
    assert got.dtype == np.float32 and got.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(got, strided, rtol=1e-6)
    edge = np.full((16, 16, 3), 255.5, np.float32)  # a little slack past 255
    edge[0, 0, 0] = -0.5
    I.validate_image(edge)


@pytest.mark.parametrize("shape", [(1, 1, 3), (15, 40, 3), (40, 15, 3)])
def test_validate_too_small(shape):
    with pytest.raises(ValueError, match=f"style image is {shape[1]}x{shape[0]} pixels; "
                                         f"both sides must be at least {MIN_IMAGE_SIZE}"):
        I.validate_image(np.zeros(shape, np.float32), what="style image")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_validate_non_finite(bad):
    a = np.zeros((16, 16, 3), np.float32)
    a[3, 4, 1] = bad
    with pytest.raises(ValueError, match="content image holds NaN or infinite"):
        I.validate_image(a)


@pytest.mark.parametrize("value", [-2.0, 300.0])
def test_validate_out_of_range(value):
    a = np.full((16, 16, 3), 100.0, np.float32)
    a[0, 0, 0] = value
    with pytest.raises(ValueError, match="the API expects RGB values 0..255"):
        I.validate_image(a)


@pytest.mark.parametrize("bad,msg", [
    ([[1, 2, 3]], "numpy or cupy array"),
    ("x.jpg", "use cpstyle.load_image"),
    (np.zeros((16, 16), np.float32), r"shape \(H, W, 3\)"),
    (np.zeros((16, 16, 4), np.float32), r"got \(16, 16, 4\)"),
    (np.zeros((16, 16, 3), bool), "dtype bool"),
])
def test_validate_wrong_kind(bad, msg):
    with pytest.raises(ValueError, match=msg):
        I.validate_image(bad)


# ---------------------------------------------------------------- save_image

@pytest.mark.parametrize("suffix,fmt", [
    (".jpg", "JPEG"), (".jpeg", "JPEG"), (".JPG", "JPEG"), (".png", "PNG"),
    (".tif", "TIFF"), (".tiff", "TIFF"),
    pytest.param(".webp", "WEBP", marks=pytest.mark.skipif(
        not features.check("webp"), reason="Pillow built without WebP")),
])
def test_save_format_from_suffix(tmp_path, rng, suffix, fmt):
    a = rng.uniform(0, 255, (18, 22, 3)).astype(np.float32)
    p = I.save_image(a, tmp_path / f"out{suffix}")
    assert p == tmp_path / f"out{suffix}"
    with Image.open(p) as im:
        assert im.format == fmt and im.size == (22, 18) and im.mode == "RGB"
    assert [q.name for q in tmp_path.iterdir()] == [p.name]


def test_save_png_clips_and_rounds(tmp_path):
    a = np.array([[[-10.0, 300.0, 127.6], [0.4, 254.5, 255.0]]], np.float32)
    a = np.repeat(np.repeat(a, 2, axis=0), 1, axis=1)
    p = I.save_image(a, tmp_path / "x.png")
    got = np.asarray(Image.open(p))
    np.testing.assert_array_equal(got[0], [[0, 255, 128], [0, 254, 255]])  # rint: half to even


def test_save_lossless_round_trip(tmp_path, rng):
    a = rng.integers(0, 256, (16, 24, 3)).astype(np.float32)
    for suffix in (".png", ".tif"):
        np.testing.assert_array_equal(I.load_image(I.save_image(a, tmp_path / f"r{suffix}")), a)


def test_save_jpeg_quality(tmp_path, rng):
    a = rng.uniform(0, 255, (64, 64, 3)).astype(np.float32)
    small = I.save_image(a, tmp_path / "q10.jpg", quality=10).stat().st_size
    large = I.save_image(a, tmp_path / "q95.jpg").stat().st_size
    assert small < large


@pytest.mark.parametrize("name", ["out.bmp", "out.gif", "out", "out.jpg.txt"])
def test_save_unknown_suffix(tmp_path, name):
    suffix = name[name.rfind("."):] if "." in name else ""
    with pytest.raises(ValueError, match=f"unknown image suffix {suffix!r}"):
        I.save_image(np.zeros((16, 16, 3), np.float32), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_save_missing_folder(tmp_path):
    p = tmp_path / "no" / "such" / "x.png"
    with pytest.raises(OSError, match=f"cannot save image {p}: folder .* does not exist"):
        I.save_image(np.zeros((16, 16, 3), np.float32), p)


def test_save_parent_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    p = tmp_path / "f" / "x.png"
    with pytest.raises(OSError, match=f"cannot save image {p}: folder .* is not a folder"):
        I.save_image(np.zeros((16, 16, 3), np.float32), p)


def test_save_unwritable_folder(tmp_path, monkeypatch):
    # chmod cannot stop root, so the refusal comes from a stand-in mkstemp.
    def denied(**kw):
        raise PermissionError(13, "Permission denied")
    import cpstyle.atomic
    monkeypatch.setattr(cpstyle.atomic.tempfile, "mkstemp", denied)
    p = tmp_path / "x.png"
    with pytest.raises(PermissionError, match=f"cannot save image {p}: folder .* not writable"):
        I.save_image(np.zeros((16, 16, 3), np.float32), p)


def test_failed_save_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "out.png"
    p.write_bytes(b"precious old bytes")

    def broken_save(self, fp, format=None, **kw):
        fp.write(b"half an image")
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        I.save_image(np.zeros((16, 16, 3), np.float32), p)
    assert p.read_bytes() == b"precious old bytes"
    assert [q.name for q in tmp_path.iterdir()] == ["out.png"]


def test_save_nan_refused_before_writing(tmp_path):
    p = tmp_path / "out.png"
    p.write_bytes(b"old")
    a = np.zeros((16, 16, 3), np.float32)
    a[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        I.save_image(a, p)
    assert p.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


def test_save_replaces_existing(tmp_path):
    p = tmp_path / "out.png"
    I.save_image(np.zeros((16, 16, 3), np.float32), p)
    I.save_image(np.full((16, 16, 3), 200.0, np.float32), p)
    assert np.asarray(Image.open(p)).min() == 200
    assert [q.name for q in tmp_path.iterdir()] == ["out.png"]


# ---------------------------------------------------------------- 16-bit output

def read_png16(path):
    """A 16-bit RGB PNG decoded here (Pillow reads it as 8 bits): every chunk's CRC
    checked, the IHDR, the IDATs inflated and unfiltered -> uint16 (H, W, 3)."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0] == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        pos += 12 + n
    kinds = [k for k, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and set(kinds[1:-1]) == {b"IDAT"}
    w, h, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, comp, filt, interlace) == (16, 2, 0, 0, 0)
    raw = np.frombuffer(zlib.decompress(b"".join(b for k, b in chunks if k == b"IDAT")),
                        np.uint8).reshape(h, 1 + w * 6)
    rows, above = np.empty((h, w * 6), np.uint8), np.zeros(w * 6, np.uint8)
    for y in range(h):
        kind = raw[y, 0]
        assert kind in (0, 2), f"row {y}: filter {kind} (this decoder knows None and Up)"
        rows[y] = raw[y, 1:] + (above if kind == 2 else 0)  # mod 256
        above = rows[y]
    return rows.view(">u2").reshape(h, w, 3).astype(np.uint16)


def read_tiff16(path):
    """A 16-bit RGB TIFF: its tags as Pillow parses them checked, the strip read
    here (Pillow reads it as 8 bits) -> uint16 (H, W, 3)."""
    with Image.open(path) as im:
        tags, (w, h) = im.tag_v2, im.size
        im.load()  # Pillow decodes it too
    assert tags[258] == (16, 16, 16) and tags[277] == 3 and tags[262] == 2
    assert tags[259] == 1 and tags.get(284, 1) == 1
    (offset,), (count,) = tags[273], tags[279]
    assert count == h * w * 6
    data = Path(path).read_bytes()[offset:offset + count]
    return np.frombuffer(data, "<u2").reshape(h, w, 3)


def spec16(a):
    """The 16-bit quantisation as the issue states it: round(clip(x, 0, 255)/255*65535)."""
    return np.rint(np.clip(np.asarray(a, np.float64), 0, 255) * 65535 / 255).astype(np.uint16)


READERS16 = {".png": read_png16, ".tif": read_tiff16, ".tiff": read_tiff16}


@pytest.mark.parametrize("suffix", list(READERS16))
@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 33, 3), (300, 5, 3)])  # 300: two bands
def test_save_16bit_exact(tmp_path, rng, suffix, shape):
    a = rng.uniform(-3, 258, shape).astype(np.float32)
    a.flat[:4] = [0.0, 255.0, 0.5, 1.5]  # ends; x*257 = 128.5, 385.5: half to even
    p = I.save_image(a, tmp_path / f"x{suffix}", bits=16)
    np.testing.assert_array_equal(READERS16[suffix](p), spec16(a))
    assert [q.name for q in tmp_path.iterdir()] == [p.name]  # atomic: no temp left


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_gradient_does_not_band(tmp_path, suffix):
    # 100 .. 101 across 64 px: 8 bits have two values for it, 16 bits 64
    a = np.repeat((100 + np.arange(64) / 63)[None, :, None], 3, axis=2)
    a = np.repeat(a, 16, axis=0).astype(np.float32)
    got = READERS16[suffix](I.save_image(a, tmp_path / f"g{suffix}", bits=16))
    np.testing.assert_array_equal(got, spec16(a))
    assert len(np.unique(got[0, :, 0])) == 64
    eight = np.asarray(Image.open(I.save_image(a, tmp_path / f"g8{suffix}")))
    assert len(np.unique(eight[0, :, 0])) == 2


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_file_is_what_pillow_reads(tmp_path, rng, suffix):
    # whole values v are v*257 in 16 bits: Pillow's 8-bit view (the high byte) is v
    a = rng.integers(0, 256, (19, 23, 3)).astype(np.float32)
    p = I.save_image(a, tmp_path / f"v{suffix}", bits=16)
    with Image.open(p) as im:
        assert im.size == (23, 19) and im.format == I.SAVE_FORMATS[suffix]
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), a.astype(np.uint8))
    np.testing.assert_array_equal(READERS16[suffix](p), a.astype(np.uint16) * 257)


@pytest.mark.parametrize("name", ["x.jpg", "x.jpeg", "x.webp"])
def test_16bit_refused_for_8bit_formats(tmp_path, name):
    with pytest.raises(ValueError, match=r"holds 8 bits per channel; 16 bits need "
                                         r"\.png, \.tif, \.tiff") as e:
        I.save_image(np.zeros((16, 16, 3), np.float32), tmp_path / name, bits=16)
    assert I.SAVE_FORMATS[name[1:]] in str(e.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bits", [0, 12, 32, True, "16", None])
def test_bad_bits(tmp_path, bits):
    with pytest.raises(ValueError, match="bits must be 8 or 16"):
        I.save_image(np.zeros((16, 16, 3), np.float32), tmp_path / "x.png", bits=bits)
    assert list(tmp_path.iterdir()) == []


def test_16bit_nan_refused_and_failed_write_leaves_old_file(tmp_path, monkeypatch):
    p = tmp_path / "out.png"
    p.write_bytes(b"old")
    a = np.zeros((16, 16, 3), np.float32)
    a[3, 2, 1] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        I.save_image(a, p, bits=16)

    def full(fh, kind, data):
        fh.write(b"half")
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(I, "_chunk", full)
    with pytest.raises(OSError, match="disk full"):
        I.save_image(np.zeros((16, 16, 3), np.float32), p, bits=16)
    assert p.read_bytes() == b"old" and [q.name for q in tmp_path.iterdir()] == ["out.png"]


@pytest.mark.gpu
def test_save_cupy_array(tmp_path):
    cp = pytest.importorskip("cupy")
    a = cp.full((16, 16, 3), 77.0, cp.float32)
    p = I.save_image(a, tmp_path / "g.png")
    assert np.all(np.asarray(Image.open(p)) == 77)


# ---------------------------------------------------------------- resize_to

def test_resize_to(rng):
    const = np.full((30, 50, 3), 123.0, np.float32)
    got = I.resize_to(const, 7, 11)
    assert got.shape == (7, 11, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, 123.0, atol=1e-3)
    grey = rng.uniform(0, 255, (9, 13)).astype(np.float32)
    assert I.resize_to(grey, 18, 26).shape == (18, 26)
    same = I.resize_to(grey, 9, 13)
    np.testing.assert_array_equal(same, grey)
    assert same is not grey


def test_resize_to_clips_overshoot():
    edge = np.zeros((32, 32, 3), np.float32)
    edge[:, 16:] = 255.0
    assert I.resize_to(edge, 32, 77, clip=False).max() > 255.0  # LANCZOS rings
    clipped = I.resize_to(edge, 32, 77)
    assert clipped.min() >= 0.0 and clipped.max() <= 255.0


# ---------------------------------------------------------------- make_sheet

def test_make_sheet(tmp_path):
    content = np.zeros((40, 60, 3), np.float32)
    mixed = np.full((40, 60, 3), 128.0, np.float32)
    style = np.full((20, 20, 3), 250.0, np.float32)  # other height: scaled to 40x40
    style[..., 2] = 0.0
    p = I.make_sheet(content, mixed, style, tmp_path / "sheet.png")
    sheet = np.asarray(Image.open(p)).astype(int)
    gap = 10
    assert sheet.shape[1] == 60 + 60 + 40 + 4 * gap
    assert sheet.shape[0] > 40 + 2 * gap
    np.testing.assert_array_equal(sheet[gap + 20, gap + 30], [0, 0, 0])
    np.testing.assert_array_equal(sheet[gap + 20, 2 * gap + 60 + 30], [128, 128, 128])
    np.testing.assert_array_equal(sheet[gap + 20, 3 * gap + 120 + 20], [250, 250, 0])
    np.testing.assert_array_equal(sheet[gap + 20, gap + 60 + gap // 2], [255, 255, 255])  # gap
    captions = sheet[gap + 40 + 2:]  # below the images: white paper with dark text
    for left, width in ((gap, 60), (2 * gap + 60, 60), (3 * gap + 120, 40)):
        band = captions[:, left:left + width]
        assert (band < 100).any(), "caption text missing"
    assert captions.mean() > 200


# ---------------------------------------------------------------- bundled data

def test_demo_images():
    content, style = I.demo_paths()
    assert content.name == "tubingen.jpg" and style.name == "starry_night.jpg"
    for p in (content, style):
        a = I.load_image(p)
        assert max(a.shape[:2]) <= 512 and min(a.shape[:2]) >= MIN_IMAGE_SIZE
        I.validate_image(a)
    data = content.parent
    total = sum(q.stat().st_size for q in data.iterdir() if q.is_file())
    assert total < 600_000  # eight images: the demo pair and bench/quality.py's four pairs
    licences = (data / "LICENSES.md").read_text()
    assert "Andreas Praefcke, CC BY 3.0" in licences
    for q in data.glob("*.jpg"):
        assert q.name in licences
