"""Diffusion-GAN students (ddgan, siddm) run in the bench at their native NFE T."""

import pytest
import torch

from fewstep.bench import students, teachers
from fewstep.bench.runner import run_suite
from fewstep.bench.store import Store
from fewstep.bench.suite import Suite
from fewstep.distill import gan_pair, get_method
from fewstep.train import TrainConfig, train


@pytest.mark.parametrize("name", ["ddgan", "siddm"])
def test_gan_students_run_at_their_native_nfe(tmp_path, name):
    data = teachers.get("gmm2").reference_samples(256, 0)
    torch.manual_seed(0)
    train(get_method(name)(T=2), gan_pair((2,), name, width=16, depth=1, emb_dim=8), data,
          TrainConfig(steps=2, batch_size=32, progress=False, out_dir=str(tmp_path / name)))
    method = f"student:{tmp_path / name}"
    suite = Suite(name="gan", teachers=["gmm2"], methods=[method], nfe=[1, 2], seeds=[0],
                  n_samples=16, reference_rtol=1e-4)
    suite.cases()
    assert any(f"a 2-step {name.upper()} student" in why for why in suite.skipped)
    summary = run_suite(suite, tmp_path / "bench", progress=False)
    assert summary.failed == 0 and summary.total == 1
    (row,) = Store(tmp_path / "bench" / "results.sqlite").rows()
    assert row["nfe"] == 2 and row["train_seconds"] > 0
    # the same seed gives the same samples, whatever the batch: per-row generators
    D, x = students.model(method), 80.0 * torch.randn(5, 2)
    full, _ = students.run_student(method, D, x, 2, 80.0, seed=3)
    head, steps = students.run_student(method, D, x[:2], 2, 80.0, seed=3)
    torch.testing.assert_close(head, full[:2])
    assert steps == 2


def test_cli_distills_and_samples_a_ddgan_student(tmp_path, capsys):
    from fewstep.cli import main

    out = tmp_path / "ddgan"
    assert main(["distill", "--method", "ddgan", "--data", "moons", "--hidden", "16",
                 "--batch-size", "32", "--steps", "2", "--param", "T=2", "--quiet",
                 "--out", str(out)]) == 0
    assert main(["sample", "--teacher", "moons", "--student", str(out), "--n", "8",
                 "--out", str(tmp_path / "s")]) == 0  # NFE defaults to T
    assert (tmp_path / "s" / "samples.png").exists()
    assert main(["sample", "--teacher", "moons", "--student", str(out), "--nfe", "3",
                 "--n", "8", "--out", str(tmp_path / "s3")]) == 2
    assert "a 2-step DDGAN student" in capsys.readouterr().err
