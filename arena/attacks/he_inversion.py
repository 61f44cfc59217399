"""He et al.'s white-box and black-box model inversion (the query-free attack is in he_queryfree.py).

Paper: Z. He, T. Zhang, R. B. Lee, "Model inversion attacks against collaborative inference",
ACSAC 2019 (reference values in ALGORITHMS.md). Targets are the smashed data the server observed
in a transcript window; the paper's targets are inference-time inputs, ours are training inputs.

Threat models
- ``he-whitebox`` (SMASHED + CLIENT_WEIGHTS): the server holds a copy of the trained client part
  and solves a regularised maximum-likelihood problem per target,
  ``min_x̂ mean((f1(x̂) − f1(x))²) + λ_TV·TV(x̂)``, TV = mean squared neighbour differences (β = 2),
  Adam from a constant image, x̂ projected onto [0,1] after every step. All targets are optimised
  as one batch by one optimiser (the loss is a sum of per-target losses, so targets do not interact).
  It is the upper bound of what the activations reveal.
- ``he-blackbox`` (SMASHED + QUERY, plus the query set's own capability): the server queries the
  client part on a query set X, trains an inverse network g with MSE(g(f1(x)), x), and applies g to
  the observed smashed data. Query sets (``query_set``):
    * ``training-set``: He et al.'s "same set" — the attacker knows the model's training set. In
      split learning that set is the client's private data, so this needs TRAIN_DATA, a threat-model
      extra that hands over the private training samples *minus every sample observed in the
      transcript* (He et al.'s targets are likewise not in the attacker's set).
    * ``same-distribution``: the auxiliary set (AUX_DATA), disjoint from the private set.
    * ``random-noise``: uniform noise in [0,1] (the paper says Gaussian noise; images live in [0,1]).
  The inverse network is 1–3 transposed convolutions whose shape is derived from the activation
  shape, so it works at any split depth (a linear layer first when the activations are flat).
  Query access returns the undefended client part's output (see view.build_view).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..records import AttackOutput, Capability
from ..protocol.view import ServerView
from .unsplit_solver import leaky_relu_gradients
from ..params import check_choice, check_positive_float, check_positive_int
from .base import Attack, register_attack

WINDOWS = ("before", "after")


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Per-image squared-difference TV (β = 2): mean over height and width differences, shape (N,)."""
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).pow(2).flatten(1).mean(1)
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).flatten(1).mean(1)
    return dh + dw


def invert(f1: nn.Module, targets: torch.Tensor, input_shape: tuple[int, ...], *, iterations: int, lr: float,
           lambda_tv: float, init: float = 0.5, chunk: int = 512, progress=None,
           relative: bool = False, relu_slope: float = 0.0, masked: bool = False) -> torch.Tensor:
    """Regularised MLE (He et al. Alg. 1), batched: one Adam over all targets of a chunk.

    ``relative``: the fit term is divided by the targets' mean square, so ``lambda_tv`` weighs the
    prior against the fit whatever the activations' scale (a client that shrinks its activations, as
    NoPeek's does to norms ~1.7 from ~20, otherwise leaves only the TV term: a flat grey image).
    ``relu_slope`` > 0: the client's ReLUs pass that share of the gradient below zero (values
    unchanged, see unsplit_solver.leaky_relu_gradients): a client whose units are off for the initial
    grey image (NoPeek's) otherwise gives a zero gradient and the image never moves.
    ``masked``: fit only the coordinates that arrived non-zero, against the client's output times a
    per-target scale fitted with the image (relative, as above): the attacker who knows `dropout` (a
    dropped coordinate arrives as 0 and says nothing; the survivors are scaled by 1/(1 − p)). Zeros
    the client's own ReLUs produced are left out too: undefended it is a little weaker."""
    f1.eval()
    for p in f1.parameters():
        p.requires_grad_(False)
    out = []
    chunks = targets.split(chunk)
    with leaky_relu_gradients(f1, relu_slope):
        for k, a in enumerate(chunks):
            out.append(_invert_chunk(f1, a, input_shape, iterations, lr, lambda_tv, init, relative, progress,
                                     k, len(chunks), masked))
    return torch.cat(out)


def _invert_chunk(f1: nn.Module, a: torch.Tensor, input_shape: tuple[int, ...], iterations: int, lr: float,
                  lambda_tv: float, init: float, relative: bool, progress, k: int, n_chunks: int,
                  masked: bool = False) -> torch.Tensor:
    x = torch.full((len(a), *input_shape), float(init), device=a.device, requires_grad=True)
    keep = (a != 0).to(a.dtype).flatten(1) if masked else None
    scale = torch.ones(len(a), 1, device=a.device, requires_grad=True)  # masked: the survivors' 1/(1 - p)
    opt = torch.optim.Adam([x, scale] if masked else [x], lr=lr)
    if keep is not None:
        energy = (a.flatten(1).pow(2) * keep).sum() / keep.sum().clamp_min(1)
    else:
        energy = a.pow(2).mean().clamp_min(1e-12) if relative else 1.0
    for it in range(iterations):
        opt.zero_grad(set_to_none=True)
        if keep is None:
            fit = (f1(x) - a).pow(2).flatten(1).mean(1) / energy
        else:
            err = (scale * f1(x).flatten(1) - a.flatten(1)).pow(2) * keep
            fit = err.sum(1) / keep.sum(1).clamp_min(1) / energy
        loss = (fit + lambda_tv * total_variation(x)).sum() if lambda_tv else fit.sum()
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(0.0, 1.0)
        if progress is not None and it % 50 == 0:
            progress(k * iterations + it, n_chunks * iterations)
    return x.detach()


def inverse_net(act_shape: tuple[int, ...], input_shape: tuple[int, ...], hidden: int = 32) -> nn.Sequential:
    """A decoder from activations of ``act_shape`` to images of ``input_shape``: at most 3 transposed
    convolutions (stride-2 ones while the image is at least twice as large, then one that grows the
    map to the exact size), a linear layer first for flat activations, a [0,1] clip last."""
    c0, height, width = input_shape
    layers: list[nn.Module] = []
    if len(act_shape) == 1:  # flat activations (a linear layer in the client): project to a small map
        h, w = math.ceil(height / 4), math.ceil(width / 4)
        layers += [nn.Linear(act_shape[0], hidden * h * w), nn.ReLU(), nn.Unflatten(1, (hidden, h, w))]
        ch = hidden
    elif len(act_shape) == 3:
        ch, h, w = act_shape
    else:
        raise ValueError(f"he-blackbox: cannot build an inverse network for activations of shape {act_shape}")
    n_up = 0
    while n_up < 2 and 2 * h <= height and 2 * w <= width:
        layers += [nn.ConvTranspose2d(ch, hidden, 4, stride=2, padding=1), nn.ReLU()]
        ch, h, w, n_up = hidden, 2 * h, 2 * w, n_up + 1
    if n_up == 0:  # no upsampling needed: one hidden transposed convolution that keeps the size
        layers += [nn.ConvTranspose2d(ch, hidden, 3, padding=1), nn.ReLU()]
        ch = hidden
    kh, kw = height - h + 1, width - w + 1
    if kh >= 1 and kw >= 1:
        layers.append(nn.ConvTranspose2d(ch, c0, (kh, kw)))
    else:  # the map is larger than the image: shrink it
        layers += [nn.Upsample(size=(height, width), mode="bilinear", align_corners=False),
                   nn.Conv2d(ch, c0, 3, padding=1)]
    # clip to the pixel range: unlike a sigmoid it reaches exact 0/1 (MNIST's background), which
    # measured +10 dB at conv1 and +2 dB at ReLU2 on MNIST
    layers.append(nn.Hardtanh(0.0, 1.0))
    return nn.Sequential(*layers)


def seeded(generator: torch.Generator) -> int:
    """A seed for the global stream (module initialisation) derived from the cell's generator."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))


def train_steps(loss_fn, params, n: int, *, epochs: int, batch_size: int, lr: float, seed: int, progress=None) -> None:
    """Minibatch Adam over ``n`` samples for ``epochs``; ``loss_fn(idx)`` returns the batch loss."""
    opt = torch.optim.Adam(list(params), lr=lr)
    g = torch.Generator().manual_seed(seed)
    per_epoch = math.ceil(n / batch_size)
    for e in range(epochs):
        for b, idx in enumerate(torch.randperm(n, generator=g).split(batch_size)):
            opt.zero_grad(set_to_none=True)
            loss_fn(idx).backward()
            opt.step()
            if progress is not None and b % 20 == 0:
                progress(e * per_epoch + b, epochs * per_epoch)


def report(view: ServerView):
    return getattr(view, "report_progress", None)


@register_attack
class HeWhitebox(Attack):
    name = "he-whitebox"
    kind = "inversion"
    requires = frozenset({Capability.SMASHED, Capability.CLIENT_WEIGHTS})
    paper = "He, Zhang, Lee. Model inversion attacks against collaborative inference. ACSAC 2019 (white-box rMLE)"

    def __init__(self, iterations: int = 1000, lr: float = 1e-2, lambda_tv: float = 0.01, init: float = 0.5,
                 window: str = "after", fit: str = "absolute", relu_slope: float = 0.0, **rest: Any) -> None:
        super().__init__(**rest)
        self.fit = check_choice("fit", fit, ("absolute", "relative", "masked"))  # see `invert`
        if self.fit == "masked":  # the attacker who knows dropout (an instance's adapts_to; cells record it)
            self.adapts_to = ("dropout",)
        self.relu_slope = check_positive_float("relu_slope", relu_slope, allow_zero=True)  # see `invert`
        self.iterations = check_positive_int("iterations", iterations)
        self.lr = check_positive_float("lr", lr)
        self.lambda_tv = check_positive_float("lambda_tv", lambda_tv, allow_zero=True)
        self.init = check_positive_float("init", init, allow_zero=True)
        if self.init > 1:
            raise ValueError(f"init must lie in [0, 1] (a constant image), got {init!r}")
        self.window = check_choice("window", window, WINDOWS)

    def params(self) -> dict[str, Any]:
        return {"iterations": self.iterations, "lr": self.lr, "lambda_tv": self.lambda_tv, "init": self.init,
                "window": self.window, "fit": self.fit, "relu_slope": self.relu_slope}

    def run(self, view: ServerView, generator: torch.Generator) -> AttackOutput:
        ids, acts = view.stacked("smashed", self.window)
        if view.client_weights is None:
            raise RuntimeError("he-whitebox needs the client weights; the view did not grant them")
        f1 = view.client_weights.to(view.device)
        rec = invert(f1, acts.to(view.device), view.input_shape, iterations=self.iterations, lr=self.lr,
                     lambda_tv=self.lambda_tv, init=self.init, progress=report(view), relative=self.fit != "absolute",
                     relu_slope=self.relu_slope, masked=self.fit == "masked")
        return AttackOutput(ids=ids, reconstructions=rec.cpu())


@register_attack
class HeBlackbox(Attack):
    name = "he-blackbox"
    kind = "inversion"
    BASE = frozenset({Capability.SMASHED, Capability.QUERY})
    requires = BASE | {Capability.AUX_DATA}  # the default query set's; each instance sets its own
    paper = "He, Zhang, Lee. Model inversion attacks against collaborative inference. ACSAC 2019 (inverse network)"
    QUERY_SETS = {"training-set": Capability.TRAIN_DATA, "same-distribution": Capability.AUX_DATA,
                  "random-noise": None}

    def __init__(self, query_set: str = "same-distribution", n_queries: int = 2000, epochs: int = 20,
                 lr: float = 1e-3, batch_size: int = 64, hidden: int = 32, window: str = "after",
                 **rest: Any) -> None:
        super().__init__(**rest)
        self.query_set = check_choice("query_set", query_set, tuple(self.QUERY_SETS))
        self.n_queries = check_positive_int("n_queries", n_queries)
        self.epochs = check_positive_int("epochs", epochs)
        self.lr = check_positive_float("lr", lr)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.hidden = check_positive_int("hidden", hidden)
        self.window = check_choice("window", window, WINDOWS)
        extra = self.QUERY_SETS[self.query_set]
        self.requires = self.BASE | ({extra} if extra is not None else set())

    def params(self) -> dict[str, Any]:
        return {"query_set": self.query_set, "n_queries": self.n_queries, "epochs": self.epochs, "lr": self.lr,
                "batch_size": self.batch_size, "hidden": self.hidden, "window": self.window}

    def _query_inputs(self, view: ServerView, g: torch.Generator) -> torch.Tensor:
        if self.query_set == "random-noise":
            return torch.rand((self.n_queries, *view.input_shape), generator=g)
        pool = view.train_data if self.query_set == "training-set" else view.aux
        if pool is None:
            raise RuntimeError(f"he-blackbox({self.query_set}) got no query data from the view")
        x = pool[0]
        if len(x) > self.n_queries:
            x = x[torch.randperm(len(x), generator=g)[: self.n_queries]]
        return x

    def run(self, view: ServerView, generator: torch.Generator) -> AttackOutput:
        ids, acts = view.stacked("smashed", self.window)
        if view.query is None:
            raise RuntimeError("he-blackbox needs query access; the view did not grant it")
        seed = seeded(generator)
        x = self._query_inputs(view, torch.Generator().manual_seed(seed)).float()
        dev = view.device
        a = torch.cat([view.query(c.to(dev)) for c in x.split(1000)]).detach()
        x = x.to(dev)
        if tuple(a.shape[1:]) != tuple(acts.shape[1:]):
            raise RuntimeError(f"queried activations {tuple(a.shape[1:])} differ from observed {tuple(acts.shape[1:])}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            g = inverse_net(tuple(acts.shape[1:]), view.input_shape, self.hidden).to(dev)
        train_steps(lambda idx: (g(a[idx]) - x[idx]).pow(2).mean(), g.parameters(), len(x), epochs=self.epochs,
                    batch_size=self.batch_size, lr=self.lr, seed=seed, progress=report(view))
        g.eval()
        with torch.no_grad():
            rec = torch.cat([g(c.to(dev)) for c in acts.split(1000)])
        return AttackOutput(ids=ids, reconstructions=rec.cpu(), extra={"n_queries": float(len(x))})
