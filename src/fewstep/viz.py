"""Writing samples: tensors plus a PNG grid (images) or scatter plot (2-D vectors)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from ._io import atomic_write

__all__ = ["image_grid", "save_samples"]


def image_grid(images: Tensor, ncol: int | None = None) -> Tensor:
    """Tile ``(N, C, H, W)`` images in [-1, 1] into one ``(H', W', C)`` array in [0, 1]."""
    n, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = torch.ones(c, nrow * (h + 1) + 1, ncol * (w + 1) + 1)
    x = ((images.float().clamp(-1, 1) + 1) / 2).cpu()
    for i in range(n):
        r, k = divmod(i, ncol)
        grid[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + k * (w + 1): 1 + k * (w + 1) + w] = x[i]
    return grid.permute(1, 2, 0)


def save_samples(samples: Tensor, out_dir: str | Path, *, kind: str = "vector",
                 title: str = "") -> list[Path]:
    """Write ``samples.pt`` and ``samples.png`` (grid or scatter) into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [atomic_write(out / "samples.pt", lambda p: torch.save(samples.cpu(), p))]
    if kind == "image" and samples.ndim == 4:
        grid = image_grid(samples)
        scale = max(1, 512 // grid.shape[1])  # small images: enlarge pixels to be seen
        pixels = grid.repeat_interleave(scale, 0).repeat_interleave(scale, 1).numpy()
        img = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
        paths.append(atomic_write(out / "samples.png", lambda p: plt.imsave(
            p, img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, format="png")))
    elif samples.ndim == 2 and samples.shape[1] >= 2:
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(samples[:, 0].cpu(), samples[:, 1].cpu(), s=4, alpha=0.6)
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
        paths.append(atomic_write(out / "samples.png", lambda p: fig.savefig(p, dpi=110,
                                                                         format="png")))
        plt.close(fig)
    return paths
