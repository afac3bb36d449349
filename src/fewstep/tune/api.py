"""``tune``: one entry point for every tuning method, with its cost counted.

Each method is one function in :data:`METHODS`, ``method(D, calibration, nfe, base, **options)
-> Result``; :func:`tune` builds the calibration set, runs the method on a counting copy of the
teacher (float64), validates on the disjoint set and returns the
:class:`~fewstep.tune.artefact.TunedSolver`.
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._registry import Registry
from ..bench.teachers import Teacher
from ..bench.teachers import get as get_teacher
from ..solvers.pas import BASES as PAS_BASES
from ..solvers.registry import get as get_solver
from . import ems
from .artefact import LEARNED_BASE, TunedSolver, fingerprint, nest_knobs
from .calibration import Calibration, CountingDenoiser, calibrate
from .learned import fit
from .pas import fit_pas
from .schedule import ays, base_plan, endpoint_loss, gits
from .solver import rollout

__all__ = ["METHODS", "tune", "validation_loss"]

V3 = "dpm_solver_v3"

# (base, sigmas, eval_sigmas, weights, x_weights, info, knobs): eval_sigmas, weights and
# x_weights only for learned solvers; knobs the base's further knobs (tensors by flat name, see
# TunedSolver.knob_tensors, and JSON values)
Result = tuple[str, Tensor, Tensor | None, Tensor | None, Tensor | None, dict[str, Any],
               dict[str, Any]]


def _gits(D: Any, c: Calibration, nfe: int, base: str, *, grid_size: int = 100,
          substeps: int = 4) -> Result:
    t = c.teacher
    sigmas, info = gits(D, c.x_cal, c.ref_cal, nfe, t.sigma_min, t.sigma_max,
                        grid_size=grid_size, substeps=substeps)
    return base, sigmas, None, None, None, info, {}


def _ays(D: Any, c: Calibration, nfe: int, base: str, *, init: str = "karras",
         sweeps: int = 3) -> Result:
    t = c.teacher
    start = _init(D, c, nfe, base, init)
    sigmas, info = ays(D, c.x_cal.double(), c.ref_cal, base, start, t.sigma_min, sweeps=sweeps)
    return base, sigmas, None, None, None, {**info, "init": init}, {}


def _learned(groups: tuple[str, ...]) -> Callable[..., Result]:
    def method(D: Any, c: Calibration, nfe: int, base: str, *, init: str = "karras",
               iters: int = 150, lr: float = 0.05, K: int = 3) -> Result:
        if base != "dpmpp_2m":
            raise ValueError(f"learned solvers start from DPM-Solver++(2M); base must be "
                             f"'dpmpp_2m', got {base!r}")
        start = _init(D, c, nfe, base, init)
        # the iterate is chosen on the validation noises, never on calibration (an S4S fit
        # on checkerboard at NFE 4 reached 1.75 held-out vs 0.166 untuned when it was)
        p, log = fit(D, c.x_cal, c.ref_cal, start, c.teacher.sigma_min, learn=groups, K=K,
                     iters=iters, lr=lr, x_val=c.x_val, ref_val=c.ref_val)
        info = {"init": init, "iters": iters, "lr": lr, "K": K, "learned": list(groups),
                "best_validation_mse": log["best_validation_mse"],
                "final_calibration_mse": log["calibration_mse"][-1]}
        return LEARNED_BASE, p.sigmas, p.eval_sigmas, p.weights, p.x_weights, info, {}
    return method


V3_VARIANTS = {"full": {}, "pseudo": {"predictor_pseudo": True, "corrector_pseudo": True}}


def _dpm_solver_v3(D: Any, c: Calibration, nfe: int, base: str, *, init: str = "karras",
                   grid_size: int = 80, substeps: int = 3, probes: int = 1) -> Result:
    """DPM-Solver-v3 with the teacher's EMS (:func:`fewstep.tune.ems.estimate`) on the
    calibration noises, on ``init``'s schedule; the full-order or pseudo-order predictor and
    corrector (:data:`V3_VARIANTS`) is chosen on the validation noises. When the best variant
    with the EMS is no better on validation than the best without them (the training-free
    ``l = 1, s = b = 0``; noisy statistics of a memorising denoiser do this), the EMS are
    dropped, ``info["fallback"]`` says so and a warning is issued. Every variant's validation
    loss, with and without the statistics, goes to the info."""
    t = c.teacher
    sigmas = _init(D, c, nfe, V3, init)
    st, info = ems.estimate(D, c.x_cal, t.sigma_min, t.sigma_max, grid_size=grid_size,
                            substeps=substeps, probes=probes)
    tensors = {f"statistics.{k}": v for k, v in st.tensors().items()}
    val, plain = ({name: validation_loss(D.inner, c, V3, sigmas, knobs={**extra, **v})
                   for name, v in V3_VARIANTS.items()} for extra in (tensors, {}))
    chosen = min(val, key=val.__getitem__)
    info = {**info, "init": init, "validation_by_variant": val,
            "validation_without_ems": plain, "val_without_ems": plain[chosen]}
    free = min(plain, key=plain.__getitem__)
    if val[chosen] < plain[free]:
        return V3, sigmas, None, None, None, {**info, "variant": chosen, "ems": "kept"}, \
            {**tensors, **V3_VARIANTS[chosen]}
    note = (f"EMS dropped: worse on validation ({val[chosen]:.4g}) than the training-free "
            f"l = 1, s = b = 0 ({plain[free]:.4g})")
    warnings.warn(f"dpm_solver_v3 at NFE {nfe}: {note}; the solver keeps the training-free "
                  "coefficients", stacklevel=3)
    return V3, sigmas, None, None, None, {**info, "variant": free, "ems": "dropped",
                                          "fallback": note}, dict(V3_VARIANTS[free])


def _init(D: Any, c: Calibration, nfe: int, base: str, init: str) -> Tensor:
    """The starting schedule: ``base``'s Karras plan or the GITS schedule."""
    t = c.teacher
    if init == "karras":
        return base_plan(base, nfe, t.sigma_min, t.sigma_max)
    if init == "gits":
        return gits(D, c.x_cal, c.ref_cal, nfe, t.sigma_min, t.sigma_max)[0]
    raise ValueError(f"unknown init {init!r}; expected 'karras' or 'gits'")


def _pas(D: Any, c: Calibration, nfe: int, base: str, *, init: str = "karras", k: int = 4,
         tol: float = 1e-3, substeps: int = 8) -> Result:
    """PAS (:func:`fewstep.tune.pas.fit_pas`) on ``base`` (``ddim`` or ``ipndm``) on
    ``init``'s schedule; the coordinates are dropped (the base solver kept) unless the
    endpoint loss is no worse than the base's on calibration and on validation."""
    if base not in PAS_BASES:
        raise ValueError(f"PAS corrects the direction of {' or '.join(PAS_BASES)}; got base "
                         f"{base!r}")
    sigmas = _init(D, c, nfe, base, init)
    coords, log = fit_pas(D, c.x_cal, c.ref_cal, c.x_val, c.ref_val, sigmas, base=base, k=k,
                          tol=tol, substeps=substeps)
    x_cal = c.x_cal.double()
    losses = {name: (endpoint_loss(D, x_cal, c.ref_cal, "pas", sigmas, knobs),
                     validation_loss(D.inner, c, "pas", sigmas, knobs=knobs))
              for name, knobs in (("base", {"base": base}),
                                  ("pas", {"base": base, "coords": coords}))}
    kept = all(t <= b for t, b in zip(losses["pas"], losses["base"], strict=True))
    if not kept:
        coords = torch.zeros_like(coords)
    info = {"init": init, "k": k, "tol": tol, "substeps": substeps, "steps_corrected":
            log["kept"] if kept else [], "endpoint_losses": losses, "kept": kept}
    return "pas", sigmas, None, None, None, info, {"coords": coords, "base": base}


METHODS: Registry[Callable[..., Result]] = Registry("tuning method", {
    "gits": _gits,                                    # Chen et al. 2024
    "ays": _ays,                                      # Sabour et al. 2024 (endpoint objective)
    "ld3": _learned(("sigmas", "eval")),              # Tong et al. 2025
    "s4s": _learned(("sigmas", "eval", "weights", "x")),  # Frankel et al. 2025 (S4S-Alt-like)
    "dpm_solver_v3": _dpm_solver_v3,                  # Zheng et al. 2023 (EMS computed once)
    "pas": _pas,                                      # Wang et al. 2024
})


def validation_loss(D: Any, c: Calibration, base: str, sigmas: Tensor,
                    eval_sigmas: Tensor | None = None, weights: Tensor | None = None,
                    x_weights: Tensor | None = None,
                    knobs: dict[str, Any] | None = None) -> float:
    """ode_rmse of a (tuned or untuned) solver on the validation set; ``knobs`` are the base
    solver's further knobs (tensors may come by flat name, ``"statistics.l"``)."""
    if weights is None:
        return endpoint_loss(D, c.x_val.double(), c.ref_val, base, sigmas,
                             nest_knobs(knobs or {}))
    assert eval_sigmas is not None
    with torch.no_grad():
        out = rollout(D, c.x_val.double(), sigmas, eval_sigmas, weights, x_weights)
    return float((out - c.ref_val).pow(2).mean().sqrt())


def tune(teacher: Teacher | str, method: str, nfe: int, *, base: str = "dpmpp_2m",
         n_cal: int = 128, n_val: int = 128, seed: int = 0, rtol: float = 1e-6,
         cache: str | Path = ".fewstep-cache/references", **options: Any) -> TunedSolver:
    """Tune ``method`` (a key of :data:`METHODS`) for ``teacher`` at exactly ``nfe``
    evaluations, from the registered multistep solver ``base``; ``options`` go to the method
    (e.g. ``iters=``, ``init="gits"``). The calibration and validation sets are ``n_cal`` and
    ``n_val`` start noises of the reserved seeds of ``seed``. ``tuning_seconds`` is the wall
    time of calibration and search; ``info["cpu_seconds"]`` the process CPU time.
    Raises ``ValueError`` naming a bad method, base, NFE or option."""
    fit_method = METHODS[method]  # UnknownNameError (a ValueError) listing the methods
    spec = get_solver(base)
    if spec.kind != "multistep" or spec.stochastic:
        raise ValueError(f"base solver {base!r} must be a deterministic multistep solver "
                         f"(one evaluation per step); it is {spec.kind}"
                         + (", stochastic" if spec.stochastic else ""))
    if int(nfe) != nfe or nfe < 2:
        raise ValueError(f"nfe must be an integer >= 2; got {nfe!r}")
    defaults = {n: p.default for n, p in inspect.signature(fit_method).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
    if unknown := sorted(set(options) - set(defaults)):
        raise ValueError(f"tuning method {method!r} has no option {unknown[0]!r}; it accepts "
                         f"{', '.join(defaults)}")
    for key, value in options.items():  # a number option given text (e.g. k=abc)
        if isinstance(defaults.get(key), int | float) and not isinstance(defaults[key], bool) \
                and not isinstance(value, int | float):
            raise ValueError(f"tuning method {method!r}: option {key}={value!r} must be a "
                             f"number (default {defaults[key]!r})")
    if isinstance(teacher, str):
        teacher = get_teacher(teacher)
    wall, cpu = time.perf_counter(), time.process_time()
    c = calibrate(teacher, n_cal, n_val, seed=seed, rtol=rtol, cache=cache)
    D = CountingDenoiser(c.denoiser)
    base_used, sigmas, xi, W, A, info, knobs = fit_method(D, c, int(nfe), base, **options)
    rows = D.counter.rows + c.teacher_rows
    seconds, cpu = time.perf_counter() - wall, time.process_time() - cpu
    untuned = validation_loss(D.inner, c, base, base_plan(base, int(nfe), teacher.sigma_min,
                                                          teacher.sigma_max))
    tuned = validation_loss(D.inner, c, base_used, sigmas, xi, W, A, knobs)
    if tuned > untuned:
        warnings.warn(f"tuning method {method!r} at NFE {nfe}: the tuned solver is worse on "
                      f"validation than its untuned base {base!r} ({tuned:.4g} vs {untuned:.4g});"
                      " keep the base solver", stacklevel=2)
    return TunedSolver(
        method=method, base=base_used, nfe=int(nfe), sigmas=sigmas.double().detach(),
        teacher=teacher.name, teacher_fingerprint=fingerprint(teacher.denoiser), n_cal=n_cal,
        n_val=n_val, val_loss=tuned, base_val_loss=untuned, tuning_seconds=seconds,
        teacher_rows=rows, eval_sigmas=xi, weights=W, x_weights=A,
        knob_tensors={k: v for k, v in knobs.items() if isinstance(v, Tensor)},
        knob_values={k: v for k, v in knobs.items() if not isinstance(v, Tensor)},
        info={**info, "cpu_seconds": cpu, "from": base, "seeds": list(c.seeds),
              "reference_rtol": rtol, "options": options})
