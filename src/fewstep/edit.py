"""Zero-shot editing with a consistency student or any registered solver: inpainting,
colourisation, super-resolution and stroke-guided generation.

An observation is ``y = H x`` with a linear ``H`` whose rows are orthogonal with equal norm
(``H H^T = c I``), so ``H^+ = H^T / c`` and the estimate can be projected onto ``{x : H x = y}``
by ``x <- x + H^+ (y - H x)``. Every network estimate is projected (:class:`ProjectedDenoiser`):

- with the consistency sampler this is Song et al. 2023, Alg. 4 (their orthogonal ``A`` and
  mask ``Omega`` are the row space of ``H`` and its complement): ``x0 = f(x, sigma_i)``, project,
  re-noise to ``sigma_{i+1}``, repeat;
- with an ODE solver the known part obeys ``dx/dsigma = (x - y)/sigma``, which every
  registered solver integrates exactly, so ``H x_i = y + sigma_i H eps`` at every step: the
  known pixels are replaced by the observation noised with one fixed draw, and unknown pixels
  are denoised with that information (the replacement method of Song et al. 2021, ODE form).

Images are ``(batch, C, H, W)`` tensors in [-1, 1]; the start sample is ``H^+ y + sigma_0 z``.
Neither route is an exact posterior sampler: the unknown part sees the observation only through
the noisy state, so when the observation carries little information (e.g. 4x4 block means of an
8x8 digit) a trajectory can commit early to content that the projection then patches.
Schedules come from ``solvers.plan``: with the consistency sampler the last planned level is
``sigma_min``, where ``f`` is the identity, so pass a larger ``sigma_min`` (e.g. 0.2) to make
every evaluation count.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import solvers
from .denoiser import Denoiser
from .solvers.common import Generator, randn_like

__all__ = [
    "RGB_TO_GREY",
    "AvgPool",
    "Greyscale",
    "Inpaint",
    "LinearOperator",
    "ProjectedDenoiser",
    "add_arguments",
    "colorize",
    "edit_cli",
    "inpaint",
    "load_model",
    "load_png",
    "main",
    "restore",
    "save_png",
    "stroke_guided",
    "super_resolve",
]

RGB_TO_GREY = (0.2125, 0.7154, 0.0721)  # ITU-R BT.709 luma, as skimage.color.rgb2gray


class LinearOperator:
    """An observation ``y = H x`` with ``H H^T = c I``: forward, adjoint and pseudo-inverse."""

    def __call__(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def adjoint(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def pinv(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def project(self, x: Tensor, y: Tensor) -> Tensor:
        """The closest point to ``x`` with ``H x = y``: ``x + H^+ (y - H x)``."""
        return x + self.pinv(y - self(x))


@dataclass(frozen=True, eq=False)
class Inpaint(LinearOperator):
    """Keep the pixels where ``known`` is 1: ``H = diag(known)``, its own adjoint and
    pseudo-inverse; ``y`` is the image with unknown pixels zeroed."""

    known: Tensor

    def __post_init__(self) -> None:
        if not ((self.known == 0) | (self.known == 1)).all():
            raise ValueError("the inpainting mask must be binary (1 = known pixel)")

    def __call__(self, x: Tensor) -> Tensor:
        return self.known.to(x) * x

    def adjoint(self, y: Tensor) -> Tensor:
        return self(y)

    def pinv(self, y: Tensor) -> Tensor:
        return self(y)

    def project(self, x: Tensor, y: Tensor) -> Tensor:
        """Bit-exact replacement of the known pixels."""
        return torch.where(self.known.to(x.device) > 0, y.to(x), x)


@dataclass(frozen=True, eq=False)
class Greyscale(LinearOperator):
    """Colour to grey, ``y = sum_c w_c x_c`` (channel dim 1); ``H H^T = |w|^2 I``. Weights summing
    to 1 commute with the [0, 1] -> [-1, 1] pixel map."""

    weights: tuple[float, ...] = RGB_TO_GREY

    def _w(self, t: Tensor) -> Tensor:
        return torch.tensor(self.weights, dtype=t.dtype, device=t.device).view(1, -1, 1, 1)

    def __call__(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != len(self.weights):
            raise ValueError(f"colour input must be (batch, {len(self.weights)}, H, W); got "
                             f"{tuple(x.shape)}")
        return (self._w(x) * x).sum(1, keepdim=True)

    def adjoint(self, y: Tensor) -> Tensor:
        if y.ndim != 4 or y.shape[1] != 1:
            raise ValueError(f"grey input must be (batch, 1, H, W); got {tuple(y.shape)}")
        return self._w(y) * y

    def pinv(self, y: Tensor) -> Tensor:
        return self.adjoint(y) / sum(w * w for w in self.weights)


@dataclass(frozen=True, eq=False)
class AvgPool(LinearOperator):
    """Down-sampling by ``factor x factor`` average pooling; ``H H^T = I / factor^2``, so
    ``H^+`` is nearest-neighbour up-sampling."""

    factor: int

    def __post_init__(self) -> None:
        if int(self.factor) != self.factor or self.factor < 1:
            raise ValueError(f"factor must be a positive integer; got {self.factor!r}")

    def __call__(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"input {tuple(x.shape)} is not (batch, C, H, W) with H and W "
                             f"divisible by {self.factor}")
        return torch.nn.functional.avg_pool2d(x, self.factor)

    def adjoint(self, y: Tensor) -> Tensor:
        return self.pinv(y) / self.factor**2

    def pinv(self, y: Tensor) -> Tensor:
        return y.repeat_interleave(self.factor, -2).repeat_interleave(self.factor, -1)


@dataclass(frozen=True, eq=False)
class ProjectedDenoiser:
    """``D'(x, sigma) = project(D(x, sigma), y)``: every estimate agrees with the observation
    (Song et al. 2023, Alg. 4, line 7)."""

    denoiser: Denoiser
    op: LinearOperator
    y: Tensor

    def __call__(self, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        return self.op.project(self.denoiser(x, sigma, **cond), self.y.to(x))


def _solve(denoiser: Denoiser, x: Tensor, solver: str, nfe: int, sigma_min: float,
           sigma_max: float, generator: Generator, cond: Mapping[str, Any] | None,
           knobs: dict[str, Any]) -> Tensor:
    """Run a registered solver on a planned schedule (deterministic solvers ignore
    ``generator``)."""
    p = solvers.plan(solver, nfe, sigma_min=sigma_min, sigma_max=sigma_max)
    return solvers.get(solver)(denoiser, x, p.sigmas.to(x.dtype), cond=cond,
                               generator=generator, **p.knobs, **knobs)


def restore(denoiser: Denoiser, op: LinearOperator, y: Tensor, *, solver: str = "consistency",
            nfe: int = 4, sigma_min: float = 0.002, sigma_max: float = 80.0,
            generator: Generator = None, cond: Mapping[str, Any] | None = None,
            **knobs: Any) -> Tensor:
    """Sample ``x`` with ``H x = y`` from ``H^+ y + sigma_max z`` (Song et al. 2023, Alg. 4),
    spending ``nfe`` evaluations of ``solver`` on the Karras schedule ``sigma_max -> sigma_min``;
    ``cond`` goes to the denoiser, ``knobs`` to the solver."""
    x0 = op.pinv(y)
    x = x0 + sigma_max * randn_like(x0, generator)
    out = _solve(ProjectedDenoiser(denoiser, op, y), x, solver, nfe, sigma_min, sigma_max,
                 generator, cond, knobs)
    return op.project(out, y)


def inpaint(denoiser: Denoiser, image: Tensor, known: Tensor, **kw: Any) -> Tensor:
    """Fill the pixels where ``known`` is 0 and keep the others exactly (``kw``: ``restore``)."""
    op = Inpaint(torch.as_tensor(known).to(image).expand_as(image))
    return restore(denoiser, op, op(image), **kw)


def colorize(denoiser: Denoiser, grey: Tensor, *, weights: tuple[float, ...] = RGB_TO_GREY,
             **kw: Any) -> Tensor:
    """Colour images whose luma ``sum_c w_c x_c`` equals the ``(batch, 1, H, W)`` grey input."""
    return restore(denoiser, Greyscale(weights), grey, **kw)


def super_resolve(denoiser: Denoiser, low: Tensor, factor: int, **kw: Any) -> Tensor:
    """Images ``factor`` times larger whose ``factor x factor`` block means equal ``low``."""
    return restore(denoiser, AvgPool(factor), low, **kw)


def stroke_guided(denoiser: Denoiser, strokes: Tensor, *, sigma_start: float = 1.0,
                  solver: str = "consistency", nfe: int = 1, sigma_min: float = 0.002,
                  generator: Generator = None, cond: Mapping[str, Any] | None = None,
                  **knobs: Any) -> Tensor:
    """SDEdit (Meng et al. 2022, Alg. 1 ODE form; Song et al. 2023, Sec. 6.3): noise a stroke
    painting to ``sigma_start`` and solve to 0, so the result keeps its layout and colours."""
    x = strokes + sigma_start * randn_like(strokes, generator)
    return _solve(denoiser, x, solver, nfe, sigma_min, sigma_start, generator, cond, knobs)


# --- PNG in / PNG out -------------------------------------------------------------------------


def load_png(path: str | Path, channels: int | None = None,
             size: tuple[int, int] | None = None) -> Tensor:
    """A PNG as a ``(1, C, H, W)`` float32 tensor in [-1, 1]; optionally converted to 1 or 3
    ``channels`` (luma as :data:`RGB_TO_GREY`) and resized to ``size = (H, W)``.

    Raises FileNotFoundError for a missing file and ValueError naming the file for one that
    is not a readable image."""
    from skimage import color, transform

    img = _imread(path)
    img = img.astype(np.float32) / (65535.0 if img.dtype == np.uint16 else 255.0)
    if img.ndim == 2:
        img = img[..., None]
    img = img[..., :1] if img.shape[-1] == 2 else img[..., :3]  # drop alpha
    if channels == 1 and img.shape[-1] == 3:
        img = color.rgb2gray(img)[..., None]
    elif channels == 3 and img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    elif channels not in (None, img.shape[-1]):
        raise ValueError(f"cannot convert a {img.shape[-1]}-channel PNG to {channels} channels")
    if size is not None and tuple(img.shape[:2]) != tuple(size):
        img = transform.resize(img, size, order=1, anti_aliasing=True)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None].float() * 2 - 1


def _imread(path: str | Path) -> np.ndarray:
    """The pixels of an image file; errors name the file."""
    from .data.files import read_pixels

    return read_pixels(path)


def to_uint8(x: Tensor) -> np.ndarray:
    """A ``(C, H, W)`` tensor in [-1, 1] as an ``(H, W[, C])`` uint8 array (clipped)."""
    a = ((x.detach().double().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    a = a.transpose(1, 2, 0)
    return a[..., 0] if a.shape[-1] == 1 else a


def save_png(path: str | Path, x: Tensor, *, ncol: int | None = None, scale: int = 1) -> Path:
    """Save ``(C, H, W)`` or a ``(B, C, H, W)`` batch (as a grid of ``ncol`` columns, 1-pixel
    gaps) in [-1, 1] as an 8-bit PNG, optionally up-scaled ``scale`` times (nearest)."""
    from skimage import io

    x = x[None] if x.ndim == 3 else x
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected (C, H, W) or (B, C, H, W) with C in (1, 3); got "
                         f"{tuple(x.shape)}")
    b, c, h, w = x.shape
    ncol = ncol or math.ceil(math.sqrt(b))
    nrow = math.ceil(b / ncol)
    gap = int(b > 1)
    grid = torch.ones(c, nrow * (h + gap) - gap, ncol * (w + gap) - gap, dtype=x.dtype)
    for i, img in enumerate(x):
        r, q = divmod(i, ncol)
        grid[:, r * (h + gap):r * (h + gap) + h, q * (w + gap):q * (w + gap) + w] = img.cpu()
    grid = grid.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    io.imsave(str(path), to_uint8(grid), check_contrast=False)
    return path


# --- the `fewstep edit` command ---------------------------------------------------------------

TASKS = ("inpaint", "colorize", "super-resolve", "strokes")


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``fewstep edit``."""
    from .cli import positive_float, positive_int

    p.add_argument("task", choices=TASKS, help="what to do with the input image")
    p.add_argument("input", help="input PNG: the image to inpaint, the grey image, the "
                   "low-resolution image, or the stroke painting")
    p.add_argument("--model", required=True, help="a built-in teacher name (digits, patches, "
                   "shapes: exact empirical denoisers) or a training run / checkpoint directory "
                   "(e.g. a consistency student; images are edited at the input PNG's size)")
    p.add_argument("--out", default="edited.png", help="output PNG (default edited.png)")
    p.add_argument("--mask", help="inpaint: PNG whose white pixels are to be filled (holes); "
                   "default: the right half")
    p.add_argument("--factor", type=positive_int, default=2, help="super-resolve: up-scaling "
                   "factor")
    p.add_argument("--resize", action="store_true", help="resize an input or mask whose size "
                   "differs from the model's images (default: such a size is an error)")
    p.add_argument("--solver", default="consistency", help="consistency (Alg. 4 with a "
                   "consistency student) or any registered solver name (default consistency)")
    p.add_argument("--nfe", type=positive_int, default=4, help="network evaluations "
                   "(default 4)")
    p.add_argument("--sigma-min", type=positive_float, default=0.002, help="last noise level "
                   "of the Karras schedule; for the consistency sampler a larger value (e.g. 0.1) "
                   "makes the last evaluation useful")
    p.add_argument("--sigma-max", type=positive_float, default=80.0, help="first noise level")
    p.add_argument("--sigma-start", type=positive_float, default=1.0, help="strokes: noise "
                   "level the painting is raised to (SDEdit's t0; larger = more realism, less "
                   "fidelity)")
    p.add_argument("--samples", type=positive_int, default=4, help="samples drawn (saved as a "
                   "grid)")
    p.add_argument("--seed", type=int, default=0, help="first per-sample seed")
    p.add_argument("--scale", type=positive_int, default=1, help="nearest up-scaling of the "
                   "saved PNG")
    return p


def load_model(name: str) -> tuple[Denoiser, int | None, tuple[int, int] | None]:
    """``(denoiser, channels, (H, W))`` of a built-in teacher name, or of a training run's
    checkpoint directory (EMA weights; channels from the recorded architecture, size None: the
    input PNG's). ``channels`` is None for vector models."""
    from .bench import teachers

    if name in teachers.available():
        t = teachers.get(name)
        if len(t.sample_shape) != 3:
            return t.denoiser, None, None
        return t.denoiser, t.sample_shape[0], (t.sample_shape[1], t.sample_shape[2])
    if Path(name).is_dir():
        from .train import checkpoint_info, load_checkpoint

        return load_checkpoint(name), _find(checkpoint_info(name).get("model"),
                                            "in_channels"), None
    raise ValueError(f"unknown model {name!r}: neither a built-in teacher "
                     f"({', '.join(teachers.available())}) nor a checkpoint directory")


def _find(spec: Any, key: str) -> Any:
    """The first value of ``key`` in a nested architecture spec (None if absent)."""
    if not isinstance(spec, dict):
        return None
    if key in spec:
        return spec[key]
    for value in spec.values():
        found = _find(value, key)
        if found is not None:
            return found
    return None


def _png_size(path: str, factor: int = 1) -> tuple[int, int]:
    h, w = _imread(path).shape[:2]
    return h * factor, w * factor


def _load_sized(path: str, channels: int, size: tuple[int, int], resize: bool) -> Tensor:
    """``load_png(path, channels)``, which must be ``size`` pixels unless ``resize`` (then
    resized, and a line says so)."""
    image = load_png(path, channels)
    have = tuple(image.shape[-2:])
    if have == tuple(size):
        return image
    if not resize:
        raise ValueError(f"{path} is {have[0]}x{have[1]} pixels; expected {size[0]}x{size[1]} "
                         "(pass --resize to resize it)")
    print(f"resized {path} from {have[0]}x{have[1]} to {size[0]}x{size[1]} pixels")
    return load_png(path, channels, size)


def _read_input(args: argparse.Namespace, c: int, size: tuple[int, int]) -> tuple[Tensor,
                                                                                   Callable]:
    """The observation and the function that edits it, for ``args.task``."""
    h, w = size
    if args.task == "inpaint":
        image = _load_sized(args.input, c, (h, w), args.resize)
        if args.mask:
            known = (_load_sized(args.mask, 1, (h, w), args.resize) <= 0).float()
        else:
            known = torch.ones(1, 1, h, w)
            known[..., w // 2:] = 0
        return image, lambda D, x, **kw: inpaint(D, x, known.expand_as(x), **kw)
    if args.task == "colorize":
        if c != 3:
            raise ValueError(f"colorize needs a model of colour images; {args.model!r} makes "
                             f"{c}-channel images")
        return _load_sized(args.input, 1, (h, w), args.resize), colorize
    if args.task == "super-resolve":
        if h % args.factor or w % args.factor:
            raise ValueError(f"--factor {args.factor}: the model's {h}x{w} images are not "
                             "divisible by it")
        low = _load_sized(args.input, c, (h // args.factor, w // args.factor), args.resize)
        return low, lambda D, x, **kw: super_resolve(D, x, args.factor, **kw)
    strokes = _load_sized(args.input, c, (h, w), args.resize)
    return strokes, lambda D, x, **kw: stroke_guided(D, x, sigma_start=args.sigma_start, **kw)


def edit_cli(args: argparse.Namespace) -> int:
    """``fewstep edit``: read a PNG, edit it ``args.samples`` times, write a PNG grid."""
    D, c, size = load_model(args.model)
    if c is None:
        raise ValueError(f"model {args.model!r} does not generate images")
    factor = args.factor if args.task == "super-resolve" else 1
    y, run = _read_input(args, c, size or _png_size(args.input, factor))
    y = y.expand(args.samples, *y.shape[1:])
    gens = solvers.generators(range(args.seed, args.seed + args.samples))
    kw = {"solver": args.solver, "nfe": args.nfe, "sigma_min": args.sigma_min,
          "generator": gens}
    if args.task != "strokes":
        kw["sigma_max"] = args.sigma_max
    with torch.no_grad():
        out = run(D, y, **kw)
    path = save_png(args.out, out, scale=args.scale)
    print(f"{args.task}: {args.samples} sample(s), {args.solver} at {args.nfe} NFE -> {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m fewstep.edit inpaint in.png --model digits``,
    the same as ``fewstep edit ...`` (user errors: one line, exit status 2)."""
    import sys

    from .cli import main as cli_main

    return cli_main(["edit", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
