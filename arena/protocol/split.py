"""The only code that knows how to cut a layer list at a split depth.

Depth k (UnSplit's meaning): the client runs layers 0..k inclusive; depth 0 is He et al.'s
"conv1". In the label-protecting setups the label owner also keeps the last ``label_layers`` layers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class SplitDepthError(ValueError):
    """A split depth the model cannot take; the message names the valid range."""


@dataclass
class SplitModel:
    """client = layers[0..depth], server = the middle, tail = the label owner's last layers (maybe empty)."""

    client: nn.Sequential
    server: nn.Sequential
    tail: nn.Sequential
    depth: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.server(self.client(x)))

    def modules(self) -> list[nn.Module]:
        return [self.client, self.server, self.tail]

    def to(self, device: str | torch.device) -> "SplitModel":
        for m in self.modules():
            m.to(device)
        return self


def valid_depths(model: nn.Sequential, label_layers: int = 0) -> range:
    """Depths that leave the server (and the label owner's tail) at least one layer each."""
    return range(0, len(model) - 1 - label_layers)


def split(model: nn.Sequential, depth: int, label_layers: int = 0) -> SplitModel:
    """Cut ``model`` (shared, not copied) so that server(client(x)) is the full model."""
    if not isinstance(model, nn.Sequential):
        raise TypeError("split() needs an nn.Sequential layer list")
    if label_layers < 0:
        raise SplitDepthError(f"label_layers must be >= 0, got {label_layers}")
    ok = valid_depths(model, label_layers)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth not in ok:
        tail = f" with {label_layers} label-owner layer(s)" if label_layers else ""
        if len(ok) == 0:
            raise SplitDepthError(f"a {len(model)}-layer model cannot be split{tail}")
        raise SplitDepthError(
            f"split depth {depth!r} is impossible for this {len(model)}-layer model{tail}: "
            f"valid depths are {ok.start}..{ok.stop - 1} (the client runs layers 0..depth)"
        )
    layers = list(model)
    cut_tail = len(layers) - label_layers
    return SplitModel(
        client=nn.Sequential(*layers[: depth + 1]),
        server=nn.Sequential(*layers[depth + 1 : cut_tail]),
        tail=nn.Sequential(*layers[cut_tail:]),
        depth=depth,
    )
