"""cpstyle: neural style transfer (the Hvass-Labs tutorial #15 algorithm) on a
hand-written VGG-16: NumPy reference backend, CuPy + custom CUDA kernels on a GPU."""
import os
import sys

# NumPy's OpenBLAS keeps its idle worker threads spinning for 2^28 cycles (about
# 0.1 s) after every GEMM. Between GEMMs the NumPy backend runs its memory-bound
# steps (im2col, col2im, masks, pools) on every core, and on a 2-core machine the
# spinning workers took half of them: 0.77 s -> 0.67 s per 256x256 iteration with
# 2^16 cycles (20 us), still long enough to catch back-to-back GEMMs. OpenBLAS
# reads the variable once, when NumPy loads, so it only takes effect when cpstyle
# is imported first (as the CLI and bench/ do); the user's own value wins.
# BLAS_TIMEOUT_SET: whether OpenBLAS sees a value (ours or the user's).
BLAS_TIMEOUT_SET = "numpy" not in sys.modules or "OPENBLAS_THREAD_TIMEOUT" in os.environ
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")

from .layers import LAYER_NAMES  # noqa: E402
from .images import load_image, save_image  # noqa: E402
from .vgg16 import VGG16  # noqa: E402
from .objective import StyleObjective  # noqa: E402
from .driver import Interrupted, Progress, style_transfer  # noqa: E402
from . import presets  # noqa: E402

__version__ = "0.1.0"

__all__ = ["LAYER_NAMES", "load_image", "save_image", "VGG16", "StyleObjective",
           "style_transfer", "Progress", "Interrupted", "presets", "__version__"]
