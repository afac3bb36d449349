"""Tabular sets bundled inside scikit-learn (``load_*``, never ``fetch_*``: no download),
standardised per feature with the train split's mean and standard deviation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fewstep.data.registry import Dataset, finite_loader

TABULAR_TEST, TABULAR_VAL = 0.2, 0.1  # fractions of the rows; train is the remaining 70%
# name -> (sklearn loader name, features, description, licence)
TABULAR: dict[str, tuple[str, int, str, str]] = {
    "wine": ("load_wine", 13, "178 wines x 13 chemical measurements (3 cultivars)",
             "UCI Wine (Aeberhard & Forina 1991) as bundled with scikit-learn (load_wine, no "
             "download); CC BY 4.0"),
    "breast_cancer": ("load_breast_cancer", 30, "569 breast-mass fine-needle aspirates x 30 "
                      "cell-nucleus features",
                      "UCI Breast Cancer Wisconsin (Diagnostic) (Wolberg, Street & Mangasarian "
                      "1995) as bundled with scikit-learn (load_breast_cancer, no download); "
                      "CC BY 4.0"),
}


def sklearn_table(loader: str) -> Callable[[], np.ndarray]:
    """``() -> (N, F) float32`` features of the bundled scikit-learn set ``loader``."""

    def read() -> np.ndarray:
        from sklearn import datasets

        return np.asarray(getattr(datasets, loader)().data, dtype=np.float32)

    return read


def standardise(splits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every split standardised per feature with the *train* split's mean and std (a constant
    feature keeps std 1), so the held-out splits are scored in the teacher's units."""
    mean = splits["train"].mean(axis=0)
    std = splits["train"].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return {s: (x - mean) / std for s, x in splits.items()}


def tabular_datasets() -> list[Dataset]:
    """The built-in tabular sets (nothing is loaded until `.load`)."""
    out = []
    for name, (loader, n_features, desc, licence) in TABULAR.items():
        out.append(Dataset(
            name=name, kind="vector", shape=(n_features,), licence=licence,
            loader=finite_loader(sklearn_table(loader), TABULAR_TEST, TABULAR_VAL, standardise),
            splits=("train", "val", "test"),
            description=f"{desc}; tabular; fixed seeded 70/10/20 train/val/test split of the "
            "rows (disjoint), standardised with the train split's statistics"))
    return out
