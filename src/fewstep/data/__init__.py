"""Built-in and user data sets behind one registry; built-ins load lazily on `Dataset.load`."""

import torch

from fewstep.data.files import from_image_folder, from_tensor_file
from fewstep.data.images import image_datasets
from fewstep.data.registry import NULL_LABEL, Dataset, available, get, register, unregister
from fewstep.data.signals import signal_datasets
from fewstep.data.tabular import tabular_datasets
from fewstep.data.toys import toy_datasets


def load(name: str, split: str = "train", n: int | None = None, seed: int = 0) -> torch.Tensor:
    """Shortcut for `get(name).load(split, n, seed)`."""
    return get(name).load(split=split, n=n, seed=seed)


for _ds in (*toy_datasets(), *image_datasets(), *tabular_datasets(), *signal_datasets()):
    register(_ds)

__all__ = [
    "NULL_LABEL",
    "Dataset",
    "available",
    "from_image_folder",
    "from_tensor_file",
    "get",
    "load",
    "register",
    "unregister",
]
