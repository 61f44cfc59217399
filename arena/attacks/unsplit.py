"""UnSplit model inversion and model stealing.

Paper: E. Erdogan, A. Küpçü, A. E. Çiçek, "UnSplit: Data-Oblivious Model Inversion, Model Stealing,
and Label Inference Attacks Against Split Learning", WPES 2022 (arXiv:2108.09033); reference values
in ALGORITHMS.md. The label-inference attack of the same paper is in unsplit_label.py.

Threat model: an honest-but-curious server in the vanilla setup (Fig. 1a). It sees the smashed data
the client sends and knows the client part's architecture, never its weights; it needs no auxiliary
data and no query access. Targets are the private training samples whose smashed data the server
observed in a transcript window (``window="before"``: the first recorded steps, client at its
initialisation; ``"after"``: the last steps, trained client). The paper's targets are the first test
image of each class; ours are the ones the protocol actually exposes.

Algorithm (paper Alg. 1 / authors' code): a random clone f̃ of the client part and input estimates x̂
(constant 0.5). Each round: ``input_steps`` Adam steps on x̂ minimising
``MSE(f̃(x̂), f(x)) + λ_TV·TV(x̂) + λ_2·mean(x̂²)`` (TV = mean squared neighbour differences along H
and W, as in the authors' code), then ``clone_steps`` Adam steps on f̃'s parameters minimising the MSE.
Adam lr 1e-3 with amsgrad; λ_TV 0.1 for depths ≤ 3 and 1 deeper (paper §5.1); λ_2 = 1.

Our choices, each a parameter:
- Batched: all targets are one tensor with one Adam (element-wise, so each x̂ gets exactly the update
  it would get alone: the loss is the mean of per-target losses) and *one shared clone* fitted to
  all targets jointly — the threat model has one client model. The authors attack one image at a
  time (their clone carries over from image to image); ``benchmarks/unsplit_paper.py`` times both.
- Box: x̂ is projected onto the pixel range [0,1] after every step (the authors leave it free).
- Gauge (``rescale``): smashed data fix x̂ only up to a global affine map — the clone's first
  layer absorbs any scale and offset (x̂ → a·x̂ + b, W → W/a). The L2 prior then drifts x̂ towards
  dark, low-contrast images round after round; that, not a failure to recover the shapes, is why the
  authors' reconstructions are dim (ALGORITHMS.md). At the end we fix the gauge with the one thing
  the attacker knows about pixels, their range: ``"image"`` maps each x̂ to [0,1] by its min and max
  (the authors' own ``normalize``, which they apply to their CIFAR results), ``"batch"`` applies one
  map to all targets (its 0.1%/99.9% quantiles), ``"none"`` returns x̂ as optimised. For the image
  and batch modes the batch map is also folded into the clone's first layer (exact for a linear or
  unpadded conv first layer), so the clone expects real-range inputs, as the real client does.
- Dead units (``relu_slope``): a clone ReLU that is off on every target gets no gradient and never
  comes back, and its share of the smashed data is never fitted (measured: 3 of 3 seeds lost a
  depth-1 channel on Fashion-MNIST, clone accuracy 47–81%). Forward hooks give the clone's ReLUs a
  gradient of ``relu_slope`` below zero during the attack; forward values, hence the objective, are
  unchanged (``relu_slope=0``: plain gradients).
- Early stop: after each round the data loss (the clone-step MSE) is compared with its value
  ``patience`` rounds earlier; a relative improvement below ``tol`` ends the attack (``tol=0``: run
  all ``rounds``). One host sync per round, none inside the steps. On CPU the input steps run
  without oneDNN, whose input-gradient kernel for one-channel images is ~4× slower than ATen's.

Known limit: from depth 3 on (two conv layers in the client part) the joint problem has wrong basins
the clone's random start falls into — on Fashion-MNIST, 8 clone seeds at depth 3 gave MSE
0.074–0.171 and clone accuracy 10–69% after 15 rounds, with the data fit only loosely tracking the
quality (so restarts picked by fit did not help; neither did stronger TV, coarse-to-fine or smooth
starts). The cell's seed picks the start; report several seeds for deep splits.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..records import AttackOutput, Capability
from ..view import ServerView
from .base import Attack, check_choice, check_positive_float, check_positive_int, register_attack

WINDOWS = ("before", "after")
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
    tol: float = 1e-2
    patience: int = 5
    rescale: str = "image"
    relu_slope: float = 0.01


@dataclass
class InversionResult:
    raw: torch.Tensor  # x̂ as optimised (in [0,1], arbitrary gauge)
    reconstructions: torch.Tensor  # x̂ after the gauge fix of ``rescale``
    clone: nn.Module  # the stolen client part (gauge folded in for image/batch)
    rounds_run: int
    fit_loss: float  # final MSE between the clone's output on x̂ and the smashed data
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
def _leaky_relu_gradients(clone: nn.Module, slope: float):
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

    ``smashed`` (N×…) and ``clone`` must be on the same device. Calling this with one target at a time
    and the same clone reproduces the authors' per-image protocol.
    """
    t0 = time.perf_counter()
    target = smashed.detach()
    x = torch.full((len(target), *input_shape), float(x_init), device=target.device, requires_grad=True)
    params = [p for p in clone.parameters()]
    opt_x, opt_c = _adam([x], cfg.lr), (_adam(params, cfg.lr) if params else None)
    clone.train()
    with _leaky_relu_gradients(clone, cfg.relu_slope):
        rounds_run = _alternate(clone, x, target, params, opt_x, opt_c, cfg)
    with torch.no_grad():
        fit_loss = float(F.mse_loss(clone(x.detach()), target))
    raw = x.detach()
    rec, clone = _fix_gauge(raw, clone, cfg.rescale)
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


@register_attack
class UnSplit(Attack):
    name = "unsplit"
    kind = "inversion"  # it also returns a clone: the scorer adds clone_acc (model stealing)
    requires = frozenset({Capability.SMASHED})  # the architecture is always granted
    default_setup = "vanilla"
    paper = "UnSplit (Erdogan et al. 2022) Alg. 1: model inversion + stealing"

    PARAMS = ("rounds", "input_steps", "clone_steps", "lr", "lambda_tv", "lambda_l2", "window", "max_targets",
              "tol", "patience", "rescale", "relu_slope")

    def __init__(self, rounds: int = 50, input_steps: int = 100, clone_steps: int = 100, lr: float = 1e-3,
                 lambda_tv: float | None = None, lambda_l2: float = 1.0, window: str = "after",
                 max_targets: int | None = 64, tol: float = 1e-2, patience: int = 5, rescale: str = "image",
                 relu_slope: float = 0.01, **rest: Any) -> None:
        super().__init__(**rest)
        self.rounds = check_positive_int("rounds", rounds)
        self.input_steps = check_positive_int("input_steps", input_steps)
        self.clone_steps = check_positive_int("clone_steps", clone_steps, minimum=0)
        self.lr = check_positive_float("lr", lr)
        self.lambda_tv = None if lambda_tv is None else check_positive_float("lambda_tv", lambda_tv, allow_zero=True)
        self.lambda_l2 = check_positive_float("lambda_l2", lambda_l2, allow_zero=True)
        self.window = check_choice("window", window, WINDOWS)
        self.max_targets = None if max_targets is None else check_positive_int("max_targets", max_targets)
        self.tol = check_positive_float("tol", tol, allow_zero=True)
        self.patience = check_positive_int("patience", patience)
        self.rescale = check_choice("rescale", rescale, RESCALES)
        self.relu_slope = check_positive_float("relu_slope", relu_slope, allow_zero=True)

    def params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.PARAMS}

    def config(self, depth: int) -> InversionConfig:
        tv = default_lambda_tv(depth) if self.lambda_tv is None else self.lambda_tv
        return InversionConfig(self.rounds, self.input_steps, self.clone_steps, self.lr, tv, self.lambda_l2,
                               self.tol, self.patience, self.rescale, self.relu_slope)

    def targets(self, view: ServerView) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, smashed) of the targets: the first ``max_targets`` observed in the window."""
        ids, smashed = view.stacked("smashed", self.window)
        if self.max_targets is not None:
            ids, smashed = ids[: self.max_targets], smashed[: self.max_targets]
        return ids, smashed.float()

    @staticmethod
    def clone_from(view: ServerView, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the clone's random initialisation comes from the cell's seed
            return view.client_arch().to(view.device)

    def reconstruct(self, view: ServerView, generator: torch.Generator) -> tuple[torch.Tensor, InversionResult]:
        """Run the attack; returns the target ids and the full result (raw x̂ included)."""
        ids, smashed = self.targets(view)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        clone = self.clone_from(view, seed)
        return ids, invert(clone, smashed.to(view.device), view.input_shape, self.config(view.client_depth))

    def output(self, ids: torch.Tensor, res: InversionResult) -> AttackOutput:
        clone = res.clone.eval()
        for p in clone.parameters():
            p.requires_grad_(False)
        return AttackOutput(ids=ids, reconstructions=res.reconstructions.cpu(), clone=clone,
                            extra={"rounds_run": res.rounds_run, "fit_loss": res.fit_loss,
                                   "attack_images_per_s": len(ids) / max(res.seconds, 1e-9)})

    def run(self, view: ServerView, generator: torch.Generator) -> AttackOutput:
        return self.output(*self.reconstruct(view, generator))
