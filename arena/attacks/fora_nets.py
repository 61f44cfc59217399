"""FORA's distribution-matching machinery: MK-MMD, a WGAN-GP critic for smashed data, its gradient penalty.

Paper: X. Xu, M. Yang, W. Yi, Z. Li, J. Wang, H. Hu, Y. Zhuang, Y. Liu, "A Stealthy and Robust Model
Inversion Attack against Split Learning" (FORA), CVPR 2024. The attack itself is in fora.py.

- ``mk_mmd``: the multiple-kernel maximum mean discrepancy of Long et al. (DAN, ICML 2015) as FORA
  uses it: 5 Gaussian kernels summed, kernel k has σ_k² = 2^k · (mean squared pairwise distance of
  the joint batch, not differentiated), k = −3…1, k(u, v) = exp(−‖u − v‖² / (2σ_k²)). The unbiased
  estimator (diagonals left out): it differs from the authors' (Transfer-Learning-Library's) by a
  constant, so it has the same gradients.
- ``critic``: a small convolutional critic (no normalisation layers, as WGAN-GP requires) for
  smashed data of shape (C, H, W), an MLP for flat smashed data. Its architecture is ours: the
  authors' is a CIFAR ResNet-style discriminator sized for 32×32 inputs.
- ``gradient_penalty``: Gulrajani et al.'s (2017) ``(‖∇D(x̂)‖ − 1)²`` on random interpolates of real
  and substitute smashed data; the interpolation weights come from the attack's generator.
"""
from __future__ import annotations

import torch
from torch import nn

KERNEL_POWERS = (-3, -2, -1, 0, 1)


def mk_mmd(x: torch.Tensor, y: torch.Tensor, powers: tuple[int, ...] = KERNEL_POWERS) -> torch.Tensor:
    """Unbiased MK-MMD² between two batches (rows = examples, any trailing shape), differentiable in both."""
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"mk_mmd needs at least 2 examples in each batch, got {len(x)} and {len(y)}")
    n, m = len(x), len(y)
    z = torch.cat([x.flatten(1), y.flatten(1)])
    sq = z.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * z @ z.T).clamp_min(0)
    base = d2.detach().mean().clamp_min(1e-12)
    k = sum(torch.exp(-d2 / (2 * (2.0 ** p) * base)) for p in powers)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    off = len(powers)  # each kernel is 1 on the diagonal
    return ((kxx.sum() - off * n) / (n * (n - 1)) + (kyy.sum() - off * m) / (m * (m - 1))
            - 2 * kxy.mean())


def critic(act_shape: tuple[int, ...], hidden: int = 64) -> nn.Sequential:
    """A WGAN critic for smashed data: stride-2 4×4 convolutions while the map is at least 8 wide
    (at most 3), LeakyReLU(0.2), then a linear layer to one score; flat smashed data: a 2-layer MLP."""
    if len(act_shape) == 1:
        return nn.Sequential(nn.Linear(act_shape[0], 4 * hidden), nn.LeakyReLU(0.2), nn.Linear(4 * hidden, 1))
    if len(act_shape) != 3:
        raise ValueError(f"fora: no critic for smashed data of shape {act_shape}")
    c, h, w = act_shape
    layers: list[nn.Module] = []
    ch, n = c, 0
    while n < 3 and min(h, w) >= 8:
        layers += [nn.Conv2d(ch, hidden * 2 ** n, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        ch, h, w, n = hidden * 2 ** n, h // 2, w // 2, n + 1
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(ch * h * w, 1))


def gradient_penalty(d: nn.Module, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mean of (‖∇_x̂ D(x̂)‖₂ − 1)² over x̂ = ε·real + (1 − ε)·fake, ε ~ U(0, 1) per example."""
    eps = torch.rand((len(real),) + (1,) * (real.dim() - 1), generator=generator).to(real.device)
    mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(d(mix).sum(), mix, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()
