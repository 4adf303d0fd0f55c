"""The classic Gatys et al. recipe, as in Leon Gatys' own PyTorch code
(github.com/leongatys/PytorchNeuralStyleTransfer, NeuralStyleTransfer.ipynb),
on our VGG-16 (bench/torch_reference.py): the anchor of the quality benchmark.

    x  (H, W, 3) float32 0..255 at the API;  p = (x/255 - mean)/std, the variable
    F_l = TorchVGG16 taps (post-ReLU),  P = F_8(content),  A_l = G(F_l(style))
    G(F) = F·Fᵀ/(H_l·W_l),  F = (C_l, H_l·W_l)
    L_c = mean((F_8(x) - P)²)                                 conv4_2, weight 1
    L_s = Σ_l w_l·mean((G(F_l(x)) - A_l)²),  w_l = K·1e3/C_l²
          l = relu1_1, 2_1, 3_1, 4_1, 5_1 (ids 0, 2, 4, 7, 10),  C_l = 64, 128, 256, 512, 512
    L   = L_c + L_s                                            no TV term
    p0 = p(content);  L-BFGS on p: lr 1, history 100, strong Wolfe, N iterations
    result = clip(255·(p·std + mean), 0, 255)

From the notebook: the layers, the Gram matrix divided by H·W, both MSEs as
means, w_l = 1e3/C_l² with content weight 1 (K = 1 there), initialisation from
the content, optimising the pre-processed image with nothing clamped during the
run, the result clipped once at the end, L-BFGS with lr 1 and history 100.

Decided here (the notebook differs):
- network: VGG-16 with torchvision's ImageNet weights and RGB (x/255 - mean)/std,
  not VGG-19 with Caffe's weights and BGR 255·(x/255 - mean). The features, and
  so the balance of L_c against L_s at K = 1, are on another scale: K is swept
  (the benchmark uses 100, 1000, 10000).
- optimiser: the notebook calls LBFGS with torch's defaults (20 iterations a
  step, no line search) until 500 closure evaluations. Here one step() of N
  iterations with a strong-Wolfe line search; tolerance_grad = tolerance_change
  = -1 so no convergence test stops it; max_eval = MAX_EVALS_PER_ITERATION·N
  (torch's default, 1.25·N, would end a run whose line searches need more than
  1.25 evaluations an iteration on average; and torch hands the line search
  max_eval minus the evaluations so far as its limit, so this also caps one
  search, which tolerance_change = -1 leaves no other bound on).
- sizes: the notebook scales both images to 512 px on the short side; here the
  caller sizes them (the style may have another size than the content).
- on CUDA, TF32 off (strict fp32), as the tutorial baseline's default.

Tests: tests/test_classic_reference.py."""
import os
import time

import numpy as np

from bench.torch_reference import TorchVGG16, _to_nchw, gram, load_weights, set_tf32

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the caller (test, benchmark) checks for torch itself
    torch = F = None

CONTENT_ID = 8  # conv4_2 post-ReLU
STYLE_IDS = (0, 2, 4, 7, 10)  # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
STYLE_CHANNELS = (64, 128, 256, 512, 512)
DEPTH = max(STYLE_IDS + (CONTENT_ID,)) + 1
MAX_EVALS_PER_ITERATION = 4


def style_layer_weights(style_weight):
    """w_l = K·1e3/C_l² for the five style layers."""
    return tuple(float(style_weight) * 1e3 / c ** 2 for c in STYLE_CHANNELS)


def gram_hw(f):
    """(1, C, H, W) -> (C, C) = F·Fᵀ/(H·W), F = (C, H·W)."""
    return gram(f) / (f.shape[2] * f.shape[3])


def classic_targets(model, content, style):
    """P = F_8(content) (1, 512, H/8, W/8) and [A_l] (C_l, C_l), detached."""
    with torch.no_grad():
        p_target = model.forward(_to_nchw(content, model.device), CONTENT_ID + 1)[CONTENT_ID]
        taps = model.forward(_to_nchw(style, model.device), max(STYLE_IDS) + 1)
        a_targets = [gram_hw(taps[i]) for i in STYLE_IDS]
    return p_target, a_targets


def classic_losses(model, x, targets, style_weight):
    """x (1, 3, H, W) 0..255 tensor -> L_c, [w_l·mean((G_l - A_l)²)] (0-d tensors)."""
    p_target, a_targets = targets
    taps = model.forward(x, DEPTH)
    lc = F.mse_loss(taps[CONTENT_ID], p_target)
    ls = [w * F.mse_loss(gram_hw(taps[i]), a)
          for w, i, a in zip(style_layer_weights(style_weight), STYLE_IDS, a_targets)]
    return lc, ls


def classic_style_transfer(content, style, style_weight=1000.0, num_iterations=300,
                           weights=None, device="cpu", model=None, callback=None):
    """content, style: float32 (H, W, 3) 0..255 numpy (sizes may differ).
    -> (image (H, W, 3) float32 0..255, info {"iterations", "evaluations", "seconds"}).
    model: a TorchVGG16 already on its device (then weights and device are not
    read). seconds: the targets and the optimisation, not weight loading.
    callback(evaluation, {"content", "style", "total"}) after every closure
    evaluation (floats: a host sync each, so only when given)."""
    if model is None:
        if weights is None or isinstance(weights, (str, os.PathLike)):
            weights = load_weights(weights)
        model = TorchVGG16(weights, device)
    if model.device.type == "cuda":
        set_tf32(False)

    def sync():
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)

    sync()
    t0 = time.perf_counter()
    targets = classic_targets(model, content, style)
    mean, std = model.mean, model.std  # (1, 3, 1, 1)
    p = ((_to_nchw(content, model.device) / 255.0 - mean) / std).requires_grad_(True)
    opt = torch.optim.LBFGS([p], lr=1, max_iter=num_iterations,
                            max_eval=MAX_EVALS_PER_ITERATION * num_iterations,
                            history_size=100, line_search_fn="strong_wolfe",
                            tolerance_grad=-1, tolerance_change=-1)
    evaluations = 0

    def closure():
        nonlocal evaluations
        opt.zero_grad()
        x = (p * std + mean) * 255.0  # the model's forward maps x back to p
        lc, ls = classic_losses(model, x, targets, style_weight)
        ls = torch.stack(ls).sum()
        loss = lc + ls
        loss.backward()
        evaluations += 1
        if callback is not None:
            callback(evaluations, {"content": lc.item(), "style": ls.item(), "total": loss.item()})
        return loss

    opt.step(closure)
    with torch.no_grad():
        x = ((p * std + mean) * 255.0).clamp_(0.0, 255.0)
    image = x[0].permute(1, 2, 0).contiguous().cpu().numpy()  # (H, W, 3)
    sync()
    seconds = time.perf_counter() - t0
    info = {"iterations": int(opt.state[p]["n_iter"]), "evaluations": evaluations,
            "seconds": seconds}
    return image.astype(np.float32, copy=False), info
