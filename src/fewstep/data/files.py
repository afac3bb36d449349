"""User data sets from a tensor file (.pt/.npy) or a folder of PNG/JPG images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fewstep.data.registry import Dataset, finite_loader

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_tensor_file(path: str | Path) -> np.ndarray:
    """Samples (N, ...) from a .pt/.pth (tensor, weights_only) or .npy file as float32."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        x = np.load(path, allow_pickle=False)
    elif suffix in (".pt", ".pth"):
        x = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{path}: expected a tensor, got {type(x).__name__}")
        x = x.detach().cpu().numpy()
    else:
        raise ValueError(f"{path}: unsupported suffix {suffix!r}; use .pt, .pth or .npy")
    if x.ndim < 2:
        raise ValueError(f"{path}: need samples of shape (N, ...), got {x.shape}")
    return x.astype(np.float32)


def from_tensor_file(
    name: str, path: str | Path, kind: str | None = None, licence: str = "user-supplied file"
) -> Dataset:
    """Dataset from a file of samples (N, *shape), read now; pass it to `register` yourself."""
    path = Path(path)
    data = read_tensor_file(path)
    shape = tuple(data.shape[1:])
    kind = kind or ("vector" if len(shape) == 1 else "image")
    return Dataset(
        name=name,
        kind=kind,
        shape=shape,
        licence=f"{licence} ({path})",
        loader=finite_loader(lambda: data),
        description=f"samples from {path}; fixed 80/20 seeded train/test split",
    )


def image_files(folder: str | Path) -> list[Path]:
    """Sorted PNG/JPG files directly inside `folder`."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {folder}")
    return files


def read_pixels(path: str | Path) -> np.ndarray:
    """The pixel array (H, W) or (H, W, C) of an image file. Raises FileNotFoundError for a
    missing file and ValueError, naming the file, for one that is not a readable image."""
    from skimage import io

    if not Path(path).is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist")
    try:
        img = io.imread(str(path))
    except Exception as e:  # imageio/PIL raise many types for a file that is not an image
        raise ValueError(f"cannot read image {str(path)!r}: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if img.ndim not in (2, 3):
        raise ValueError(f"cannot read image {str(path)!r}: pixel array of shape {img.shape}")
    return img


def read_image(path: Path, size: tuple[int, int], channels: int) -> np.ndarray:
    """One image as (channels, H, W) float32 in [-1, 1], resized to `size`."""
    from skimage import color, transform, util

    img = util.img_as_float32(read_pixels(path))
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.ndim == 3 and channels == 1:
        img = color.rgb2gray(img)
    if img.ndim == 2 and channels == 3:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[:2] != size:
        img = transform.resize(img, size, anti_aliasing=True)
    img = np.clip(img, 0.0, 1.0).reshape(*size, channels)
    return (img.transpose(2, 0, 1) * 2.0 - 1.0).astype(np.float32)


def infer_channels(path: Path) -> int:
    """1 for a greyscale image file, 3 for colour."""
    img = read_pixels(path)
    return 1 if img.ndim == 2 or img.shape[2] == 1 else 3


def from_image_folder(
    name: str,
    path: str | Path,
    size: int | tuple[int, int],
    channels: int | None = None,
    licence: str = "user-supplied images",
) -> Dataset:
    """Dataset from PNG/JPG images in a folder, resized to `size`, scaled to [-1, 1]."""
    files = image_files(path)
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    channels = channels or infer_channels(files[0])
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")

    def read_all() -> np.ndarray:
        return np.stack([read_image(f, hw, channels) for f in files])

    return Dataset(
        name=name,
        kind="image",
        shape=(channels, *hw),
        licence=f"{licence} ({path})",
        loader=finite_loader(read_all),
        description=f"{len(files)} images from {path}; fixed 80/20 seeded split",
    )
