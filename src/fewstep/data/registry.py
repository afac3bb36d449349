"""Dataset record, the name registry and the shared split/subsample helpers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from .._registry import Registry

# Every split a data set may have; a set declares the ones it has (``Dataset.splits``). "val"
# comes last so the generated sets' per-split seed streams (index in SPLITS) never moved.
SPLITS = ("train", "test", "val")
KINDS = ("vector", "image")
SPLIT_SEED = 20240229  # fixed seed of every finite set's train/(val/)test split
TEST_FRACTION = 0.2

Loader = Callable[[str, int | None, int], torch.Tensor]
NULL_LABEL = -1  # the class label that means "no class" (classifier-free guidance's null label)


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
    splits: tuple[str, ...] = ("train", "test")  # the splits it has, mutually disjoint
    num_classes: int = 0  # > 0: ``labels`` gives each sample's class in [0, num_classes)
    labels: Loader | None = None  # ``labels(split, n, seed)``: int64 (N,), row-aligned with loader

    def __post_init__(self) -> None:
        """Validate the metadata."""
        if self.kind not in KINDS:
            raise ValueError(f"dataset {self.name!r}: kind must be in {KINDS}, got {self.kind!r}")
        if (self.labels is None) != (self.num_classes == 0) or self.num_classes < 0:
            raise ValueError(f"dataset {self.name!r}: a labels loader goes with num_classes > 0 "
                             f"(got num_classes={self.num_classes})")
        for split in self.splits:
            check_split(split)
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    def load(self, split: str = "train", n: int | None = None, seed: int = 0) -> torch.Tensor:
        """Return `n` samples (all of a finite split if None) of `split` as float32 (N, *shape).
        Raises ValueError for a split the set does not have (e.g. "val" of most built-ins)."""
        check_split(split)
        if split not in self.splits:
            raise ValueError(f"dataset {self.name!r} has no {split!r} split; it has "
                             f"{', '.join(self.splits)}")
        if n is not None and n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        x = self.loader(split, n, seed)
        if tuple(x.shape[1:]) != self.shape:
            raise RuntimeError(
                f"dataset {self.name!r}: loader gave {tuple(x.shape)}, expected (N, *{self.shape})"
            )
        return x.to(torch.float32)

    def load_labelled(self, split: str = "train", n: int | None = None,
                      seed: int = 0) -> dict[str, torch.Tensor]:
        """``{"x": samples, "cond": labels}``: the rows of :meth:`load` (same split, n and
        seed) with their int64 class labels in ``[0, num_classes)``, the dict batch that
        training and the conditional networks take (``cond=labels``). Raises ValueError for
        a set without labels."""
        if self.labels is None:
            raise ValueError(f"dataset {self.name!r} has no class labels; labelled sets: "
                             f"{', '.join(d.name for d in _REGISTRY.values() if d.num_classes)}")
        x = self.load(split, n, seed)
        y = self.labels(split, n, seed).to(torch.int64)
        if y.shape != x.shape[:1]:
            raise RuntimeError(f"dataset {self.name!r}: {len(y)} labels for {len(x)} samples")
        return {"x": x, "cond": y}


_REGISTRY: Registry[Dataset] = Registry("dataset")


def register(dataset: Dataset, overwrite: bool = False) -> Dataset:
    """Add `dataset` under its name (re-registering another under a taken name needs overwrite)."""
    if dataset.name in _REGISTRY and _REGISTRY[dataset.name] is not dataset and not overwrite:
        raise ValueError(f"dataset {dataset.name!r} is already registered; pass overwrite=True")
    return _REGISTRY.add(dataset.name, dataset, overwrite=True)


def unregister(name: str) -> None:
    """Remove `name` from the registry (no error if absent)."""
    _REGISTRY.remove(name)


def get(name: str) -> Dataset:
    """Registered dataset `name`; an unknown name raises
    :class:`~fewstep._registry.UnknownNameError` (a ValueError and a KeyError) listing the
    available ones."""
    return _REGISTRY[name]


def available() -> list[str]:
    """Sorted names of all registered datasets."""
    return _REGISTRY.names()


def check_split(split: str) -> None:
    """Raise ValueError unless `split` is one of :data:`SPLITS`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def split_rng(split: str, seed: int) -> np.random.Generator:
    """Independent random stream per (split, seed) for generated data sets."""
    check_split(split)
    return np.random.default_rng([SPLITS.index(split), int(seed)])


def split_indices(
    x: np.ndarray, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED,
    val_fraction: float = 0.0,
) -> dict[str, np.ndarray]:
    """Deterministic train/test (and val, when ``val_fraction > 0``) indices of rows of `x`;
    identical rows always share a split. The test rows do not depend on ``val_fraction``:
    val is carved out of what would otherwise be train."""
    flat = np.ascontiguousarray(x.reshape(len(x), -1))
    _, groups = np.unique(flat, axis=0, return_inverse=True)
    groups = groups.reshape(-1)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    perm = np.random.default_rng(seed).permutation(n_groups)
    n_test, n_val = round(test_fraction * n_groups), round(val_fraction * n_groups)
    which = np.zeros(n_groups, dtype=np.int8)  # 0 train, 1 test, 2 val
    which[perm[:n_test]] = 1
    which[perm[n_test:n_test + n_val]] = 2
    split = which[groups]
    out = {"train": np.flatnonzero(split == 0), "test": np.flatnonzero(split == 1)}
    return {**out, "val": np.flatnonzero(split == 2)} if val_fraction > 0 else out


def subsample(x: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    """All of `x` if n is None, else `n` distinct rows chosen deterministically from `seed`."""
    if n is None:
        return x.clone()
    if n > len(x):
        raise ValueError(f"asked for n={n} samples but the split only has {len(x)}")
    idx = np.random.default_rng(int(seed)).choice(len(x), size=n, replace=False)
    return x[torch.from_numpy(idx)]


Fitted = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def finite_loader(
    full: Callable[[], np.ndarray],
    test_fraction: float = TEST_FRACTION,
    val_fraction: float = 0.0,
    fit: Fitted | None = None,
) -> Loader:
    """Loader over a fixed array: cached fixed split, then seeded subsampling. ``fit`` maps
    the split arrays to new ones once, e.g. standardising every split with the train split's
    statistics (so nothing about val or test leaks into the data the teacher sees)."""

    @cache
    def splits() -> dict[str, torch.Tensor]:
        x = np.asarray(full(), dtype=np.float32)
        idx = split_indices(x, test_fraction, val_fraction=val_fraction)
        arrays = {s: x[i] for s, i in idx.items()}
        arrays = fit(arrays) if fit is not None else arrays
        return {s: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
                for s, a in arrays.items()}

    def load(split: str, n: int | None, seed: int) -> torch.Tensor:
        return subsample(splits()[split], n, seed)

    return load


def finite_label_loader(
    full: Callable[[], np.ndarray], full_labels: Callable[[], np.ndarray],
    test_fraction: float = TEST_FRACTION, val_fraction: float = 0.0,
) -> Loader:
    """Labels of a :func:`finite_loader` set: the same split (computed on the samples) and the
    same seeded subsample, so ``labels(split, n, seed)[i]`` is the class of row i."""

    @cache
    def splits() -> dict[str, torch.Tensor]:
        x, y = np.asarray(full(), dtype=np.float32), np.asarray(full_labels(), dtype=np.int64)
        idx = split_indices(x, test_fraction, val_fraction=val_fraction)
        return {s: torch.from_numpy(np.ascontiguousarray(y[i])) for s, i in idx.items()}

    def load(split: str, n: int | None, seed: int) -> torch.Tensor:
        return subsample(splits()[split], n, seed)

    return load


Labelled = Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def generated_label_loaders(sample: Labelled, default_n: dict[str, int]) -> tuple[Loader, Loader]:
    """``(samples, labels)`` loaders of a generated set whose sampler draws both at once from
    the per-(split, seed) stream: the same call gives row-aligned samples and labels."""

    def part(k: int) -> Loader:
        def load(split: str, n: int | None, seed: int) -> torch.Tensor:
            count = default_n[split] if n is None else n
            out = sample(count, split_rng(split, seed))[k]
            return torch.from_numpy(np.ascontiguousarray(out))
        return load

    return part(0), part(1)


def generated_loader(
    sample: Callable[[int, np.random.Generator], np.ndarray], default_n: dict[str, int]
) -> Loader:
    """Loader that draws `n` (default per split) fresh samples from a per-(split, seed) stream."""

    def load(split: str, n: int | None, seed: int) -> torch.Tensor:
        count = default_n[split] if n is None else n
        x = sample(count, split_rng(split, seed))
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    return load
