"""Image grids of reconstructions (true row above reconstructed row), saved beside the cells."""
from __future__ import annotations

import os
from pathlib import Path

import torch


def save_grid(path: Path, truth: torch.Tensor, recon: torch.Tensor, max_images: int = 10,
              title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(max_images, len(truth))
    fig, axes = plt.subplots(2, n, figsize=(1.2 * n, 2.7), squeeze=False)
    for row, imgs, label in ((0, truth, "true"), (1, recon, "reconstructed")):
        for i in range(n):
            ax = axes[row][i]
            img = imgs[i].detach().cpu().clamp(0, 1)
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img.permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=80, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path
