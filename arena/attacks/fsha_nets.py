"""FSHA's server-side networks, sized from the client's activation shape so any split depth works.

- pilot f̃ ("same": a fresh copy of the client architecture, which the arena's threat model grants;
  "paper": the authors' pilot (architectures.py), strided 3×3 convolutions *without activations*
  down to the activation's spatial size, then a 3×3 convolution to its channel count; a linear map
  for flat activations).
- decoder f̃⁻¹: as the authors', transposed convolutions (×2 each, 256→128→…) whose last layer
  outputs the image channels, then a centre crop (32→28) or a transposed convolution spanning a
  remaining size difference, and the authors' tanh written on [0,1] pixels, (tanh+1)/2. Linear
  like the authors' with the "paper" pilot; ReLUs between layers with "same" (on digits at depth 1,
  95 steps, MSE 0.021 with them vs 0.094 without when the extra layer of a shallow decoder was 64
  wide; at its default width now, 16 there: MSE 0.043 vs 0.040, SSIM 0.68 vs 0.58). Flat activations
  go through a linear layer first.
- discriminator D (WGAN critic, no normalisation layers, as the gradient penalty requires):
  "fast" (arena's default): strided convolutions down to ≤4×4 (a 4×4 map goes to 2×2), one width
  throughout (2× the activation's channels, 32 to 256), ``blocks`` residual blocks (default 1), a
  linear output; an MLP for flat activations. "paper": the authors' critic, a convolution to 256
  channels at the activation's resolution, ``blocks`` residual blocks (the paper's 6: ~125M
  multiply-adds per sample at 4×4, twice the client's, ~1.1 s per step on one CPU core, measured
  against 0.1 s for "fast" at the time), a stride-2 convolution, linear.
- ``glorot_init`` (from arena.models): Keras' default initialisation, as the authors' TensorFlow networks start.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

from ..models import glorot_init  # noqa: F401  (re-exported: the attack initialises its networks with it)

Shape = tuple[int, ...]


def activation_shape(client_arch: Callable[[], nn.Sequential], input_shape: Shape) -> Shape:
    """The shape of one sample's smashed data (built from a fresh client part, no trained weights)."""
    client = client_arch()
    was = client.training
    client.eval()
    with torch.no_grad():
        a = client(torch.zeros(2, *input_shape))
    client.train(was)
    return tuple(a.shape[1:])


class Resize(nn.Module):
    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)


class Unflatten(nn.Module):
    def __init__(self, shape: Shape) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), *self.shape)


class _Res(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(ch, ch, 3, padding=1), nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c2(F.relu(self.c1(F.relu(x))))


def _halvings(src: int, dst: int) -> int:
    """How many stride-2 'same' convolutions take a side of ``src`` pixels down to at most ``dst``."""
    n = 0
    while src > dst:
        src, n = math.ceil(src / 2), n + 1
    return n


def paper_pilot(input_shape: Shape, act_shape: Shape) -> nn.Module:
    """The authors' pilot: linear strided convolutions to the activation's shape."""
    c, h, w = input_shape
    if len(act_shape) != 3:
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, math.prod(act_shape)), Unflatten(act_shape))
    ch_out, ah, aw = act_shape
    layers: list[nn.Module] = []
    ch = c
    for i in range(_halvings(max(h, w), max(ah, aw))):
        nxt = min(64 * 2 ** i, 256)
        layers.append(nn.Conv2d(ch, nxt, 3, stride=2, padding=1))
        ch = nxt
    layers += [Resize((ah, aw)), nn.Conv2d(ch, ch_out, 3, padding=1)]
    return nn.Sequential(*layers)


class Signed(nn.Module):
    """Pixels on [0,1] to [-1,1] (2x − 1), the range the authors' networks see."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x - 1


class Crop(nn.Module):
    """Centre crop to ``size`` (the decoder overshoots by up to a factor √2 when doubling)."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (H, W), (h, w) = self.size, x.shape[-2:]
        top, left = (h - H) // 2, (w - W) // 2
        return x[..., top:top + H, left:left + W]


class HalfTanh(nn.Module):
    """(tanh(z) + 1) / 2: the authors' tanh output on [−1,1], written on arena's [0,1] pixels."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(z) + 1) / 2


def _fit(ch: int, out: int, have: tuple[int, int], want: tuple[int, int]) -> list[nn.Module]:
    """Layers from ``have`` to exactly ``want`` pixels: a centre crop when larger, a transposed
    convolution whose kernel spans the difference when smaller, nothing when equal."""
    (h, w), (H, W) = have, want
    if (h, w) == (H, W):
        return [] if ch == out else [nn.Conv2d(ch, out, 3, padding=1)]
    if h >= H and w >= W:
        return [Crop((H, W))] + ([] if ch == out else [nn.Conv2d(ch, out, 3, padding=1)])
    if h <= H and w <= W:
        return [nn.ConvTranspose2d(ch, out, (H - h + 1, W - w + 1))]
    return [Resize((H, W)), nn.Conv2d(ch, out, 3, padding=1)]


def decoder(act_shape: Shape, input_shape: Shape, relu: bool = True, width: int | None = None) -> nn.Module:
    """Transposed convolutions ×2 up to about the input size, then a half tanh. As in the authors'
    decoder the last one outputs the image channels when it reaches the input size (a centre crop
    takes off the rest): a wide last layer at full size learned ~2× slower at lr 1e-5. ``relu``:
    activations between layers (the authors' decoder has none; ours, for the arena's fast regime).
    ``width``: the channels of the extra layer a shallow decoder (fewer than two doublings) gets at
    the activation's resolution, its costliest layer (None: twice the activation's channels, 16 to 64;
    it was 64 whatever the activation)."""
    c, h, w = input_shape
    act = [nn.ReLU()] if relu else []
    layers: list[nn.Module] = []
    if len(act_shape) != 3:  # flat activation: a linear layer to a small feature map first
        ah, aw = math.ceil(h / 4), math.ceil(w / 4)
        layers += [nn.Flatten(), nn.Linear(math.prod(act_shape), 64 * ah * aw), *act, Unflatten((64, ah, aw))]
        ch = 64
    else:
        ch, ah, aw = act_shape
    width = min(64, max(16, 2 * ch)) if width is None else width
    _check_width("decoder width", width)
    n_up = max(0, round(math.log2(max(h, w) / max(ah, aw))))
    reaches = ah * 2 ** n_up >= h and aw * 2 ** n_up >= w
    if n_up < 2:  # shallow decoders get one more layer of capacity
        layers += [nn.Conv2d(ch, width, 3, padding=1), *act]
        ch = width
    for i in range(n_up):
        last = i == n_up - 1
        nxt = c if last and reaches else min(64 * 2 ** (n_up - 1 - i), 256)
        layers.append(nn.ConvTranspose2d(ch, nxt, 3, stride=2, padding=1, output_padding=1))
        layers += [] if last and reaches else act
        ch, ah, aw = nxt, 2 * ah, 2 * aw
    return nn.Sequential(*layers, *_fit(ch, c, (ah, aw), (h, w)), HalfTanh())


def discriminator(act_shape: Shape, layout: str = "fast", blocks: int = 1, width: int | None = None) -> nn.Module:
    """WGAN critic on smashed data. ``layout="fast"``: arena's (strided convolutions to ≤4×4, then
    ``blocks`` residual blocks). ``layout="paper"``: the authors' (architectures.py): a 3×3 convolution
    to 256 channels at the activation's own resolution, ``blocks`` 256-channel residual blocks there
    (the paper uses 6), a stride-2 convolution, a linear output. Flat activations (a split after a
    linear layer) have no spatial layout: both layouts then give the same MLP critic.
    ``width``: the widest layer. "fast" starts at c = min(width, max(32, 2·channels)) and doubles c
    per halving up to ``width``; None: ``width`` = that c, one width throughout (twice the
    activation's channels, 32 to 256). ``width=256`` is arena's previous critic: at LeNet's depth 1
    (8×24×24) 32→64→128 channels and a 128-wide residual block, 4.3M multiply-adds per sample vs
    0.8M at the default 32. "paper": its convolutions' channels (None: the authors' 256); the MLP:
    its hidden units (None: 256)."""
    if layout not in ("fast", "paper"):
        raise ValueError(f"critic layout must be 'fast' or 'paper', got {layout!r}")
    if not isinstance(blocks, int) or isinstance(blocks, bool) or blocks < 1:
        raise ValueError(f"critic blocks must be an integer >= 1, got {blocks!r}")
    if width is not None:
        _check_width("critic width", width)
    if len(act_shape) == 3 and layout == "paper":
        width = width or 256
        paper = [nn.Conv2d(act_shape[0], width, 3, padding=1), *(_Res(width) for _ in range(blocks)),
                 nn.Conv2d(width, width, 3, stride=2, padding=1), nn.Flatten()]
        with torch.no_grad():
            n = nn.Sequential(*paper)(torch.zeros(1, *act_shape)).shape[1]
        return nn.Sequential(*paper, nn.Linear(n, 1))
    if len(act_shape) != 3:
        d, width = math.prod(act_shape), width or 256
        return nn.Sequential(nn.Flatten(), nn.Linear(d, width), nn.LeakyReLU(0.2), nn.Linear(width, width),
                             nn.LeakyReLU(0.2), nn.Linear(width, 1))
    ch, ah, aw = act_shape
    c = min(256, max(32, 2 * ch))  # narrow on large (shallow) maps: CPU cost
    c, width = (c, c) if width is None else (min(width, c), width)
    layers: list[nn.Module] = [nn.Conv2d(ch, c, 3, stride=2 if min(ah, aw) >= 4 else 1, padding=1)]
    side = math.ceil(max(ah, aw) / 2) if min(ah, aw) >= 4 else max(ah, aw)
    while side > 4:
        layers += [nn.ReLU(), nn.Conv2d(c, min(2 * c, width), 3, stride=2, padding=1)]
        side, c = math.ceil(side / 2), min(2 * c, width)
    layers += [*(_Res(c) for _ in range(blocks)), nn.ReLU(), nn.Flatten()]
    with torch.no_grad():
        n = nn.Sequential(*layers)(torch.zeros(1, *act_shape)).shape[1]
    return nn.Sequential(*layers, nn.Linear(n, 1))


def _check_width(name: str, width: object) -> None:
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {width!r}")


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     gen: torch.Generator, norm: str = "sample", samples: int | None = None) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): mean over interpolates of (‖∇D‖₂ − 1)². ``norm="sample"``:
    the norm of each sample's whole gradient; ``"channel"``: as the authors' code (a sum over
    axes [1,2] of NHWC tensors), the norm over the spatial positions of each channel, averaged over
    samples and channels (so ‖∇D‖₂ is pulled towards √channels rather than 1). Flat activations have
    no spatial axes: ``"channel"`` then falls back to the per-sample norm. ``samples``: interpolate
    only the first ``samples`` pairs (None: every pair): the same expectation, estimated from fewer
    samples (the batches come shuffled, so the first ones are a random subset)."""
    n = min(len(real), len(fake), len(real) if samples is None else samples)
    real, fake = real[:n], fake[:n]
    eps = torch.rand((n,) + (1,) * (real.dim() - 1), generator=gen, device="cpu").to(real.device)
    mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (g,) = torch.autograd.grad(critic(mix).sum(), mix, create_graph=True)
    if norm == "channel" and g.dim() == 4:
        return ((g.flatten(2).norm(dim=2) - 1) ** 2).mean()
    return ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()
