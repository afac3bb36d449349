"""Every registered built-in data set loads with the declared metadata and split guarantees."""

import pytest
import torch

import fewstep.data as data

BUILTINS = data.available()
SMALL_N = 64


def rows(x: torch.Tensor) -> set[bytes]:
    """Each sample as raw bytes, for exact-duplicate checks."""
    return {r.tobytes() for r in x.reshape(len(x), -1).numpy()}


def test_expected_builtins_registered():
    expected = {
        "checkerboard",
        "8gaussians",
        "swissroll",
        "moons",
        "rings",
        "pinwheel",
        "digits",
        "patches",
        "shapes",
    }
    assert expected <= set(BUILTINS)


@pytest.mark.parametrize("name", BUILTINS)
def test_metadata(name):
    ds = data.get(name)
    assert ds.name == name
    assert ds.kind in ("vector", "image")
    assert isinstance(ds.licence, str) and ds.licence and "\n" not in ds.licence
    assert all(isinstance(s, int) and s > 0 for s in ds.shape)


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("name", BUILTINS)
def test_loads_shape_dtype_finite(name, split):
    ds = data.get(name)
    x = ds.load(split)
    assert x.dtype == torch.float32
    assert x.ndim == 1 + len(ds.shape) and tuple(x.shape[1:]) == ds.shape
    assert len(x) > 0
    assert torch.isfinite(x).all()
    if ds.kind == "image":
        assert x.min() >= -1.0 and x.max() <= 1.0
        assert x.std() > 0.05
    else:
        assert float(x.std(0).min()) > 0.5 and float(x.std(0).max()) < 2.0
        assert float(x.mean(0).abs().max()) < 0.3


@pytest.mark.parametrize("name", BUILTINS)
def test_n_respected_and_deterministic(name):
    ds = data.get(name)
    a = ds.load("train", n=SMALL_N, seed=3)
    b = ds.load("train", n=SMALL_N, seed=3)
    c = ds.load("train", n=SMALL_N, seed=4)
    assert a.shape == (SMALL_N, *ds.shape)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert ds.load("test", n=0).shape == (0, *ds.shape)


@pytest.mark.parametrize("name", BUILTINS)
def test_full_split_deterministic(name):
    ds = data.get(name)
    assert torch.equal(ds.load("test"), ds.load("test"))


@pytest.mark.parametrize("name", BUILTINS)
def test_train_test_disjoint(name):
    ds = data.get(name)
    train, test = ds.load("train"), ds.load("test")
    assert not rows(train) & rows(test)
    if ds.finite:
        assert len(rows(train)) + len(rows(test)) == len(rows(torch.cat([train, test])))


@pytest.mark.parametrize("name", [n for n in BUILTINS if data.get(n).finite])
def test_finite_subsample_is_subset(name):
    ds = data.get(name)
    full = ds.load("test")
    part = ds.load("test", n=10, seed=1)
    assert rows(part) <= rows(full)
    assert len(rows(part)) == 10
    with pytest.raises(ValueError, match="n="):
        ds.load("test", n=len(full) + 1)


@pytest.mark.parametrize("name", [n for n in BUILTINS if not data.get(n).finite])
def test_generated_any_n(name):
    ds = data.get(name)
    assert len(ds.load("train", n=7)) == 7
    assert not torch.equal(ds.load("train", n=50), ds.load("test", n=50))


def test_expected_sizes():
    assert len(data.load("digits", "train")) + len(data.load("digits", "test")) == 1797
    assert data.load("patches", "test").shape[1:] == (3, 16, 16)
    assert len(data.load("moons")) == 20_000 and len(data.load("moons", "test")) == 5_000


def test_digits_values():
    x = torch.cat([data.load("digits", "train"), data.load("digits", "test")])
    assert x.min() == -1.0 and x.max() == 1.0


def test_unknown_name_lists_available():
    with pytest.raises(KeyError) as err:
        data.get("no_such_set")
    msg = str(err.value)
    assert "no_such_set" in msg and "checkerboard" in msg and "digits" in msg


def test_bad_split_raises():
    with pytest.raises(ValueError, match="validation"):
        data.get("moons").load("validation")
