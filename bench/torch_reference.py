"""The tutorial's style-transfer algorithm (DESIGN.md §5) in PyTorch with autograd:
the baseline that bench/ times cpstyle against, on the same device, with the same
weights and the same arithmetic.

    x  (H, W, 3) float32 0..255, NHWC at the API, NCHW inside
    p  = (x/255 - mean)/std                              the model's first op
    F_l = relu(conv3x3(F_{l-1}) + b), maxpool 2x2/2 (floor) after ids 1, 3, 6, 9
    L_c = mean_l mean((F_l - P_l)^2)                     content layers
    L_s = mean_l mean((G_l - A_l)^2),  G = Fᵀ·F, F = (H·W, C), unnormalised
    L_d = Σ|x[i+1,j] - x[i,j]| + Σ|x[i,j+1] - x[i,j]|   on the 0..255 image
    g  = w_c·∇L_c/(L_c+1e-10) + w_s·∇L_s/(L_s+1e-10) + w_d·∇L_d/(L_d+1e-10)
    x <- clip(x - g·step_size/(std(g)+1e-8), 0, 255)

The reciprocal weights use the current iteration's losses and are constants to the
gradient (detached), so one backward of the weighted sum gives g.

Precision: fp32 (TF32 off in cuBLAS and cuDNN), tf32 (both on), bf16 (the forward
and the losses under torch.autocast(bfloat16): convolutions and Grams take bf16
operands and accumulate in fp32, as PyTorch's mixed precision does; the backward
runs in the forward's dtypes; the image, the squared errors and the losses stay
fp32). On CUDA the model and its input are channels_last in every precision.

The weight helpers and initial_image work without torch (the harness uses them on
machines that have none); everything else needs it.
"""
import contextlib
import os

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # bench/run.py reports the missing PyTorch column itself
    torch = F = None

LAYER_NAMES = (
    "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
    "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3",
)
LAYER_CHANNELS = (
    (3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
    (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512),
)
POOL_AFTER = frozenset({1, 3, 6, 9})
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Weights:
    """Plain holder: .layers = [(kernel (3,3,Cin,Cout) HWIO, bias (Cout,))] * 13,
    .mean, .std (RGB, for (x/255 - mean)/std), .source (a note for reports)."""

    def __init__(self, layers, mean=IMAGENET_MEAN, std=IMAGENET_STD, source=""):
        self.layers = layers
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.preprocessing = "torch"
        self.source = source


def default_weights_path():
    return os.environ.get("CPSTYLE_WEIGHTS") or os.path.join(
        os.path.expanduser("~"), ".cache", "cpstyle", "vgg16.h5")


def load_weights(path=None):
    """The converted VGG-16 weights: through cpstyle.weights.load when cpstyle has
    it, else read from the HDF5 directly (groups conv1_1..conv5_3, each with
    `kernel` and `bias`). FileNotFoundError if there is no file."""
    try:
        from cpstyle import weights as cw
        w = cw.load(path)
        if getattr(w, "preprocessing", "torch") != "torch":
            raise ValueError(f"pre-processing {w.preprocessing!r}; the bench handles 'torch' only")
        return Weights([(np.asarray(k, np.float32), np.asarray(b, np.float32))
                        for k, b in w.layers],
                       getattr(w, "mean", IMAGENET_MEAN), getattr(w, "std", IMAGENET_STD),
                       source=str(path or default_weights_path()))
    except ImportError:
        pass
    path = path or default_weights_path()
    if not os.path.exists(path):
        raise FileNotFoundError(f"no VGG-16 weights at {path}: run `cpstyle weights fetch`")
    import h5py
    with h5py.File(path, "r") as f:
        layers = [(np.asarray(f[n]["kernel"], np.float32), np.asarray(f[n]["bias"], np.float32))
                  for n in LAYER_NAMES]
        pre = f.attrs.get("preprocessing", "torch")
        if isinstance(pre, bytes):
            pre = pre.decode()
    if pre != "torch":
        raise ValueError(f"{path}: pre-processing {pre!r}; the bench handles 'torch' only")
    return Weights(layers, source=path)


def random_weights(seed=0):
    """He-normal kernels and small biases of VGG-16's shapes: for development and
    smoke tests where the real weights are absent. Timings do not depend on values."""
    rng = np.random.default_rng(seed)
    layers = []
    for cin, cout in LAYER_CHANNELS:
        k = rng.standard_normal((3, 3, cin, cout), dtype=np.float32) * np.float32(np.sqrt(2.0 / (9 * cin)))
        b = rng.standard_normal(cout, dtype=np.float32) * np.float32(0.01)
        layers.append((k, b))
    return Weights(layers, source=f"random(seed={seed})")


def set_tf32(enabled):
    """cuBLAS and cuDNN TF32 together; process-wide in torch."""
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)


def _to_nchw(img, device):
    """(H, W, 3) numpy/tensor -> (1, 3, H, W) float32 tensor on device."""
    t = img if isinstance(img, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(img, np.float32))
    return t.to(device=device, dtype=torch.float32).permute(2, 0, 1).unsqueeze(0).contiguous()


class TorchVGG16:
    """The 13 conv layers on one device; forward(x, depth) returns the post-ReLU
    taps of ids 0..depth-1 (only as deep as asked)."""

    def __init__(self, weights, device="cpu", memory_format=None):
        self.device = torch.device(device)
        if memory_format is None:  # cuDNN's fast NHWC kernels on CUDA; mkldnn likes NCHW here
            memory_format = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        self.memory_format = memory_format
        self.kernels, self.biases = [], []
        for k, b in weights.layers:
            w = torch.from_numpy(np.ascontiguousarray(np.asarray(k, np.float32).transpose(3, 2, 0, 1)))
            self.kernels.append(w.to(self.device).contiguous(memory_format=memory_format))  # (Cout, Cin, 3, 3)
            self.biases.append(torch.from_numpy(np.asarray(b, np.float32)).to(self.device))
        self.mean = torch.tensor(weights.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(weights.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def forward(self, x, depth):
        """x (1, 3, H, W) 0..255 -> [F_0, ..., F_{depth-1}], each (1, C, H_l, W_l)."""
        h = ((x / 255.0 - self.mean) / self.std).contiguous(memory_format=self.memory_format)
        taps = []
        for i in range(depth):
            h = F.relu(F.conv2d(h, self.kernels[i], self.biases[i], padding=1))
            taps.append(h)
            if i in POOL_AFTER and i + 1 < depth:
                h = F.max_pool2d(h, 2, 2)  # floor for odd sizes
        return taps


def gram(f):
    """(1, C, H, W) -> (C, C) = Fᵀ·F with F = (H·W, C), unnormalised."""
    c = f.shape[1]
    if f.is_contiguous():
        m = f.reshape(c, -1)  # (C, H·W), a view of NCHW
        return m @ m.t()
    m = f.permute(0, 2, 3, 1).reshape(-1, c)  # (H·W, C), a view of channels_last
    return m.t() @ m


def mse(a, b):
    """mean((a - b)²) in fp32: a no-op cast for fp32 taps, and under bf16 autocast
    the losses stay fp32 as cpstyle's do (autocast would square in bf16 on a CPU)."""
    return torch.mean((a.float() - b.float()) ** 2)


def denoise_loss(x):
    """Total variation (L1) of (1, 3, H, W) on the 0..255 image, summed."""
    return ((x[:, :, 1:, :] - x[:, :, :-1, :]).abs().sum()
            + (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().sum())


class TorchObjective:
    """objective(mixed) -> ({"content","style","denoise"} floats, normalised gradient),
    mixed (H, W, 3) float32 0..255; the gradient comes back as mixed came (numpy
    array, or tensor for a tensor)."""

    def __init__(self, content, style, content_layer_ids, style_layer_ids,
                 weight_content=1.5, weight_style=10.0, weight_denoise=0.3,
                 weights=None, device="cpu", tf32=False, memory_format=None, model=None,
                 bf16=False):
        """model: a TorchVGG16 already on `device` (then `weights` is not read), so a
        benchmark can keep weight loading and upload out of its timings.
        bf16: the forward passes (targets included) and the losses under autocast."""
        self.device = torch.device(device) if model is None else model.device
        self.tf32 = bool(tf32)
        self.bf16 = bool(bf16)
        set_tf32(self.tf32)
        if self.device.type == "cuda":
            torch.backends.cudnn.enabled = True
            torch.backends.cudnn.benchmark = True
        if model is None:
            if weights is None or isinstance(weights, (str, os.PathLike)):
                weights = load_weights(weights)
            model = TorchVGG16(weights, self.device, memory_format)
        self.model = model
        self.content_ids = sorted({int(i) for i in content_layer_ids})
        self.style_ids = sorted({int(i) for i in style_layer_ids})
        self.w = (float(weight_content), float(weight_style), float(weight_denoise))
        self.depth = max(self.content_ids + self.style_ids) + 1
        with torch.no_grad(), self.autocast():
            taps = self.model.forward(_to_nchw(content, self.device), max(self.content_ids, default=-1) + 1) \
                if self.content_ids else []
            self.content_targets = [taps[i].detach() for i in self.content_ids]
            taps = self.model.forward(_to_nchw(style, self.device), max(self.style_ids, default=-1) + 1) \
                if self.style_ids else []
            self.style_targets = [gram(taps[i]).detach() for i in self.style_ids]

    def autocast(self):
        """bf16: torch.autocast on this device; otherwise nothing."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def losses_and_grad(self, x):
        """x (1, 3, H, W) device tensor -> (L_c, L_s, L_d) 0-d tensors, grad (1, 3, H, W).
        No host synchronisation."""
        set_tf32(self.tf32)
        x = x.detach().requires_grad_(True)
        zero = x.new_zeros(())
        # autocast wraps the forward and the losses only (PyTorch's advice); autograd
        # runs each op's backward in the dtype its forward ran in
        with self.autocast():
            taps = self.model.forward(x, self.depth)
            lc = torch.stack([mse(taps[i], p) for i, p in zip(self.content_ids, self.content_targets)]).mean() \
                if self.content_ids else zero
            ls = torch.stack([mse(gram(taps[i]), a) for i, a in zip(self.style_ids, self.style_targets)]).mean() \
                if self.style_ids else zero
        ld = denoise_loss(x)
        wc, ws, wd = self.w
        total = (wc / (lc.detach() + 1e-10)) * lc + (ws / (ls.detach() + 1e-10)) * ls \
            + (wd / (ld.detach() + 1e-10)) * ld
        (g,) = torch.autograd.grad(total, x)
        return (lc.detach(), ls.detach(), ld.detach()), g

    def __call__(self, mixed):
        as_tensor = isinstance(mixed, torch.Tensor)
        (lc, ls, ld), g = self.losses_and_grad(_to_nchw(mixed, self.device))
        g = g[0].permute(1, 2, 0).contiguous()  # (H, W, 3)
        losses = {"content": float(lc), "style": float(ls), "denoise": float(ld)}
        return losses, (g if as_tensor else g.cpu().numpy())


def initial_image(shape, seed):
    """uniform [0, 1) + 128, float32 (H, W, 3): drawn in float64 from numpy's seeded
    generator, then rounded, the same draw as cpstyle.driver.initial_image."""
    rng = np.random.default_rng(seed)
    return (rng.random(shape, dtype=np.float64) + 128.0).astype(np.float32)


class TorchStyleTransfer:
    """The optimisation loop on the device. step(n) runs n iterations with no host
    synchronisation; image() returns the (H, W, 3) numpy result."""

    def __init__(self, objective, init, step_size=10.0):
        self.objective = objective
        self.step_size = float(step_size)
        self.x = _to_nchw(init, objective.device)
        self.last_losses = None

    def step(self, n=1):
        for _ in range(n):
            losses, g = self.objective.losses_and_grad(self.x)
            with torch.no_grad():
                step = self.step_size / (g.std(correction=0) + 1e-8)  # population std
                self.x = (self.x - g * step).clamp_(0.0, 255.0)
            self.last_losses = losses

    def image(self):
        return self.x[0].permute(1, 2, 0).contiguous().cpu().numpy()


def torch_style_transfer(content, style, content_layer_ids=(4,), style_layer_ids=tuple(range(13)),
                         weight_content=1.5, weight_style=10.0, weight_denoise=0.3,
                         num_iterations=120, step_size=10.0, weights=None, device="cpu",
                         seed=None, tf32=False, callback=None, init=None, model=None,
                         bf16=False):
    """The whole run; -> (H, W, 3) float32 numpy. callback(i, losses dict) every 10
    iterations and at the last (the only host syncs)."""
    obj = TorchObjective(content, style, content_layer_ids, style_layer_ids, weight_content,
                         weight_style, weight_denoise, weights, device, tf32, model=model,
                         bf16=bf16)
    if init is None:
        init = initial_image(np.shape(content), seed)
    run = TorchStyleTransfer(obj, init, step_size)
    for i in range(num_iterations):
        run.step(1)
        if callback is not None and (i % 10 == 0 or i == num_iterations - 1):
            lc, ls, ld = (float(v) for v in run.last_losses)
            callback(i, {"content": lc, "style": ls, "denoise": ld})
    return run.image()
