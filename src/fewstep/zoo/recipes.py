"""Recipes of the zoo: how each small trained teacher and student is made.

A recipe names everything that determines the weights -- the data set, the backbone (a
``fewstep.nets`` spec), the preconditioning, the method and its hyper-parameters, the loop's
settings (steps, batch, learning rate, EMA, seed) and, for a student, the zoo teacher it is
distilled from. :func:`fewstep.zoo.build` runs it through :func:`fewstep.train.train`; on CPU
with one thread the result is bitwise repeatable on one machine and torch build.

Budgets are small on purpose: every entry trains in minutes on one CPU core, so the quick
suite can compare trained teachers and their students without a GPU. They are usable, not
converged: each student's row in the bench carries what it cost to make.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._registry import Registry

__all__ = ["RECIPES", "Recipe", "recipe"]

SIGMA_MIN = 0.002
LCD_STEPS, LCD_W_MAX = 500, 4.0  # digits-latent-lcd: chosen on validation


@dataclass(frozen=True)
class Recipe:
    """Everything that makes one zoo entry (see the module docstring).

    ``backbone`` is a :func:`fewstep.nets.spec.model_spec` of the raw network, wrapped in
    ``EDMPrecond`` (teachers, PD, KD, UFOGen and ADD students) or ``ConsistencyPrecond``
    (consistency students) with ``sigma_data``; an autoencoder (method ``autoencoder``) and a
    student of its own architecture (``fewstep.distill.WHOLE_NETWORKS``: a DDGAN or SIDDM
    generator/discriminator pair, a DFNO trajectory operator) is the backbone itself; the
    entry keeps a pair's generator only. A latent teacher names the zoo ``autoencoder`` whose
    latents (of ``data``'s train split, labels kept, scaled to unit std) it is trained on
    (:mod:`fewstep.latent`).
    ``params`` are the method's hyper-parameters; for iCT ``total_steps`` defaults to
    ``steps``, and PD's ``steps`` must equal its rounds' total. ``betas`` and ``grad_clip``
    are the loop's Adam betas and gradient-norm clip (adversarial students use GAN-style
    ``beta1 = 0.5``, DDGAN and SIDDM no clipping, as their benchmarks did).
    """

    name: str
    data: str  # a built-in data set (train split)
    method: str  # "edm" for a teacher, else a distillation method
    backbone: Mapping[str, Any]
    steps: int
    batch_size: int
    lr: float
    sigma_data: float = 0.5
    params: Mapping[str, Any] = field(default_factory=dict)
    teacher: str | None = None  # the zoo teacher a student is distilled from
    seed: int = 0
    ema_decay: float = 0.995
    warmup_steps: int = 0
    data_n: int | None = None  # samples drawn from an infinite (2-D toy) data set
    description: str = ""
    autoencoder: str | None = None  # a latent teacher's zoo autoencoder
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's
    grad_clip: float | None = 1.0  # max global gradient norm; None: no clipping

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))  # a JSON list reads back equal

    @property
    def role(self) -> str:
        """"teacher" (an EDM denoiser trained on data or latents), "autoencoder" or
        "student"."""
        return {"edm": "teacher", "autoencoder": "autoencoder"}.get(self.method, "student")


def _mlp(hidden: int = 128, depth: int = 3, num_classes: int = 0) -> dict[str, Any]:
    return {"class": "MLPDenoiserNet", "kwargs": {
        "dim": 2, "hidden": hidden, "depth": depth, "emb_dim": 64,
        "cond_type": "label" if num_classes else "none", "num_classes": num_classes}}


def _unet(in_channels: int, channels: int, num_classes: int = 0,
          w_embedding: bool = False, channel_mult: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    """A UNet spec (2 levels by default, one per ``channel_mult`` entry); ``num_classes`` > 0
    makes it class-conditional (``cond=labels``) and ``w_embedding`` adds a guidance-scale
    input ``w=`` (a guided-distillation student)."""
    kwargs: dict[str, Any] = {"in_channels": in_channels, "channels": channels,
                              "channel_mult": list(channel_mult), "num_res_blocks": 1,
                              "emb_dim": 64,
                              "cond_type": "label" if num_classes else "none",
                              "num_classes": num_classes, "dropout": 0.0}
    if w_embedding:
        kwargs["w_embedding"] = True
    return {"class": "UNet", "kwargs": kwargs}


def _toy_teacher(data: str) -> Recipe:
    return Recipe(f"{data}-edm", data, "edm", _mlp(), steps=1500, batch_size=256, lr=2e-3,
                  sigma_data=1.0, params={"sigma_data": 1.0}, ema_decay=0.998,
                  warmup_steps=100, data_n=20_000,
                  description=f"EDM teacher, residual MLP (128 wide, 3 blocks) on {data}")


def _student(teacher: Recipe, method: str, **kw: Any) -> Recipe:
    """A ``method`` student of ``teacher`` on its data, batch and sigma_data (its backbone
    unless ``backbone=`` says otherwise); ``kw`` sets the rest of the recipe."""
    kw.setdefault("backbone", teacher.backbone)
    return Recipe(f"{teacher.name.removesuffix('-edm')}-{method}", teacher.data, method,
                  batch_size=teacher.batch_size, sigma_data=teacher.sigma_data,
                  teacher=teacher.name, data_n=teacher.data_n,
                  description=kw.pop("description", f"{method} student of {teacher.name}"), **kw)


def _students(teacher: Recipe, steps: Mapping[str, int], lr: Mapping[str, float],
              params: Mapping[str, Mapping[str, Any]]) -> list[Recipe]:
    """The students of ``teacher``: its data, backbone and sigma_data, one recipe per method."""
    return [_student(teacher, m, steps=n, lr=lr[m], params=dict(params.get(m, {})))
            for m, n in steps.items()]


def _gan_pair(method: str, dim: int = 2, hidden: int = 128, depth: int = 2,
              emb_dim: int = 64) -> dict[str, Any]:
    """The spec of :func:`fewstep.distill.gan_pair` ``((dim,), method, width=hidden,
    depth=depth)``: a DDGAN/SIDDM generator (an MLP on ``[x, z]``) and an MLP discriminator
    that takes ``x_t`` beside ``x_{t-1}`` for DDGAN and not for SIDDM."""
    size = {"hidden": hidden, "depth": depth, "emb_dim": emb_dim}
    net = {"class": "MLPDenoiserNet", "kwargs": {"dim": 2 * dim, **size}}
    return {"class": "AdversarialPair", "kwargs": {
        "generator": {"class": "LatentPrecond", "kwargs": {"net": net, "channels": dim}},
        "discriminator": {"class": "MLPDiscriminator", "kwargs": {
            "dim": dim, "cond_dim": dim if method == "ddgan" else 0, **size}}}}


def _hybrids(teacher: Recipe, gan_steps: int, distill_steps: int, dfno_steps: int,
             dfno_width: int) -> list[Recipe]:
    """The diffusion-GAN, adversarial-distillation and operator students of a 2-D ``teacher``,
    with the settings their standalone benchmarks found to work (issue 15):

    - DDGAN and SIDDM (``benchmarks/diffusion_gan.py``): T = 4, width-128 MLP pair, Adam lr
      2e-4 with betas (0.5, 0.9), no gradient clipping, EMA 0.999; trained on the data (the
      teacher only names the bench rows they sit on);
    - UFOGen and ADD (``benchmarks/gan_distill.py``): initialised from the teacher, Adam lr
      5e-4 with betas (0.5, 0.999), EMA 0.995; UFOGen one level and reconstruction weight
      0.1, ADD four student levels;
    - DFNO (``benchmarks/operator_vs_kd.py``): 4 096 iPNDM-16 teacher trajectories kept at 8
      slots, depth 2, 4 Fourier modes, lr 1e-3, EMA 0.995.
    """
    sd = teacher.sigma_data
    gan = dict(steps=gan_steps, lr=2e-4, betas=(0.5, 0.9), grad_clip=None, ema_decay=0.999,
               params={"T": 4})
    distill = dict(steps=distill_steps, lr=5e-4, betas=(0.5, 0.999), ema_decay=0.995)
    operator = {"class": "TrajectoryOperator", "kwargs": {
        "shape": [2], "sigma_max": 80.0, "width": dfno_width, "depth": 2, "modes": 4,
        "emb_dim": 64, "sigma_data": sd}}
    return [
        _student(teacher, "ddgan", backbone=_gan_pair("ddgan"), **gan,
                 description=f"DDGAN (T=4) trained on {teacher.data}, benched on "
                 f"{teacher.name}"),
        _student(teacher, "siddm", backbone=_gan_pair("siddm"), **gan,
                 description=f"SIDDM (T=4, AFD weight 1) trained on {teacher.data}, benched "
                 f"on {teacher.name}"),
        _student(teacher, "ufogen", params={"num_scales": 1, "rec_weight": 0.1},
                 **distill),
        _student(teacher, "add", params={"num_student_steps": 4},
                 **distill),
        _student(teacher, "dfno", backbone=operator, steps=dfno_steps, lr=1e-3,
                 ema_decay=0.995, params={"num_pairs": 4096, "solver": "ipndm", "nfe": 16,
                                          "slots": 8}),
    ]


def _image_teacher(data: str, in_channels: int, steps: int) -> Recipe:
    """An EDM teacher on a 16x16 image set: a 3-level UNet (16/32/32 channels, attention at
    4x4), digits-edm's loop settings; a third level keeps a step cheaper than two levels
    (attention over 16 pixels instead of 64) and widens the receptive field to the image."""
    return Recipe(f"{data}-edm", data, "edm", _unet(in_channels, 16, channel_mult=(1, 2, 2)),
                  steps=steps, batch_size=64, lr=2e-3, sigma_data=0.5,
                  params={"sigma_data": 0.5}, ema_decay=0.998, warmup_steps=100,
                  description=f"EDM teacher, UNet (16/32/32 channels, 3 levels) on {data} "
                  f"{in_channels}x16x16")


_CHECKERBOARD = _toy_teacher("checkerboard")
# A digits teacher: a 2-level UNet (16, 32 channels) on the 8x8 digits' train split.
_DIGITS = Recipe("digits-edm", "digits", "edm", _unet(1, 16), steps=600, batch_size=64,
                 lr=2e-3, sigma_data=0.5, params={"sigma_data": 0.5}, ema_decay=0.998,
                 warmup_steps=100,
                 description="EDM teacher, UNet (16/32 channels, 2 levels) on digits 8x8")

# Latent diffusion on digits: a VAE (8x8 -> 2x4x4, KL weight 1e-3) and a class-conditional
# EDM teacher on its scaled latents, label dropout 0.1 for classifier-free guidance.
_DIGITS_VAE = Recipe("digits-vae", "digits", "autoencoder",
                     {"class": "ConvAutoencoder", "kwargs": {"in_channels": 1,
                                                             "latent_channels": 2,
                                                             "channels": 32, "levels": 1}},
                     steps=800, batch_size=64, lr=2e-3, params={"kl_weight": 1e-3},
                     ema_decay=0.998, warmup_steps=100,
                     description="VAE (8x8 -> 2x4x4 latent, KL weight 1e-3) on digits")
_DIGITS_LATENT = Recipe("digits-latent-edm", "digits", "edm",
                        {**_unet(2, 32), "kwargs": {**_unet(2, 32)["kwargs"],
                                                    "cond_type": "label", "num_classes": 10}},
                        steps=800, batch_size=64, lr=2e-3, sigma_data=1.0,
                        params={"sigma_data": 1.0, "label_dropout": 0.1}, ema_decay=0.998,
                        warmup_steps=100, autoencoder="digits-vae",
                        description="class-conditional latent EDM teacher (label dropout 0.1), "
                        "UNet (32/64 channels) on digits-vae's 2x4x4 latents")

# A class-conditional digits teacher for classifier-free guidance: digits-edm's UNet with a
# label embedding, trained with label dropout 0.15 (Ho & Salimans 2022) on the labelled train
# split (a backbone with num_classes > 0 is trained on Dataset.load_labelled).
_DIGITS_COND = Recipe("digits-cond-edm", "digits", "edm", _unet(1, 16, num_classes=10),
                      steps=500, batch_size=64, lr=2e-3, sigma_data=0.5,
                      params={"sigma_data": 0.5, "label_dropout": 0.15}, ema_decay=0.998,
                      warmup_steps=100,
                      description="class-conditional EDM teacher (label dropout 0.15), UNet "
                      "(16/32 channels, 2 levels) on digits 8x8, 10 classes")

_GAUSSIANS_COND = Recipe("8gaussians-cond-edm", "8gaussians", "edm", _mlp(num_classes=8),
                         steps=1500, batch_size=256, lr=2e-3, sigma_data=1.0,
                         params={"sigma_data": 1.0, "label_dropout": 0.15}, ema_decay=0.998,
                         warmup_steps=100, data_n=20_000,
                         description="class-conditional EDM teacher (label dropout 0.15), "
                         "residual MLP (128 wide, 3 blocks) on 8gaussians, 8 classes (modes)")


def _guided_chain(teacher: Recipe, w_range: tuple[float, float], steps: int,
                  base_steps: int, final_steps: int, steps_per_round: int) -> list[Recipe]:
    """Guided distillation of a class-conditional ``teacher`` (Meng et al. 2023): stage 1
    (``NAME-guided``, a w-conditioned student, ``steps`` optimiser steps), then stage 2 as a
    chain of one-round progressive distillations ``NAME-guided-pdK`` halving the student's
    steps from ``base_steps`` to ``final_steps``, each distilled from the previous one on
    the nested grids of ``karras(base_steps)``."""
    base = teacher.name.removesuffix("-edm")
    kwargs = {**teacher.backbone["kwargs"], "w_embedding": True}
    backbone = {**teacher.backbone, "kwargs": kwargs}
    common: dict[str, Any] = {"data": teacher.data, "backbone": backbone,
                              "batch_size": teacher.batch_size,
                              "sigma_data": teacher.sigma_data, "data_n": teacher.data_n}
    chain = [Recipe(f"{base}-guided", method="guided", steps=steps, lr=4e-4, ema_decay=0.99,
                    params={"w_min": w_range[0], "w_max": w_range[1],
                            "sigma_data": teacher.sigma_data}, teacher=teacher.name,
                    description=f"guided distillation stage 1 (w in [{w_range[0]:g}, "
                    f"{w_range[1]:g}]) of {teacher.name}", **common)]
    k = base_steps
    while k > final_steps:
        chain.append(Recipe(
            f"{base}-guided-pd{k // 2}", method="pd", steps=steps_per_round, lr=4e-4,
            ema_decay=0.98, teacher=chain[-1].name,
            params={"teacher_steps": k, "final_steps": k // 2, "base_steps": base_steps,
                    "steps_per_round": steps_per_round, "sigma_data": teacher.sigma_data,
                    "guidance": list(w_range)},
            description=f"guided distillation stage 2: {k // 2}-step PD student of "
            f"{chain[-1].name}", **common))
        k //= 2
    return chain


_DIGITS_GUIDED = _guided_chain(_DIGITS_COND, (0.0, 4.0), steps=300, base_steps=16,
                               final_steps=1, steps_per_round=100)

# A latent consistency model (Luo et al. 2023) of the latent teacher: LCD on the guided PF-ODE
# in digits-vae's latent space, w (fewstep's CFG scale D_u + w (D_c - D_u)) drawn per row from
# [1, W_MAX]; the w range and step count are the ones chosen on validation by
# benchmarks/lcm_digits.py --latent (benchmarks/results/lcm_latent.md).
_DIGITS_LATENT_LCD = Recipe(
    "digits-latent-lcd", "digits", "lcd",
    {**_DIGITS_LATENT.backbone, "kwargs": {**_DIGITS_LATENT.backbone["kwargs"],
                                           "w_embedding": True}},
    steps=LCD_STEPS, batch_size=64, lr=4e-4, sigma_data=1.0, ema_decay=0.99,
    params={"N": 30, "k": 3, "solver": "euler", "w_min": 1.0, "w_max": LCD_W_MAX, "mu": 0.95,
            "distance": "pseudo_huber"},
    teacher="digits-latent-edm", autoencoder="digits-vae",
    description=f"latent consistency distillation (w in [1, {LCD_W_MAX:g}], k=3) of "
    "digits-latent-edm in digits-vae's 2x4x4 latents")

_TOY_STUDENTS = _students(
    _CHECKERBOARD,
    steps={"cd": 300, "ct": 300, "ect": 200, "pd": 150, "kd": 200, "direct_cm": 150},
    lr={"cd": 1e-3, "ct": 1e-3, "ect": 2e-4, "pd": 1e-3, "kd": 1e-3, "direct_cm": 1e-3},
    params={"cd": {"N": 18, "solver": "heun", "mu": 0.95},
            "ect": {"double_every": 25},
            "pd": {"teacher_steps": 8, "steps_per_round": 50, "sigma_data": 1.0},
            "kd": {"num_pairs": 1024, "solver": "ipndm", "nfe": 16},
            "direct_cm": {"num_scales": 10, "solver": "ipndm", "nfe": 8}})
_DIGITS_STUDENTS = _students(
    _DIGITS,
    steps={"cd": 100, "ct": 150, "ect": 100, "pd": 80, "kd": 80, "direct_cm": 60},
    lr={"cd": 4e-4, "ct": 1e-3, "ect": 2e-4, "pd": 4e-4, "kd": 4e-4, "direct_cm": 4e-4},
    params={"cd": {"N": 18, "solver": "heun", "mu": 0.95},
            "ect": {"double_every": 12},
            "pd": {"teacher_steps": 4, "steps_per_round": 40, "sigma_data": 0.5},
            "kd": {"num_pairs": 256, "solver": "ipndm", "nfe": 10},
            "direct_cm": {"num_scales": 8, "solver": "ipndm", "nfe": 6}})

_TOY_HYBRIDS = _hybrids(_CHECKERBOARD, gan_steps=1000, distill_steps=300, dfno_steps=400,
                        dfno_width=64)

RECIPES: Registry[Recipe] = Registry("zoo entry", {r.name: r for r in (
    _CHECKERBOARD, *_TOY_STUDENTS, *_TOY_HYBRIDS, _DIGITS, *_DIGITS_STUDENTS, _DIGITS_VAE,
    _DIGITS_LATENT, _DIGITS_LATENT_LCD, _DIGITS_COND, *_DIGITS_GUIDED, _GAUSSIANS_COND,
    _image_teacher("shapes", 1, steps=1000), _image_teacher("patches", 3, steps=1000),
    *(_toy_teacher(d) for d in ("moons", "8gaussians", "swissroll", "rings", "pinwheel")))})


def recipe(name: str) -> Recipe:
    """The recipe called ``name``; :class:`~fewstep._registry.UnknownNameError` (a ValueError)
    listing the zoo otherwise."""
    return RECIPES[name]
