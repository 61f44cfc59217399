"""The client→server wire. Plain by default; an encrypting channel (defenses/he.py) replaces it.

A channel decides what the server observes of the smashed data (`observed`), how the server's
part is evaluated on what it received (`server_forward`, so an HE channel can evaluate on
ciphertext), and how many bytes one sample costs on the wire (activations up, gradient down).
"""
from __future__ import annotations

import torch
from torch import nn


class Channel:
    name = "abstract"

    def observed(self, smashed: torch.Tensor) -> torch.Tensor | None:
        """What the server can read of the smashed data (None: nothing in plaintext)."""
        raise NotImplementedError

    def server_forward(self, smashed: torch.Tensor, server: nn.Module) -> torch.Tensor:
        raise NotImplementedError

    def bytes_per_sample(self, activation: torch.Tensor) -> int:
        raise NotImplementedError

    def observed_output(self, out: torch.Tensor) -> torch.Tensor | None:
        """What the server knows of its own output (None: it only ever held it encrypted)."""
        return out

    def observed_server_grads(self, server: nn.Module) -> dict[str, torch.Tensor] | None:
        """Parameter gradients the server receives as a message (None: it computes them itself)."""
        return None


class PlainChannel(Channel):
    name = "plain"

    def observed(self, smashed: torch.Tensor) -> torch.Tensor:
        return smashed

    def server_forward(self, smashed: torch.Tensor, server: nn.Module) -> torch.Tensor:
        return server(smashed)

    def bytes_per_sample(self, activation: torch.Tensor) -> int:
        # float32 activations up and the float32 gradient of the same shape down
        return 2 * activation.numel() * activation.element_size()
