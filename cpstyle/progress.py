"""What a run reports and how it stops (shared by cpstyle/driver.py and
cpstyle/gpu_engine.py, so that the driver imports the engine and not the
other way round): the progress record handed to callbacks, and the Ctrl-C
exception that carries the last finished image. Tests: tests/test_driver.py."""
import dataclasses

LOSS_NAMES = ("content", "style", "denoise")


@dataclasses.dataclass
class Progress:
    iteration: int            # iterations done so far in this scale (0 = the initial image's losses)
    num_iterations: int       # iterations of this scale
    losses: dict              # {"content", "style", "denoise"}: the losses at `image`
    adj: dict                 # the three 1/(L + 1e-10) (1.0 with constant weights)
    image: object             # (H, W, 3) float32, on the run's backend
    elapsed: float            # seconds since the scale's loop started
    objective: float = None   # Φ at `image`, the number every optimiser lowers
    scale: int = 0            # multiscale: 0-based index of the scale ...
    num_scales: int = 1       # ... of this many
    size: tuple = None        # (H, W) of this scale's image
    captured: bool = False    # GPU engine: this iteration replayed a captured CUDA graph


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during style_transfer; .image is the last finished image (host)."""

    def __init__(self, image, iteration):
        super().__init__(f"interrupted after {iteration} iterations")
        self.image, self.iteration = image, iteration
