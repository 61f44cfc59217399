"""FSHA's server-side networks, sized from the client's activation shape so any split depth works.

- pilot f̃ ("same": a fresh copy of the client architecture, which the arena's threat model grants;
  "paper": the authors' pilot, strided 3×3 convolutions *without activations* down to the
  activation's spatial size, then a 3×3 convolution to its channel count; a linear map for flat
  activations).
- decoder f̃⁻¹: transposed convolutions (×2 each, up to 256→128→64 channels as in the authors'
  code) from the activation's spatial size up to about the input's, one last (transposed)
  convolution whose kernel spans the remaining size difference (e.g. 32→28: a 5×5 valid
  convolution), then a sigmoid (pixels in [0,1]; the authors' tanh on [−1,1] is the same map up
  to an affine change of scale). Flat activations go through a linear layer first.
- discriminator D (WGAN critic, no normalisation layers, as the gradient penalty requires):
  strided convolutions down to ≤4×4 (32→256 channels), one residual block, a linear output;
  an MLP for flat activations.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

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


def _fit(ch: int, out: int, have: tuple[int, int], want: tuple[int, int]) -> list[nn.Module]:
    """A last layer from ``have`` to exactly ``want`` pixels: a 'valid' (transposed) convolution whose
    kernel spans the size difference, or a 3×3 convolution when the sizes already agree."""
    (h, w), (H, W) = have, want
    if (h, w) == (H, W):
        return [nn.Conv2d(ch, out, 3, padding=1)]
    if h <= H and w <= W:
        return [nn.ConvTranspose2d(ch, out, (H - h + 1, W - w + 1))]
    if h >= H and w >= W:
        return [nn.Conv2d(ch, out, (h - H + 1, w - W + 1))]
    return [Resize((H, W)), nn.Conv2d(ch, out, 3, padding=1)]


def decoder(act_shape: Shape, input_shape: Shape) -> nn.Module:
    c, h, w = input_shape
    layers: list[nn.Module] = []
    if len(act_shape) != 3:  # flat activation: a linear layer to a small feature map first
        ah, aw = math.ceil(h / 4), math.ceil(w / 4)
        layers += [nn.Flatten(), nn.Linear(math.prod(act_shape), 64 * ah * aw), nn.ReLU(), Unflatten((64, ah, aw))]
        ch = 64
    else:
        ch, ah, aw = act_shape
    n_up = max(0, round(math.log2(max(h, w) / max(ah, aw))))
    for i in range(n_up):
        nxt = min(64 * 2 ** (n_up - 1 - i), 256)
        layers += [nn.ConvTranspose2d(ch, nxt, 3, stride=2, padding=1, output_padding=1), nn.ReLU()]
        ch, ah, aw = nxt, 2 * ah, 2 * aw
    if n_up == 0:
        layers += [nn.Conv2d(ch, 64, 3, padding=1), nn.ReLU()]
        ch = 64
    return nn.Sequential(*layers, *_fit(ch, c, (ah, aw), (h, w)), nn.Sigmoid())


def discriminator(act_shape: Shape) -> nn.Module:
    if len(act_shape) != 3:
        d = math.prod(act_shape)
        return nn.Sequential(nn.Flatten(), nn.Linear(d, 256), nn.LeakyReLU(0.2), nn.Linear(256, 256),
                             nn.LeakyReLU(0.2), nn.Linear(256, 1))
    ch, ah, aw = act_shape
    side, c = max(ah, aw), min(256, max(32, 2 * ch))  # narrow on large (shallow) maps: CPU cost
    layers: list[nn.Module] = [nn.Conv2d(ch, c, 3, stride=2 if min(ah, aw) >= 4 else 1, padding=1)]
    side = math.ceil(side / 2) if min(ah, aw) >= 4 else side
    while side > 4:
        layers += [nn.ReLU(), nn.Conv2d(c, min(2 * c, 256), 3, stride=2, padding=1)]
        side, c = math.ceil(side / 2), min(2 * c, 256)
    layers += [_Res(c), nn.ReLU(), nn.Flatten()]
    with torch.no_grad():
        n = nn.Sequential(*layers)(torch.zeros(1, *act_shape)).shape[1]
    return nn.Sequential(*layers, nn.Linear(n, 1))


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     gen: torch.Generator) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): mean over interpolates of (‖∇D‖₂ − 1)²."""
    n = min(len(real), len(fake))
    real, fake = real[:n], fake[:n]
    eps = torch.rand((n,) + (1,) * (real.dim() - 1), generator=gen, device="cpu").to(real.device)
    mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (g,) = torch.autograd.grad(critic(mix).sum(), mix, create_graph=True)
    return ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()
