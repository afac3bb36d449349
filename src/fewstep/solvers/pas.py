"""PAS: PCA-based adaptive search (Wang et al. 2024, "PCA-based adaptive search for
accelerated diffusion sampling"), the solver half; :mod:`fewstep.tune.pas` learns the
coordinates.

A base solver's sampling direction ``d_i`` (DDIM: ``eps_i = (x_i - D_i) / sigma_i``; iPNDM: the
Adams-Bashforth mix of the stored ``eps``) is corrected within the span of the trajectory so
far: the top ``k`` right singular vectors ``u_1..u_k`` of ``[x_0, d~_0, ..., d~_{i-1}, d_i]``
(per sample; each sign fixed so that ``<u_j, d_i> >= 0``) and

    d~_i = d_i + |d_i| sum_j c_{i,j} u_j,      x_{i+1} = x_i + (sigma_{i+1} - sigma_i) d~_i,

with learned coordinates ``c`` (n, k); a zero row leaves step i the base solver's exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .common import Callback, emit, eps_of, lincomb, prepare
from .driver import SolverFunction, Steps
from .multistep import _AB
from .registry import register

__all__ = ["BASES", "basis", "direction", "pas_steps", "sample_pas"]

BASES = {"ddim": 1, "ipndm": 4}  # base solver -> how many eps its direction combines


def direction(eps: list[Tensor]) -> Tensor:
    """The base direction from the stored noise estimates (newest first): Adams-Bashforth of
    order ``len(eps)`` (DDIM for one)."""
    return lincomb(*((w, e) for w, e in zip(_AB[len(eps) - 1], eps, strict=True)))


def basis(x0: Tensor, taken: list[Tensor], d: Tensor, k: int) -> Tensor:
    """(N, k', *shape) orthonormal PCA directions (k' = min(k, len(taken) + 2)) of each
    sample's ``[x0, *taken, d]`` by SVD, signed towards ``d``."""
    M = torch.stack([x0, *taken, d], 1).flatten(2)  # (N, m, dim)
    _, _, Vh = torch.linalg.svd(M, full_matrices=False)
    U = Vh[:, :k]
    sign = torch.sign((U * d.flatten(1)[:, None]).sum(-1, keepdim=True))
    U = U * torch.where(sign == 0, torch.ones_like(sign), sign)
    return U.view(U.shape[0], U.shape[1], *d.shape[1:])


def corrected(d: Tensor, U: Tensor, c: Tensor) -> Tensor:
    """``d + |d| sum_j c_j u_j`` (``c`` of length >= U's k'; the extra entries unused)."""
    norm = d.flatten(1).norm(dim=1).view(-1, *[1] * (d.ndim - 1))
    kk = U.shape[1]
    return d + norm * torch.einsum("j,nj...->n...", c[:kk].to(d), U)


def pas_steps(x: Tensor, sigmas: Tensor, *, coords: Tensor | None = None, base: str = "ddim",
              callback: Callback = None) -> Steps:
    """PAS on ``base`` (a key of :data:`BASES`) with coordinates ``coords`` (n, k) for the n
    steps (None or zeros: the base solver). Raises ``ValueError`` on an unknown base or
    coordinates of the wrong length."""
    if base not in BASES:
        raise ValueError(f"unknown PAS base {base!r}; expected one of {', '.join(BASES)}")
    s = prepare(x, sigmas)
    n = len(s) - 1
    c = None if coords is None else torch.as_tensor(coords, dtype=torch.float64)
    if c is not None and (c.ndim != 2 or c.shape[0] != n):
        raise ValueError(f"coords must have shape ({n}, k) for {n} steps; got "
                         f"{tuple(c.shape)}")
    eps: list[Tensor] = []  # newest first
    taken: list[Tensor] = []  # the corrected directions
    x0 = x
    for i in range(n):
        denoised = yield x, s[i]
        eps = [eps_of(x, denoised, s[i]), *eps[: BASES[base] - 1]]
        d = direction(eps)
        if c is not None and bool(c[i].any()):
            d = corrected(d, basis(x0, taken, d, c.shape[1]), c[i])
        taken.append(d)
        x = torch.add(x, d, alpha=s[i + 1] - s[i])
        emit(callback, i, x, s[i], s[i + 1], denoised)
    return x


sample_pas = SolverFunction(pas_steps, "sample_pas")

register("pas", sample_pas, order=1, reference="Wang et al. 2024 (PAS; without coordinates: "
         "DDIM)")
