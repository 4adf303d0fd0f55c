"""Colour preservation (`style_transfer(preserve_colors=...)`), in full-range
YCbCr (ITU-R BT.601 as JPEG uses it):

    Y  =       0.299·R    + 0.587·G    + 0.114·B
    Cb = 128 − 0.168736·R − 0.331264·G + 0.5·B
    Cr = 128 + 0.5·R      − 0.418688·G − 0.081312·B

    after   post-process: the output's Y with the content's Cb, Cr. Y is first
            clamped to the range in which that (Cb, Cr) gives R, G, B in 0..255
            (never empty: the content's own Y lies in it), so the chroma of the
            result IS the content's and no channel clips.
    before  luminance-only transfer (Gatys et al. 2016, "Preserving colour in
            neural artistic style transfer", §3): the run sees grey images, the
            content's Y and the style's Y with its mean and std matched to the
            content's (Y_s' = (Y_s − μ_s)·σ_c/σ_s + μ_c); the result's Y is then
            put together with the content's Cb, Cr as in `after`.

Works on NumPy or CuPy arrays (H, W, 3), 0..255. Tests: tests/test_colors.py."""
from .backend import get_array_module

PRESERVE_COLORS = ("none", "after", "before")


def check_preserve_colors(mode):
    if mode not in PRESERVE_COLORS:
        raise ValueError(f"unknown preserve_colors {mode!r}: use one of {PRESERVE_COLORS}")
    return mode


def luma(img):
    """(H, W, 3) RGB -> Y (H, W), float64."""
    xp = get_array_module(img)
    a = img.astype(xp.float64)
    return 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]


def rgb_to_ycbcr(img):
    """(H, W, 3) RGB -> (H, W, 3) Y, Cb, Cr, float64."""
    xp = get_array_module(img)
    a = img.astype(xp.float64)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    return xp.stack([0.299 * r + 0.587 * g + 0.114 * b,
                     128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b,
                     128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b], axis=-1)


def _chroma_offsets(cb, cr):
    """R − Y, G − Y, B − Y for the given chroma."""
    cb, cr = cb - 128.0, cr - 128.0
    return 1.402 * cr, -0.344136 * cb - 0.714136 * cr, 1.772 * cb


def ycbcr_to_rgb(ycc):
    """(H, W, 3) Y, Cb, Cr -> RGB float64 (not clipped)."""
    xp = get_array_module(ycc)
    y = ycc[..., 0]
    return xp.stack([y + o for o in _chroma_offsets(ycc[..., 1], ycc[..., 2])], axis=-1)


def grey(y, dtype):
    """Y (H, W) -> the grey RGB image (Y, Y, Y), clipped to 0..255."""
    xp = get_array_module(y)
    return xp.ascontiguousarray(xp.repeat(xp.clip(y, 0.0, 255.0)[..., None], 3, axis=-1)
                                .astype(dtype))


def transfer_luminance(mixed, content):
    """`after`: mixed's Y (clamped to the content chroma's valid range) with the
    content's Cb, Cr -> float32-like-mixed (H, W, 3) in 0..255."""
    xp = get_array_module(mixed)
    ycc = rgb_to_ycbcr(content)
    offs = _chroma_offsets(ycc[..., 1], ycc[..., 2])
    lo = xp.maximum(xp.maximum(-offs[0], -offs[1]), -offs[2])
    hi = xp.minimum(xp.minimum(255.0 - offs[0], 255.0 - offs[1]), 255.0 - offs[2])
    y = xp.minimum(xp.maximum(luma(mixed), lo), hi)
    rgb = xp.stack([y + o for o in offs], axis=-1)
    return xp.ascontiguousarray(xp.clip(rgb, 0.0, 255.0).astype(mixed.dtype))


def match_luminance(style, content):
    """`before`: the style's Y with mean and std matched to the content's, as a
    grey RGB image like `style`."""
    ys, yc = luma(style), luma(content)
    ss = float(ys.std())
    scale = float(yc.std()) / ss if ss > 0 else 1.0
    return grey((ys - float(ys.mean())) * scale + float(yc.mean()), style.dtype)


def luminance_image(img):
    """The grey (Y, Y, Y) image of img."""
    return grey(luma(img), img.dtype)
