"""cpstyle: neural style transfer (the Hvass-Labs tutorial #15 algorithm) on a
hand-written VGG-16: NumPy reference backend, CuPy + custom CUDA kernels on a GPU."""
from .layers import LAYER_NAMES
from .images import load_image, save_image
from .vgg16 import VGG16
from .objective import StyleObjective
from .driver import Interrupted, Progress, style_transfer

__version__ = "0.1.0"

__all__ = ["LAYER_NAMES", "load_image", "save_image", "VGG16", "StyleObjective",
           "style_transfer", "Progress", "Interrupted", "__version__"]
