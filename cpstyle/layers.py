"""VGG-16's conv layers: names, channel counts, where the pools sit, and the
parsing of user layer lists (ids 0..12 or names like "conv3_1") and of
per-layer weights."""
import math

LAYER_NAMES = (
    "conv1_1", "conv1_2",
    "conv2_1", "conv2_2",
    "conv3_1", "conv3_2", "conv3_3",
    "conv4_1", "conv4_2", "conv4_3",
    "conv5_1", "conv5_2", "conv5_3",
)

# (Cin, Cout) per conv layer, in order.
LAYER_CHANNELS = (
    (3, 64), (64, 64),
    (64, 128), (128, 128),
    (128, 256), (256, 256), (256, 256),
    (256, 512), (512, 512), (512, 512),
    (512, 512), (512, 512), (512, 512),
)

# A 2x2 max-pool follows these layer ids (the last block's pool is never needed:
# no tap lies behind it).
POOL_AFTER = frozenset({1, 3, 6, 9})

# Each pool halves the size (floor); a tap behind four pools needs 16 px per side.
MIN_IMAGE_SIZE = 16


def layer_id(spec):
    """One layer given as an id (int or digit string) or a name -> its id 0..12."""
    if isinstance(spec, str):
        s = spec.strip()
        if s in LAYER_NAMES:
            return LAYER_NAMES.index(s)
        if not s.lstrip("-").isdigit():
            raise ValueError(f"unknown layer {spec!r}: use an id 0..12 or a name "
                             f"{LAYER_NAMES[0]} .. {LAYER_NAMES[-1]}")
        spec = int(s)
    if isinstance(spec, bool) or not isinstance(spec, int) and not hasattr(spec, "__index__"):
        raise ValueError(f"layer {spec!r} is neither an id nor a name")
    i = int(spec)
    if not 0 <= i < len(LAYER_NAMES):
        raise ValueError(f"layer id {i} is out of range: VGG-16 has conv layers 0..12")
    return i


def check_number(value, name, positive=False):
    """A finite number >= 0 (> 0 with positive=True) -> float; ValueError naming
    `name` otherwise. The one check behind every weight, size and step option."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"{name} must be a finite number {'>' if positive else '>='} 0, "
                         f"got {value!r}")
    return v


def check_weights(weights, count, what):
    """A list of `count` finite numbers >= 0 with a positive sum -> the list
    divided by its sum (floats). ValueError naming `what` otherwise."""
    if isinstance(weights, (str, bytes)) or not hasattr(weights, "__len__"):
        raise ValueError(f"{what} must be a list of numbers, got {weights!r}")
    if len(weights) != count:
        raise ValueError(f"{what}: {len(weights)} weights for {count} "
                         f"{'entry' if count == 1 else 'entries'}; give one per entry")
    out = [check_number(w, f"each of {what}") for w in weights]
    total = sum(out)
    if total <= 0:
        raise ValueError(f"{what}: the weights sum to 0; at least one must be > 0")
    return [v / total for v in out]


def weighted_layer_ids(specs, weights=None, what="layers"):
    """Layers (ids or names, in the user's order) and optional per-layer weights
    in that order -> (sorted unique ids, weights normalised to sum 1 in the order
    of the ids). No weights: all equal (the tutorial's mean over layers)."""
    if isinstance(specs, (str, int)):
        specs = [specs]
    specs = list(specs)
    ids = [layer_id(s) for s in specs]
    if not ids:
        raise ValueError(f"{what}: the list of layers is empty")
    if weights is None:
        uniq = sorted(set(ids))
        return uniq, [1.0 / len(uniq)] * len(uniq)
    if len(set(ids)) != len(ids):
        dup = sorted({LAYER_NAMES[i] for i in ids if ids.count(i) > 1})
        raise ValueError(f"{what}: layer {', '.join(dup)} is listed twice; with per-layer "
                         f"weights each layer must appear once")
    w = check_weights(weights, len(ids), f"{what} weights")
    pairs = sorted(zip(ids, w))
    return [i for i, _ in pairs], [v for _, v in pairs]


def layer_ids(specs, what="layers"):
    """A list of ids/names -> sorted unique ids. Empty lists are refused."""
    if isinstance(specs, (str, int)):
        specs = [specs]
    ids = sorted({layer_id(s) for s in specs})
    if not ids:
        raise ValueError(f"{what}: the list of layers is empty")
    return ids
