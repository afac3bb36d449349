"""Class-conditional teachers in the bench: guidance suffix, class-balanced rows and reference
samples, and guided-distillation students on their own teacher at the same w."""

import pytest
import torch

from fewstep import data, zoo
from fewstep.bench import students, teachers
from fewstep.bench.runner import run_suite
from fewstep.bench.store import Store
from fewstep.bench.suite import Suite
from fewstep.bench.teachers import GuidedRows, balanced_rows, split_guidance


@pytest.mark.parametrize("name, expected", [
    ("zoo:digits-cond-edm", ("zoo:digits-cond-edm", None)),
    ("zoo:digits-cond-edm@w=2", ("zoo:digits-cond-edm", 2.0)),
    ("digits-cond-guided@w=0.5", ("digits-cond-guided", 0.5)),
])
def test_split_guidance(name, expected):
    assert split_guidance(name) == expected


@pytest.mark.parametrize("bad", ["x@w=", "x@w=two", "x@s=2", "x@w=-1", "x@w=inf"])
def test_a_bad_guidance_suffix_is_named(bad):
    with pytest.raises(ValueError, match=r"guidance|@w="):
        split_guidance(bad)


class Affine(torch.nn.Module):
    """D(x, sigma, cond) = x + cond (the null label -1 included), and + w when given."""

    def forward(self, x, sigma, cond, w=None):
        out = x + cond.to(x)[:, None]
        return out if w is None else out + w[:, None]


def test_guided_rows_label_row_i_with_class_i_mod_k_and_guide():
    x, sigma = torch.zeros(7, 1), torch.ones(7)
    c = torch.arange(7) % 3
    torch.testing.assert_close(GuidedRows(Affine(), 3, 0.0)(x, sigma), c[:, None].float())
    # (1 + w) D_c - w D_u = c + w (c - (-1)) for w = 2
    torch.testing.assert_close(GuidedRows(Affine(), 3, 2.0)(x, sigma),
                               (c + 2.0 * (c + 1))[:, None].float())
    # a w-conditioned student is given w instead, and a prefix of the rows keeps its labels
    torch.testing.assert_close(GuidedRows(Affine(), 3, 2.0, takes_w=True)(x, sigma),
                               (c + 2.0)[:, None].float())
    torch.testing.assert_close(GuidedRows(Affine(), 3, 2.0)(x[:4], sigma[:4]),
                               GuidedRows(Affine(), 3, 2.0)(x, sigma)[:4])
    # guidance costs two network evaluations per row, and the bench's timer counts them
    from fewstep.bench.meters import TimedDenoiser

    for w, takes_w, per_row in ((2.0, False, 2), (0.0, False, 1), (2.0, True, 1)):
        timed = TimedDenoiser(GuidedRows(Affine(), 3, w, takes_w=takes_w))
        timed(x, sigma)
        assert timed.rows == 7 * per_row


def test_balanced_rows_are_class_balanced_in_order():
    labels = data.get("digits").load_labelled("test", seed=0)["cond"]
    rows = balanced_rows(labels, 10, 1000, seed=3)
    counts = torch.bincount(labels, minlength=10)
    assert len(rows) == 10 * int(counts.min())  # capped by the rarest class
    assert torch.equal(labels[rows], torch.arange(len(rows)) % 10)
    assert len(set(rows.tolist())) == len(rows)
    assert not torch.equal(rows, balanced_rows(labels, 10, 1000, seed=4))  # seeded draw
    assert len(balanced_rows(labels, 10, 50, seed=3)) == 50
    with pytest.raises(ValueError, match="class-balanced"):
        balanced_rows(torch.zeros(5, dtype=torch.long), 2, 10, seed=0)


def test_num_classes_from_the_recipes():
    assert teachers.num_classes("zoo:digits-cond-edm@w=2") == 10
    assert teachers.num_classes("zoo:8gaussians-cond-edm") == 8
    assert teachers.num_classes("zoo:digits-edm") == 0
    assert teachers.num_classes("digits") == 0


needs_zoo = pytest.mark.skipif(not zoo.built("digits-cond-guided-pd4"),
                               reason="guided zoo entries not built")


@needs_zoo
def test_a_conditional_zoo_teacher_is_guided_and_scored_class_balanced():
    t = teachers.get("zoo:digits-cond-edm@w=2")
    assert isinstance(t.denoiser, GuidedRows) and t.denoiser.w == 2.0
    assert t.extra["num_classes"] == 10 and "guidance w=2" in t.description
    ref = t.reference_samples(1000, 0)
    labelled = data.get("digits").load_labelled("test", seed=0)
    counts = torch.bincount(labelled["cond"], minlength=10)
    assert len(ref) == 10 * int(counts.min())
    assert teachers.get("zoo:digits-cond-edm").denoiser.w == 0.0
    with pytest.raises(ValueError, match="needs a class-conditional teacher"):
        teachers.get("zoo:digits-edm@w=2")


@needs_zoo
def test_suite_needs_a_multiple_of_the_classes():
    with pytest.raises(ValueError, match="multiple of the 10 classes"):
        Suite("s", ["zoo:digits-cond-edm@w=2"], ["ddim"], [2], [0], n_samples=64).validate()


@needs_zoo
def test_guided_students_run_on_their_teacher_at_the_same_w(tmp_path):
    pd4, gd = "student:zoo:digits-cond-guided-pd4@w=2", "student:zoo:digits-cond-guided@w=2"
    suite = Suite("g", ["zoo:digits-cond-edm@w=2", "zoo:digits-cond-edm@w=1"],
                  ["ddim", pd4, gd], [2, 4], [0], n_samples=20, reference_rtol=1e-3,
                  timing_repeats=1)
    suite.validate()
    cases = suite.cases()
    assert {(c.teacher, c.method, c.nfe) for c in cases if c.method != "ddim"} == {
        ("zoo:digits-cond-edm@w=2", pd4, 4), ("zoo:digits-cond-edm@w=2", gd, 2),
        ("zoo:digits-cond-edm@w=2", gd, 4)}
    assert any("not run on zoo:digits-cond-edm@w=1" in s for s in suite.skipped)
    assert students.label(pd4) == "zoo/guided-pd4@w=2"
    seconds, rows_nfe = students.training_cost(pd4)  # the whole chain: stage 1, 16->8, 8->4
    chain = [zoo.entry(n) for n in ("digits-cond-guided", "digits-cond-guided-pd8",
                                    "digits-cond-guided-pd4")]
    assert seconds == pytest.approx(sum(e.cost.seconds for e in chain))
    assert rows_nfe == pytest.approx(sum(e.cost.teacher_nfe * 64 for e in chain))
    summary = run_suite(suite, tmp_path, progress=False)
    assert summary.failed == 0
    rows = {(r["teacher"], r["method"], r["nfe_target"]): r
            for r in Store(tmp_path / "results.sqlite").rows()}
    # the teacher's guided evaluations cost 2 per row; the w-conditioned students cost 1
    assert rows[("zoo:digits-cond-edm@w=2", "ddim", 2)]["nfe"] == 4
    assert rows[("zoo:digits-cond-edm@w=2", pd4, 4)]["nfe"] == 4
    assert rows[("zoo:digits-cond-edm@w=2", gd, 2)]["nfe"] == 2


def test_an_infinite_labelled_set_gives_a_full_balanced_reference():
    """8gaussians draws its test split: n rows, row i near mode i mod 8, seeded."""
    ds = data.get("8gaussians")
    y = teachers._balanced_held_out(ds, 8, 400, 0)
    assert y.shape == (400, 2)
    angles = 2 * torch.pi * torch.arange(8) / 8
    modes = 1.4 * torch.stack([angles.cos(), angles.sin()], 1)
    assert (torch.cdist(y, modes).argmin(1) == torch.arange(400) % 8).float().mean() > 0.99
    assert not torch.equal(y, teachers._balanced_held_out(ds, 8, 400, 1))


@pytest.mark.skipif(not zoo.built("8gaussians-cond-edm"), reason="not built")
def test_the_2d_conditional_teacher_samples_row_i_near_mode_i_mod_8(tmp_path):
    t = teachers.get("zoo:8gaussians-cond-edm@w=1")
    assert t.kind == "vector" and t.extra["num_classes"] == 8
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0)) * t.sigma_max
    from fewstep import solvers

    with torch.no_grad():
        out = solvers.sample(t.denoiser, x, "ddim", nfe=20)
    angles = 2 * torch.pi * torch.arange(8) / 8
    modes = 1.4 * torch.stack([angles.cos(), angles.sin()], 1)
    assert (torch.cdist(out, modes).argmin(1) == torch.arange(64) % 8).float().mean() > 0.9
