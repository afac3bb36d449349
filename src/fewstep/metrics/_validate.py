"""Input checks and small numeric helpers shared by the metrics modules."""

from __future__ import annotations

from collections.abc import Callable

import torch

Tensor = torch.Tensor


def work_dtype(device: torch.device) -> torch.dtype:
    """Float64 wherever the backend supports it (MPS does not), else float32."""
    return torch.float32 if device.type == "mps" else torch.float64


def as_samples(x: Tensor, name: str, min_n: int = 2) -> Tensor:
    """Validate a batch of samples and flatten it to an (N, D) float matrix."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 0:
        raise ValueError(f"{name} must have a leading sample dimension, got a scalar")
    if x.shape[0] < min_n:
        raise ValueError(f"{name} needs at least {min_n} samples, got {x.shape[0]}")
    if x.ndim == 1:
        x = x[:, None]
    x = x.reshape(x.shape[0], -1).to(work_dtype(x.device))
    if x.shape[1] == 0:
        raise ValueError(f"{name} has zero feature dimensions (shape {tuple(x.shape)})")
    check_finite(x, name)
    return x


def check_finite(x: Tensor, name: str) -> None:
    """Raise ValueError if x holds any NaN or infinite entry."""
    if not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(f"{name} contains non-finite values ({n_nan} NaN, {n_inf} inf)")


def same_dim(x: Tensor, y: Tensor, names: tuple[str, str] = ("x", "y")) -> None:
    """Raise ValueError unless two (N, D) matrices share D."""
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"feature dimensions differ: {names[0]} has {x.shape[1]}, {names[1]} has {y.shape[1]}"
        )


def pair(
    x: Tensor, y: Tensor, min_n: int = 2, names: tuple[str, str] = ("x", "y")
) -> tuple[Tensor, Tensor]:
    """Validate two sample sets and return them flattened, on x's device."""
    x = as_samples(x, names[0], min_n)
    y = as_samples(y, names[1], min_n)
    same_dim(x, y, names)
    return x, y.to(device=x.device, dtype=x.dtype)


def block_sum(
    a: Tensor, b: Tensor, fn: Callable[[Tensor, Tensor], Tensor], block: int = 2048
) -> Tensor:
    """Sum of fn(a_blk, b) over row blocks of a, so memory stays O(block * len(b))."""
    total = a.new_zeros(())
    for start in range(0, a.shape[0], block):
        total = total + fn(a[start : start + block], b).sum()
    return total


def check_positive_int(value: int, name: str) -> None:
    """Raise ValueError unless value is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
