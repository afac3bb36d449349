"""Class labels of the labelled built-in sets, the null label, and CFG training with label
dropout (Ho & Salimans 2022)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fewstep.data as data
from fewstep import solvers
from fewstep.denoiser import CFGDenoiser
from fewstep.distill.base import LossContext
from fewstep.distill.teacher import EDMLoss
from fewstep.nets.embedding import CondEmbedding
from fewstep.nets.mlp import MLPDenoiserNet
from fewstep.nets.precond import EDMPrecond
from fewstep.train import TrainConfig, train

LABELLED = [name for name in data.available() if data.get(name).num_classes]


def test_the_labelled_sets():
    assert {"8gaussians", "digits", "shapes"} <= set(LABELLED)


@pytest.mark.parametrize("name", LABELLED)
@pytest.mark.parametrize("split", ["train", "test"])
def test_labels_are_row_aligned_with_the_samples(name, split):
    ds = data.get(name)
    batch = ds.load_labelled(split, n=200, seed=5)
    torch.testing.assert_close(batch["x"], ds.load(split, n=200, seed=5), rtol=0, atol=0)
    y = batch["cond"]
    assert y.dtype == torch.int64 and y.shape == (200,)
    assert int(y.min()) >= 0 and int(y.max()) < ds.num_classes
    assert len(set(y.tolist())) == ds.num_classes  # every class present in 200 rows


def test_8gaussians_label_is_the_nearest_mode():
    batch = data.get("8gaussians").load_labelled("test", n=2000, seed=1)
    angles = 2 * np.pi * torch.arange(8) / 8
    modes = 1.4 * torch.stack([angles.cos(), angles.sin()], 1).float()
    nearest = torch.cdist(batch["x"], modes).argmin(1)
    assert (nearest == batch["cond"]).float().mean() > 0.99


def test_digits_labels_are_sklearns_targets():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy((digits.images / 8.0 - 1.0).astype(np.float32)).flatten(1)
    batch = data.get("digits").load_labelled("test", n=50, seed=0)
    for x, y in zip(batch["x"].flatten(1), batch["cond"], strict=True):
        rows = (images == x).all(1).nonzero().flatten()
        assert int(y) in {int(digits.target[r]) for r in rows}


def test_an_unlabelled_set_says_so():
    with pytest.raises(ValueError, match="'moons' has no class labels"):
        data.get("moons").load_labelled("train", n=4)


def test_labels_need_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        data.Dataset(name="bad", kind="vector", shape=(2,), licence="-",
                     loader=lambda s, n, seed: torch.zeros(0, 2),
                     labels=lambda s, n, seed: torch.zeros(0))


def test_the_null_label_is_minus_one_or_num_classes():
    emb = CondEmbedding(8, num_classes=3)
    out = emb(torch.tensor([-1, 3, 0]))
    torch.testing.assert_close(out[0], out[1])
    assert not torch.equal(out[0], out[2])
    with pytest.raises(ValueError, match="class labels must lie in"):
        emb(torch.tensor([4]))


class _Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x, sigma, cond):
        self.seen.append(cond)
        return x * 0


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_label_dropout_replaces_a_fraction_p_by_the_null_label(p):
    ctx = LossContext(None, None, torch.Generator().manual_seed(0), batch_size=8)
    batch = {"x": torch.randn(4000, 2), "cond": torch.randint(0, 8, (4000,))}
    rec = _Recorder()
    EDMLoss(label_dropout=p).loss(rec, batch, ctx)
    seen = rec.seen[0]
    dropped = seen == data.NULL_LABEL
    assert abs(dropped.float().mean().item() - p) < 0.03
    assert torch.equal(seen[~dropped], batch["cond"][~dropped])  # kept labels are untouched


def test_label_dropout_errors():
    with pytest.raises(ValueError, match="label_dropout must lie in"):
        EDMLoss(label_dropout=1.0)
    ctx = LossContext(None, None, torch.Generator().manual_seed(0), batch_size=8)
    with pytest.raises(ValueError, match="needs class labels"):
        EDMLoss(label_dropout=0.1).loss(_Recorder(), torch.randn(8, 2), ctx)


def test_a_guided_conditional_teacher_samples_its_class():
    """Trained with label dropout, one network is conditional and unconditional; guided
    samples of class c land on 8gaussians' mode c, unconditional ones spread over all."""
    ds = data.get("8gaussians")
    net = EDMPrecond(MLPDenoiserNet(dim=2, hidden=64, depth=2, cond_type="label",
                                    num_classes=8), sigma_data=0.5)
    res = train(EDMLoss(label_dropout=0.2), net, ds.load_labelled("train", n=4000),
                TrainConfig(steps=600, batch_size=256, lr=3e-3, progress=False, seed=0))
    noise = torch.randn(400, 2, generator=torch.Generator().manual_seed(1)) * 80.0
    label = torch.full((400,), 2)
    angles = 2 * np.pi * torch.arange(8) / 8
    modes = 1.4 * torch.stack([angles.cos(), angles.sin()], 1).float()
    with torch.no_grad():
        guided = CFGDenoiser(res.ema, 3.0, {"cond": torch.full((400,), data.NULL_LABEL)})
        x_c = solvers.sample(guided, noise, "heun", nfe=39, cond={"cond": label})
        x_u = solvers.sample(res.ema, noise, "heun", nfe=39,
                             cond={"cond": torch.full((400,), data.NULL_LABEL)})
    assert (torch.cdist(x_c, modes).argmin(1) == 2).float().mean() > 0.9
    assert len(set(torch.cdist(x_u, modes).argmin(1).tolist())) == 8


def test_a_run_recorded_before_label_dropout_existed_resumes(tmp_path):
    """A checkpoint whose method record lacks a field added later (with the old behaviour as
    its default) resumes; a recorded non-default value still refuses a change."""
    import json

    x = data.load("moons", n=64)
    net = EDMPrecond(MLPDenoiserNet(dim=2, hidden=16, depth=1), sigma_data=0.5)
    cfg = TrainConfig(steps=2, batch_size=16, progress=False, out_dir=str(tmp_path))
    train(EDMLoss(), net, x, cfg)
    (ckpt,) = (tmp_path / "checkpoints").iterdir()
    record = json.loads((ckpt / "checkpoint.json").read_text())
    del record["method"]["params"]["label_dropout"]
    (ckpt / "checkpoint.json").write_text(json.dumps(record))
    train(EDMLoss(), net, x, TrainConfig(**{**cfg.__dict__, "steps": 3}))
    with pytest.raises(ValueError, match=r"changed settings: method\.label_dropout"):
        train(EDMLoss(label_dropout=0.1), net, x, TrainConfig(**{**cfg.__dict__, "steps": 4}))
