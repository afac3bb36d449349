"""PAS: zero coordinates are the base solver exactly, the fitted coordinates never make the
calibration (or validation) endpoint worse than the base, and they improve a toy teacher."""

from __future__ import annotations

import pytest
import torch

from fewstep import solvers, tune
from fewstep.bench.runner import reference, start_noise
from fewstep.bench.teachers import get as get_teacher
from fewstep.tune.schedule import base_plan, endpoint_loss


@pytest.mark.parametrize("base", ["ddim", "ipndm"])
def test_zero_coordinates_are_the_base_solver(base):
    teacher = get_teacher("gmm16")
    x = start_noise(teacher, 0, 8)
    sig = base_plan(base, 6, teacher.sigma_min, teacher.sigma_max)
    want = solvers.get(base)(teacher.denoiser, x, sig)
    pas = solvers.get("pas")
    zero = pas(teacher.denoiser, x, sig, base=base)  # the base's update, to rounding
    torch.testing.assert_close(zero, want, rtol=0, atol=1e-12)
    assert torch.equal(pas(teacher.denoiser, x, sig, base=base,
                           coords=torch.zeros(6, 4, dtype=torch.float64)), zero)
    assert not torch.equal(pas(teacher.denoiser, x, sig, base=base,
                               coords=torch.full((6, 4), 0.01, dtype=torch.float64)), want)


def test_bad_knobs_are_one_clear_line():
    x = torch.randn(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown PAS base 'heun'"):
        solvers.get("pas")(lambda x, s: x, x, [1.0, 0.0], base="heun")
    with pytest.raises(ValueError, match=r"coords must have shape \(1, k\)"):
        solvers.get("pas")(lambda x, s: x, x, [1.0, 0.0], coords=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="PAS corrects the direction of ddim or ipndm"):
        tune.tune("gmm2", "pas", 4, n_cal=4, n_val=4, cache="/nonexistent-never-made")


@pytest.mark.parametrize("base", ["ddim", "ipndm"])
def test_pas_never_worse_on_calibration_and_improves_a_toy_teacher(tmp_path, base):
    t = tune.tune("gmm16", "pas", 5, base=base, n_cal=64, n_val=64, cache=tmp_path / "c")
    c = tune.calibrate("gmm16", 64, 64, cache=tmp_path / "c")
    D = c.denoiser
    base_cal = endpoint_loss(D, c.x_cal.double(), c.ref_cal, base, t.sigmas)
    knobs = t.knobs
    tuned_cal = endpoint_loss(D, c.x_cal.double(), c.ref_cal, "pas", t.sigmas, knobs)
    assert tuned_cal <= base_cal and t.val_loss <= t.base_val_loss
    assert t.info["kept"] and t.info["steps_corrected"]  # on this toy it corrects some steps
    assert t.val_loss < 0.9 * t.base_val_loss  # and helps on validation
    # ... and on the bench's held-out noise
    teacher = get_teacher("gmm16")
    x, ref = start_noise(teacher, 0, 128), reference(teacher, 0, 128, 1e-6, tmp_path / "c")
    path = t.save(tmp_path / "pas")
    held_out = endpoint_loss(D, x, ref, str(path), solvers.plan(str(path), 5).sigmas)
    assert held_out < endpoint_loss(D, x, ref, base, t.sigmas)
    assert torch.equal(tune.load(path).knob_tensors["coords"], t.knob_tensors["coords"])
