"""Embeddings of the noise level ``c_noise`` and of a second conditioning input."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["CondEmbedding", "SinusoidalEmbedding"]


class SinusoidalEmbedding(nn.Module):
    """``[cos(2 pi f_k c), sin(2 pi f_k c)]`` with ``f_k`` log-spaced in ``[1, max_freq]``: a
    fixed Fourier-feature map of the noise level (Vaswani et al. 2017; Tancik et al. 2020).

    The angles are computed in at least float32; the features come out in the module's dtype
    (float32 by default; float16 or bfloat16 after ``.to(torch.float16)`` and the like)."""

    def __init__(self, dim: int, max_freq: float = 4.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even; got {dim}")
        self.max_freq = float(max_freq)
        freqs = torch.logspace(0, math.log10(max_freq), dim // 2)
        self.register_buffer("freqs", freqs, persistent=False)  # its dtype: the module's

    def forward(self, c: Tensor) -> Tensor:
        """``(batch,)`` noise levels -> ``(batch, dim)`` features."""
        freqs: Tensor = self.freqs  # type: ignore[assignment]  # a registered buffer
        dtype = freqs.dtype
        if dtype in (torch.float16, torch.bfloat16):  # cast to half: use exact frequencies
            freqs = torch.logspace(0, math.log10(self.max_freq), len(freqs), device=freqs.device)
        angle = 2 * math.pi * c.float()[:, None] * freqs.to(c.device)
        return torch.cat([angle.cos(), angle.sin()], dim=1).to(dtype)


class CondEmbedding(nn.Module):
    """Embed a second conditioning input: a class label (``num_classes`` > 0; the null label
    of classifier-free guidance is -1, ``fewstep.data.NULL_LABEL``, and ``num_classes``
    means the same) or, with ``num_classes = 0``, a scalar such as a guidance scale w (Meng
    et al. 2023, Sec. 3). Raises ValueError for a label above ``num_classes``."""

    def __init__(self, dim: int, num_classes: int = 0):
        super().__init__()
        self.num_classes = num_classes
        if num_classes > 0:
            self.embed: nn.Module = nn.Embedding(num_classes + 1, dim)
        else:
            self.embed = nn.Sequential(SinusoidalEmbedding(dim, max_freq=8.0), nn.Linear(dim, dim))

    def forward(self, cond: Tensor) -> Tensor:
        if self.num_classes > 0:
            label = cond.long()
            if bool((label > self.num_classes).any()) or bool((label < -1).any()):
                raise ValueError(f"class labels must lie in [-1, {self.num_classes}] (-1: the "
                                 f"null label); got {sorted(set(label.tolist()))}")
            return self.embed(torch.where(label < 0, self.num_classes, label))
        return self.embed(cond.float())
