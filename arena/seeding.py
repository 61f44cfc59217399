"""One place for determinism: every random stream is derived from a cell's seed and named keys."""
from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive_seed(base: int, *keys: object) -> int:
    """A 63-bit seed from ``base`` and any keys (stable across processes and Python versions)."""
    h = hashlib.sha256(repr((int(base),) + tuple(str(k) for k in keys)).encode())
    return int.from_bytes(h.digest()[:8], "little") & ((1 << 63) - 1)


def torch_generator(base: int, *keys: object, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(base, *keys))
    return g


def numpy_rng(base: int, *keys: object) -> np.random.Generator:
    return np.random.default_rng(derive_seed(base, *keys))


def seed_everything(base: int, *keys: object) -> None:
    """Seed the global generators too (layer initialisation uses torch's global stream)."""
    s = derive_seed(base, *keys)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % (2**32))
