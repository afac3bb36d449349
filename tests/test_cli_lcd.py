"""``fewstep distill`` with a class-conditional teacher: the labelled train split and a student
with the teacher's architecture (plus a w input for lcd), or one clear line when the data set
has no (or other) labels."""

import pytest
import torch

from fewstep import nets
from fewstep.cli import main
from fewstep.distill import get_method
from fewstep.nets.embedding import CondEmbedding
from fewstep.train import TrainConfig, load_checkpoint, train


@pytest.fixture(scope="module")
def cond_teacher(tmp_path_factory):
    """A tiny class-conditional 8gaussians teacher (label dropout), two optimiser steps."""
    out = tmp_path_factory.mktemp("cond") / "teacher"
    torch.manual_seed(0)
    net = nets.MLPDenoiserNet(2, hidden=16, depth=1, emb_dim=16, cond_type="label",
                              num_classes=8)
    train(get_method("edm")(sigma_data=1.0, label_dropout=0.1), nets.EDMPrecond(net, 1.0),
          {"x": torch.randn(64, 2), "cond": torch.randint(8, (64,))},
          TrainConfig(steps=2, batch_size=16, progress=False, out_dir=str(out)))
    return out


def test_lcd_distils_a_class_conditional_teacher_on_labelled_data(cond_teacher, tmp_path,
                                                                    capsys):
    out = tmp_path / "lcd"
    assert main(["distill", "--method", "lcd", "--teacher", str(cond_teacher), "--data",
                 "8gaussians", "--steps", "2", "--batch-size", "16", "--param", "N=10",
                 "--param", "k=2", "--out", str(out), "--quiet"]) == 0
    assert "teacher NFE" in capsys.readouterr().out
    student = load_checkpoint(out)
    embed = next(m for m in student.modules() if isinstance(m, CondEmbedding))
    assert embed.num_classes == 8  # the teacher's architecture, labels and all
    assert student.sigma_data == 1.0  # the teacher's sigma_data
    x, sigma = torch.randn(8, 2), torch.full((8,), 2.0)
    w = torch.full((8,), 2.5)
    # it takes labels and a guidance scale, and the labels matter
    a = student(x, sigma, cond=torch.zeros(8, dtype=torch.long), w=w)
    b = student(x, sigma, cond=torch.full((8,), 5, dtype=torch.long), w=w)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("data,bad", [("moons", "--data 'moons' has no class labels"),
                                      ("digits", "--data 'digits' has 10 classes")])
def test_a_class_conditional_teacher_needs_matching_labels(cond_teacher, tmp_path, capsys,
                                                           data, bad):
    code = main(["distill", "--method", "lcd", "--teacher", str(cond_teacher), "--data", data,
                 "--steps", "1", "--out", str(tmp_path / "x"), "--quiet"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert bad in lines[0] and "8 classes" in lines[0] and "8gaussians" in lines[0]
    assert not (tmp_path / "x").exists()  # nothing half-written
