"""Cost accounting: multiply-accumulate counts and wall-clock timing of a module."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


def flops_per_sample(module: nn.Module, in_shape: tuple[int, ...]) -> int:
    """Forward FLOPs (2 × multiply-accumulates) of conv and linear layers for one sample."""
    total = 0

    def conv_hook(m: nn.Conv2d, inp, out) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += 2 * k * out[0].numel()

    def linear_hook(m: nn.Linear, inp, out) -> None:
        nonlocal total
        total += 2 * m.in_features * m.out_features

    handles = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        p = next(module.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        with torch.no_grad():
            module(torch.zeros(1, *in_shape, device=device))
    finally:
        for h in handles:
            h.remove()
    return total


class Stopwatch:
    """Accumulates seconds per named party ("client", "server") across a training run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def time(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
