"""The optimisation behind the `unsplit` attack (see unsplit.py for the paper, threat model and choices).

Kept apart so the attack module stays readable: the alternating input/clone steps, the gauge fix
of the estimates, and the CPU kernels that make the batched steps cheap.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

RESCALES = ("image", "batch", "none")


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared differences along height plus along width (the authors' TV, β = 2)."""
    return (x[:, :, 1:, :] - x[:, :, :-1, :]).pow(2).mean() + (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).mean()


def default_lambda_tv(depth: int) -> float:
    """Paper §5.1: λ_TV = 0.1 for the first three split depths, 1 for deeper ones."""
    return 0.1 if depth <= 3 else 1.0


@dataclass(frozen=True)
class InversionConfig:
    rounds: int = 50
    input_steps: int = 100
    clone_steps: int = 100
    lr: float = 1e-3
    lambda_tv: float = 0.1
    lambda_l2: float = 1.0
    tol: float = 2e-2
    patience: int = 5
    rescale: str = "image"
    relu_slope: float = 0.01
    polish_steps: int = 300


@dataclass
class InversionResult:
    raw: torch.Tensor  # x̂ as optimised (in [0,1], arbitrary gauge)
    reconstructions: torch.Tensor  # x̂ after the gauge fix of ``rescale``
    clone: nn.Module  # the stolen client part (gauge folded in for image/batch)
    rounds_run: int
    fit_loss: float  # final MSE between the returned clone on the returned reconstructions and the smashed data
    seconds: float


@contextlib.contextmanager
def _without_onednn(device: torch.device):
    """oneDNN's input-gradient kernel for few input channels is ~4× slower than ATen's on CPU; the
    input steps need only that gradient, so they run without oneDNN (the clone steps keep it)."""
    if device.type != "cpu":
        yield
        return
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


class _LeakyGradReLU(torch.autograd.Function):
    """ReLU forward; backward lets ``slope`` of the gradient through below zero (see relu_slope)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, slope: float) -> torch.Tensor:
        ctx.save_for_backward(z)
        ctx.slope = slope
        return z.clamp_min(0.0)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (z,) = ctx.saved_tensors
        return torch.ops.aten.leaky_relu_backward(g, z, ctx.slope, False), None


class _LeakyReLU(nn.Module):
    def __init__(self, slope: float) -> None:
        super().__init__()
        self.slope = slope

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return _LeakyGradReLU.apply(z, self.slope)


@contextlib.contextmanager
def leaky_relu_gradients(clone: nn.Module, slope: float):
    """Swap the clone's ReLUs for ones whose gradient below zero is ``slope`` (values unchanged), then back.

    The forward values are the same, so the objective is the paper's; only the descent direction
    differs where a unit is off. Without it a clone unit that goes off on every target never comes
    back (a dead ReLU), and its share of the smashed data is never fitted.
    """
    swapped = []
    if slope > 0:
        for parent in list(clone.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.ReLU):
                    setattr(parent, name, _LeakyReLU(slope))
                    swapped.append((parent, name, child))
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


class _ConvInputGrad(torch.autograd.Function):
    """conv2d (stride 1, no dilation or groups) whose backward returns only the input gradient,
    computed as a 'full' convolution with the flipped kernel: on CPU ~4× faster than autograd's
    conv backward for one-channel inputs. Used by the input steps, where the clone is frozen."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, pad: tuple[int, int]):
        ctx.save_for_backward(w)
        ctx.pad = pad
        return F.conv2d(x, w, b, padding=pad)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (w,) = ctx.saved_tensors
        pad = (w.shape[2] - 1 - ctx.pad[0], w.shape[3] - 1 - ctx.pad[1])
        return F.conv2d(g, w.flip(2, 3).transpose(0, 1), padding=pad), None, None, None


def _input_forward(clone: nn.Module):
    """clone(x) for the input steps, with the fast input gradient when the first layer allows it."""
    layers = list(clone.children()) if isinstance(clone, nn.Sequential) else []
    first = layers[0] if layers else None
    if not (isinstance(first, nn.Conv2d) and first.stride == (1, 1) and first.dilation == (1, 1)
            and first.groups == 1 and first.padding_mode == "zeros" and isinstance(first.padding, tuple)
            and all(p < k for p, k in zip(first.padding, first.kernel_size))):
        return clone
    rest = nn.Sequential(*layers[1:])
    return lambda x: rest(_ConvInputGrad.apply(x, first.weight, first.bias, first.padding))


def _adam(params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    try:  # the fused kernel halves the optimiser's share of a step on CPU
        return torch.optim.Adam(params, lr=lr, amsgrad=True, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, amsgrad=True)


def invert(clone: nn.Module, smashed: torch.Tensor, input_shape: tuple[int, ...], cfg: InversionConfig,
           x_init: float = 0.5) -> InversionResult:
    """UnSplit's alternating optimisation on a batch of targets with one shared ``clone`` (trained in place).

    ``smashed`` (N×…) and ``clone`` must be on the same device. Calling this with one target at a time,
    the same clone, ``tol=0``, ``rescale="none"`` and ``polish_steps=0`` reproduces the authors'
    per-image protocol (benchmarks/unsplit_paper.py does).
    """
    t0 = time.perf_counter()
    target = smashed.detach()
    x = torch.full((len(target), *input_shape), float(x_init), device=target.device, requires_grad=True)
    params = [p for p in clone.parameters()]
    opt_x, opt_c = _adam([x], cfg.lr), (_adam(params, cfg.lr) if params else None)
    clone.train()
    with leaky_relu_gradients(clone, cfg.relu_slope):
        rounds_run = _alternate(clone, x, target, params, opt_x, opt_c, cfg)
        raw = x.detach()
        rec, clone = _fix_gauge(raw, clone, cfg.rescale)
        if params and cfg.polish_steps:  # last clone step (Eq. 2) on the final, gauge-fixed estimates
            opt = _adam(params, cfg.lr)
            for _ in range(cfg.polish_steps):
                fit = F.mse_loss(clone(rec), target)
                opt.zero_grad(set_to_none=True)
                fit.backward()
                opt.step()
    with torch.no_grad():
        fit_loss = float(F.mse_loss(clone(rec), target))
    return InversionResult(raw, rec, clone, rounds_run, fit_loss, time.perf_counter() - t0)


def _alternate(clone: nn.Module, x: torch.Tensor, target: torch.Tensor, params: list[torch.Tensor],
               opt_x: torch.optim.Optimizer, opt_c: torch.optim.Optimizer | None, cfg: InversionConfig) -> int:
    """The rounds of input steps and clone steps; returns how many rounds ran."""
    history: list[float] = []
    fit = torch.zeros((), device=target.device)
    rounds_run = 0
    forward = _input_forward(clone)
    for r in range(cfg.rounds):
        for p in params:  # input steps: no parameter gradients at all
            p.requires_grad_(False)
        with _without_onednn(x.device):
            for _ in range(cfg.input_steps):
                loss = (F.mse_loss(forward(x), target) + cfg.lambda_tv * total_variation(x)
                        + cfg.lambda_l2 * x.square().mean())
                opt_x.zero_grad(set_to_none=True)
                loss.backward()
                opt_x.step()
                with torch.no_grad():
                    x.clamp_(0.0, 1.0)
        for p in params:
            p.requires_grad_(True)
        xd = x.detach()
        for _ in range(cfg.clone_steps if opt_c is not None else 0):
            fit = F.mse_loss(clone(xd), target)
            opt_c.zero_grad(set_to_none=True)
            fit.backward()
            opt_c.step()
        rounds_run = r + 1
        if cfg.tol > 0:
            if cfg.clone_steps == 0:
                with torch.no_grad():
                    fit = F.mse_loss(clone(xd), target)
            history.append(float(fit.detach()))  # the one host sync of the round
            k = cfg.patience
            if len(history) > k and history[-1 - k] - history[-1] < cfg.tol * history[-1 - k]:
                break
    return rounds_run


@torch.no_grad()
def rescale(x: torch.Tensor, mode: str) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Fix the gauge of raw estimates: returns the rescaled images and the batch map (lo, scale)
    that ``_fold_affine`` folds into the clone (None for ``"none"`` or a flat batch)."""
    if mode == "none":
        return x.clone(), None
    flat = x.flatten()
    if flat.numel() > 1 << 24:  # torch.quantile's input limit
        flat = flat[torch.randperm(flat.numel(), device=flat.device)[: 1 << 24]]
    lo, hi = torch.quantile(flat, 0.001), torch.quantile(flat, 0.999)
    if float(hi - lo) <= 1e-12:  # a flat batch: nothing to rescale
        return x.clone(), None
    if mode == "batch":
        return ((x - lo) / (hi - lo)).clamp(0.0, 1.0), (lo, hi - lo)
    f = x.flatten(1)
    mn, mx = f.min(1, keepdim=True).values, f.max(1, keepdim=True).values
    span = mx - mn
    rec = torch.where(span > 1e-12, (f - mn) / span.clamp_min(1e-12), f).view_as(x)
    return rec, (lo, hi - lo)


def _fix_gauge(x: torch.Tensor, clone: nn.Module, mode: str) -> tuple[torch.Tensor, nn.Module]:
    rec, gauge = rescale(x, mode)
    if gauge is not None:
        with torch.no_grad():
            _fold_affine(clone, *gauge)
    return rec, clone


def _fold_affine(clone: nn.Module, lo: torch.Tensor, scale: torch.Tensor) -> bool:
    """Make the clone take x' = (x − lo)/scale and give what it gave for x (first layer linear)."""
    first = next(iter(clone.children()), None) if isinstance(clone, nn.Sequential) else None
    lin = getattr(first, "linear", first)  # models.FlattenLinear wraps an nn.Linear
    if isinstance(lin, nn.Conv2d):
        dims = (1, 2, 3)
    elif isinstance(lin, nn.Linear):
        dims = (1,)
    else:
        return False
    if lin.bias is not None:
        lin.bias.add_(lo * lin.weight.sum(dim=dims))
    lin.weight.mul_(scale)
    return True
