"""Dataset record, the name registry and the shared split/subsample helpers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

SPLITS = ("train", "test")
KINDS = ("vector", "image")
SPLIT_SEED = 20240229  # fixed seed of every finite set's train/test split
TEST_FRACTION = 0.2

Loader = Callable[[str, int | None, int], torch.Tensor]


@dataclass(frozen=True)
class Dataset:
    """A named data set: metadata plus a `loader(split, n, seed)` returning float32 samples."""

    name: str
    kind: str
    shape: tuple[int, ...]
    licence: str
    loader: Loader
    finite: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        """Validate the metadata."""
        if self.kind not in KINDS:
            raise ValueError(f"dataset {self.name!r}: kind must be in {KINDS}, got {self.kind!r}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    def load(self, split: str = "train", n: int | None = None, seed: int = 0) -> torch.Tensor:
        """Return `n` samples (all of a finite split if None) of `split` as float32 (N, *shape)."""
        check_split(split)
        if n is not None and n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        x = self.loader(split, n, seed)
        if tuple(x.shape[1:]) != self.shape:
            raise RuntimeError(
                f"dataset {self.name!r}: loader gave {tuple(x.shape)}, expected (N, *{self.shape})"
            )
        return x.to(torch.float32)


_REGISTRY: dict[str, Dataset] = {}


def register(dataset: Dataset, overwrite: bool = False) -> Dataset:
    """Add `dataset` under its name (re-registering another under a taken name needs overwrite)."""
    old = _REGISTRY.get(dataset.name)
    if old is not None and old is not dataset and not overwrite:
        raise ValueError(f"dataset {dataset.name!r} is already registered; pass overwrite=True")
    _REGISTRY[dataset.name] = dataset
    return dataset


def unregister(name: str) -> None:
    """Remove `name` from the registry (no error if absent)."""
    _REGISTRY.pop(name, None)


def get(name: str) -> Dataset:
    """Registered dataset `name`; unknown names raise KeyError listing the available ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(available())}") from None


def available() -> list[str]:
    """Sorted names of all registered datasets."""
    return sorted(_REGISTRY)


def check_split(split: str) -> None:
    """Raise ValueError unless `split` is 'train' or 'test'."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def split_rng(split: str, seed: int) -> np.random.Generator:
    """Independent random stream per (split, seed) for generated data sets."""
    check_split(split)
    return np.random.default_rng([SPLITS.index(split), int(seed)])


def split_indices(
    x: np.ndarray, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED
) -> dict[str, np.ndarray]:
    """Deterministic train/test indices of rows of `x`; identical rows always share a split."""
    flat = np.ascontiguousarray(x.reshape(len(x), -1))
    _, groups = np.unique(flat, axis=0, return_inverse=True)
    groups = groups.reshape(-1)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    perm = np.random.default_rng(seed).permutation(n_groups)
    n_test = round(test_fraction * n_groups)
    is_test = np.zeros(n_groups, dtype=bool)
    is_test[perm[:n_test]] = True
    mask = is_test[groups]
    return {"train": np.flatnonzero(~mask), "test": np.flatnonzero(mask)}


def subsample(x: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    """All of `x` if n is None, else `n` distinct rows chosen deterministically from `seed`."""
    if n is None:
        return x.clone()
    if n > len(x):
        raise ValueError(f"asked for n={n} samples but the split only has {len(x)}")
    idx = np.random.default_rng(int(seed)).choice(len(x), size=n, replace=False)
    return x[torch.from_numpy(idx)]


def finite_loader(full: Callable[[], np.ndarray], test_fraction: float = TEST_FRACTION) -> Loader:
    """Loader over a fixed array: cached fixed split, then seeded subsampling."""

    @cache
    def splits() -> dict[str, torch.Tensor]:
        x = np.asarray(full(), dtype=np.float32)
        idx = split_indices(x, test_fraction)
        return {s: torch.from_numpy(x[i]) for s, i in idx.items()}

    def load(split: str, n: int | None, seed: int) -> torch.Tensor:
        return subsample(splits()[split], n, seed)

    return load


def generated_loader(
    sample: Callable[[int, np.random.Generator], np.ndarray], default_n: dict[str, int]
) -> Loader:
    """Loader that draws `n` (default per split) fresh samples from a per-(split, seed) stream."""

    def load(split: str, n: int | None, seed: int) -> torch.Tensor:
        count = default_n[split] if n is None else n
        x = sample(count, split_rng(split, seed))
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    return load
