"""Registry behaviour and user data sets from tensor files and image folders."""

import numpy as np
import pytest
import torch

import fewstep.data as data
from fewstep.data.registry import split_indices


@pytest.fixture
def scratch_name():
    name = "_test_scratch"
    yield name
    data.unregister(name)


def test_register_get_and_duplicate(tmp_path, scratch_name):
    torch.save(torch.randn(20, 3), tmp_path / "a.pt")
    ds = data.from_tensor_file(scratch_name, tmp_path / "a.pt")
    assert scratch_name not in data.available()
    assert data.register(ds) is ds
    assert data.get(scratch_name) is ds and scratch_name in data.available()
    data.register(ds)  # same object again is fine
    other = data.from_tensor_file(scratch_name, tmp_path / "a.pt")
    with pytest.raises(ValueError, match=scratch_name):
        data.register(other)
    data.register(other, overwrite=True)
    assert data.get(scratch_name) is other


@pytest.mark.parametrize("suffix", [".pt", ".npy"])
def test_tensor_file_round_trip(tmp_path, suffix):
    x = torch.randn(50, 2, 3, 3)
    path = tmp_path / f"x{suffix}"
    if suffix == ".pt":
        torch.save(x, path)
    else:
        np.save(path, x.numpy().astype(np.float64))
    ds = data.from_tensor_file("user", path)
    assert ds.shape == (2, 3, 3) and ds.kind == "image"
    train, test = ds.load("train"), ds.load("test")
    assert train.dtype == torch.float32
    assert len(train) == 40 and len(test) == 10
    both = torch.cat([train, test])
    assert torch.equal(both[both[:, 0, 0, 0].argsort()], x[x[:, 0, 0, 0].argsort()])
    assert ds.load("train", n=5, seed=2).shape == (5, 2, 3, 3)


def test_tensor_file_vector_kind(tmp_path):
    np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=(30, 2)))
    assert data.from_tensor_file("v", tmp_path / "v.npy").kind == "vector"


def test_tensor_file_bad_suffix(tmp_path):
    (tmp_path / "x.txt").write_text("1 2 3")
    with pytest.raises(ValueError, match="suffix"):
        data.from_tensor_file("bad", tmp_path / "x.txt")


def test_image_folder_rgb_round_trip(tmp_path):
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(10, 6, 6, 3), dtype=np.uint8)
    for i, img in enumerate(imgs):
        plt.imsave(tmp_path / f"img{i:02d}.png", img)
    ds = data.from_image_folder("folder", tmp_path, size=6)
    assert ds.shape == (3, 6, 6) and ds.kind == "image"
    got = torch.cat([ds.load("train"), ds.load("test")]).numpy()
    want = imgs.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
    key = lambda a: a.reshape(len(a), -1).sum(1).argsort()  # noqa: E731
    np.testing.assert_allclose(got[key(got)], want[key(want)], atol=1e-5)
    assert len(ds.load("test")) == 2


def test_image_folder_grey_resized(tmp_path):
    from skimage import io

    for i in range(5):
        io.imsave(
            tmp_path / f"g{i}.png", np.full((20, 20), 40 * i, dtype=np.uint8), check_contrast=False
        )
    (tmp_path / "notes.txt").write_text("ignored")
    ds = data.from_image_folder("grey", tmp_path, size=(8, 4))
    assert ds.shape == (1, 8, 4)
    x = torch.cat([ds.load("train"), ds.load("test")])
    assert x.shape == (5, 1, 8, 4) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    levels = sorted(float(v) for v in x.mean(dim=(1, 2, 3)))
    np.testing.assert_allclose(levels, [40 * i / 127.5 - 1 for i in range(5)], atol=1e-5)
    colour = data.from_image_folder("grey3", tmp_path, size=8, channels=3)
    assert colour.load("train").shape[1:] == (3, 8, 8)


def test_image_folder_empty(tmp_path):
    with pytest.raises(FileNotFoundError):
        data.from_image_folder("empty", tmp_path, size=8)


def test_split_indices_keeps_duplicates_together():
    x = np.repeat(np.arange(20, dtype=np.float32)[:, None], 3, axis=0).reshape(60, 1)
    idx = split_indices(x, test_fraction=0.25, seed=1)
    assert not set(x[idx["train"], 0]) & set(x[idx["test"], 0])
    assert len(idx["train"]) + len(idx["test"]) == 60
    again = split_indices(x, test_fraction=0.25, seed=1)
    assert all(np.array_equal(idx[s], again[s]) for s in idx)
