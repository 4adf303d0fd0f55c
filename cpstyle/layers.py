"""VGG-16's conv layers: names, channel counts, where the pools sit, and the
parsing of user layer lists (ids 0..12 or names like "conv3_1")."""

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


def layer_ids(specs, what="layers"):
    """A list of ids/names -> sorted unique ids. Empty lists are refused."""
    if isinstance(specs, (str, int)):
        specs = [specs]
    ids = sorted({layer_id(s) for s in specs})
    if not ids:
        raise ValueError(f"{what}: the list of layers is empty")
    return ids
