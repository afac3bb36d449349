"""LCM students (lcd, lcf) in the bench: ``student:PATH@w=SCALE``, sampled with the consistency
sampler at that w, class labels drawn from the case's seed."""

from __future__ import annotations

import pytest
import torch

from fewstep import data, nets
from fewstep.bench import students
from fewstep.bench.runner import run_suite
from fewstep.bench.store import Store
from fewstep.bench.suite import Suite
from fewstep.distill import get_method
from fewstep.train import TrainConfig, train


def _net(w):
    torch.manual_seed(0)
    return nets.MLPDenoiserNet(2, hidden=16, depth=1, emb_dim=16, cond_type="label",
                               num_classes=8, w_embedding=w)


@pytest.fixture(scope="module")
def lcm_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lcm")
    teacher = nets.EDMPrecond(_net(False)).eval()
    lcd = get_method("lcd")(N=8, k=2, solver="euler")
    train(lcd, nets.ConsistencyPrecond(_net(True)), data.get("8gaussians").load_labelled(n=256),
          TrainConfig(steps=2, batch_size=64, progress=False, out_dir=str(root / "lcd")),
          teacher=teacher)
    return root / "lcd"


class _Recorder(torch.nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f, self.conds = f, []

    def forward(self, x, sigma, **cond):
        self.conds.append(cond)
        return self.f(x, sigma, **cond)


def test_an_lcm_student_samples_at_its_w_with_seeded_labels(lcm_dir):
    method = f"student:{lcm_dir}@w=2.5"
    assert students.check(method) == "lcd" and students.label(method) == "lcd@w=2.5"
    rec = _Recorder(students.model(method))
    x = torch.randn(32, 2) * 80
    out, steps = students.run_student(method, rec, x, 4, 80.0, seed=3)
    assert steps == 4 and len(rec.conds) == 4 and out.shape == x.shape
    for cond in rec.conds:
        assert torch.equal(cond["w"], torch.full((32,), 2.5))
        assert torch.equal(cond["cond"], students.class_labels(3, 32, 8))
    assert not torch.equal(students.class_labels(3, 32, 8), students.class_labels(4, 32, 8))


def test_lcm_students_run_in_a_suite(lcm_dir, tmp_path):
    methods = [f"student:{lcm_dir}@w=1.5", f"student:{lcm_dir}@w=3"]
    suite = Suite(name="lcm", teachers=["8gaussians"], methods=methods, nfe=[1, 2, 4],
                  seeds=[0], n_samples=32, reference_rtol=1e-3)
    summary = run_suite(suite, tmp_path, progress=False)
    assert summary.failed == 0 and summary.total == 6
    rows = Store(tmp_path / "results.sqlite").rows()
    assert {r["method"] for r in rows} == set(methods)
    assert all(r["train_teacher_nfe"] > 0 for r in rows)  # the LCD's counted teacher rows


@pytest.mark.parametrize("suffix,match", [
    ("", r"sampled at a guidance scale: student:PATH@w=SCALE"),
    ("@w=abc", r"a guidance suffix looks like @w=2 \(a number >= 0\); got @w=abc"),
    ("@w=-1", "must be a finite number >= 0"),
])
def test_bad_lcm_entries_are_named(lcm_dir, suffix, match):
    with pytest.raises(ValueError, match=match):
        students.check(f"student:{lcm_dir}{suffix}")


def test_a_scale_on_a_plain_consistency_student_is_refused(tmp_path):
    cd = get_method("cd")(N=6)
    train(cd, nets.ConsistencyPrecond(nets.MLPDenoiserNet(2, hidden=8, depth=1)),
          torch.randn(64, 2), TrainConfig(steps=1, batch_size=32, progress=False,
                                          out_dir=str(tmp_path / "cd")),
          teacher=nets.EDMPrecond(nets.MLPDenoiserNet(2, hidden=8, depth=1)))
    with pytest.raises(ValueError, match="takes no guidance scale"):
        students.check(f"student:{tmp_path / 'cd'}@w=2")
