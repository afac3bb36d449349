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
        "wine",
        "breast_cancer",
        "sines",
        "ar2",
    }
    assert expected <= set(BUILTINS)


@pytest.mark.parametrize("name", BUILTINS)
def test_metadata(name):
    ds = data.get(name)
    assert ds.name == name
    assert ds.kind in ("vector", "image")
    assert isinstance(ds.licence, str) and ds.licence and "\n" not in ds.licence
    assert all(isinstance(s, int) and s > 0 for s in ds.shape)


@pytest.mark.parametrize("split", ["train", "val", "test"])
@pytest.mark.parametrize("name", BUILTINS)
def test_loads_shape_dtype_finite(name, split):
    ds = data.get(name)
    if split not in ds.splits:
        pytest.skip(f"{name} has no {split} split")
    x = ds.load(split)
    assert x.dtype == torch.float32
    assert x.ndim == 1 + len(ds.shape) and tuple(x.shape[1:]) == ds.shape
    assert len(x) > 0
    assert torch.isfinite(x).all()
    if ds.kind == "image":
        assert x.min() >= -1.0 and x.max() <= 1.0
        assert x.std() > 0.05
    else:  # about unit scale; a small held-out split's mean may stray by its standard error
        assert float(x.std(0).min()) > 0.5 and float(x.std(0).max()) < 2.0
        assert float(x.mean(0).abs().max()) < 0.3 + (4 / len(x) ** 0.5 if split != "train"
                                                     else 0.0)


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


@pytest.mark.parametrize("name", [n for n in BUILTINS if "val" in data.get(n).splits])
def test_train_val_test_pairwise_disjoint(name):
    ds = data.get(name)
    split = {s: rows(ds.load(s)) for s in ("train", "val", "test")}
    assert all(split.values())
    assert not split["train"] & split["val"]
    assert not split["train"] & split["test"]
    assert not split["val"] & split["test"]


def test_val_split_only_where_declared():
    with pytest.raises(ValueError, match="'digits' has no 'val' split"):
        data.get("digits").load("val")


def test_tabular_split_sizes_and_train_standardised():
    """wine: 178 rows split 70/10/20 by a fixed seed; the train split is standardised with
    its own statistics (mean 0, std 1 per feature), the held-out splits with the same."""
    from sklearn.datasets import load_wine

    sizes = {s: len(data.load("wine", s)) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 178 and sizes == {"train": 124, "val": 18, "test": 36}
    train = data.load("wine", "train").double()
    assert torch.allclose(train.mean(0), torch.zeros(13, dtype=torch.float64), atol=1e-5)
    ones = torch.ones(13, dtype=torch.float64)
    assert torch.allclose(train.std(0, unbiased=False), ones, atol=1e-4)
    raw = torch.as_tensor(load_wine().data)  # undo the train statistics: raw rows come back
    fit = raw[_rows_of(raw, "train")]
    for split in ("val", "test"):
        back = data.load("wine", split).double() * fit.std(0, unbiased=False) + fit.mean(0)
        assert torch.allclose(back, raw[_rows_of(raw, split)], rtol=1e-4, atol=1e-3)


def _rows_of(raw: torch.Tensor, split: str) -> torch.Tensor:
    from fewstep.data.registry import split_indices
    from fewstep.data.tabular import TABULAR_TEST, TABULAR_VAL

    idx = split_indices(raw.float().numpy(), TABULAR_TEST, val_fraction=TABULAR_VAL)[split]
    return torch.as_tensor(idx)


def test_signals_are_stationary_unit_variance():
    """sines and ar2 have unit variance at every time step (by construction: uniform phases,
    stationary start), checked on 10 000 draws; ar2's lag-1 correlation is positive."""
    for name in ("sines", "ar2"):
        x = data.load(name, "train").double()
        assert x.shape == (10_000, 64)
        assert float((x.var(0) - 1).abs().max()) < 0.1, name
    x = data.load("ar2", "train").double()
    assert float((x[:, 1:] * x[:, :-1]).mean()) > 0.3


def test_ar2_variance_formula_matches_simulation():
    import numpy as np

    from fewstep.data.signals import ar2_variance

    rng = np.random.default_rng(0)
    phi1, phi2, x = 1.2, -0.5, np.zeros(200_000)
    e = rng.standard_normal(len(x))
    for t in range(2, len(x)):
        x[t] = phi1 * x[t - 1] + phi2 * x[t - 2] + e[t]
    assert abs(x[1000:].var() / ar2_variance(np.array(phi1), np.array(phi2)) - 1) < 0.05


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
