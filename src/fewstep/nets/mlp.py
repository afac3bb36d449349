"""A residual MLP backbone ``F(x_in, c_noise, cond)`` for vector data."""

from __future__ import annotations

from torch import Tensor, nn

from .embedding import CondEmbedding, SinusoidalEmbedding
from .spec import buildable

__all__ = ["COND_TYPES", "MLPDenoiserNet", "NoiseEmbedding"]

COND_TYPES = ("none", "label", "scalar")
# Highest frequency (cycles per unit of c_noise = ln(sigma)/4) of the noise embedding. Low enough
# that a net trained on a discrete set of sigmas (consistency models) interpolates between them.
MAX_FREQ = 4.0


class NoiseEmbedding(nn.Module):
    """``c_noise`` (plus an optional label / scalar input, and with ``w_embedding`` a
    guidance scale ``w``) -> an embedding vector. A w-conditioned student (guided distillation,
    Meng et al. 2023, Sec. 4.1; latent consistency models, Luo et al. 2023, Sec. 4.2) takes w
    as the keyword ``w`` beside its class label ``cond``; its embedding is added like the
    label's and starts at zero, so ``warm_start`` / ``load_state_dict(strict=False)`` from a
    teacher without it gives a student equal to the teacher at every w."""

    def __init__(self, dim: int, cond_type: str = "none", num_classes: int = 0,
                 max_freq: float = MAX_FREQ, w_embedding: bool = False):
        super().__init__()
        if cond_type not in COND_TYPES:
            raise ValueError(f"unknown cond_type {cond_type!r}; expected one of {COND_TYPES}")
        if (cond_type == "label") != (num_classes > 0):
            raise ValueError("cond_type='label' needs num_classes > 0 (and only it takes classes)")
        self.noise = nn.Sequential(SinusoidalEmbedding(dim, max_freq), nn.Linear(dim, dim),
                                   nn.SiLU(), nn.Linear(dim, dim))
        self.cond = None if cond_type == "none" else CondEmbedding(dim, num_classes)
        self.w = CondEmbedding(dim) if w_embedding else None
        if self.w is not None:  # zero at init: a student warm-started from a teacher built
            last = list(self.w.modules())[-1]  # without w starts equal to it for every w
            for p in last.parameters():
                nn.init.zeros_(p)

    def forward(self, c_noise: Tensor, cond: Tensor | None = None,
                w: Tensor | None = None) -> Tensor:
        e = self.noise(c_noise)
        if (self.w is None) != (w is None):
            raise ValueError("this network takes a guidance scale w= exactly when built with "
                             f"w_embedding=True (it was built with {self.w is not None})")
        if self.w is not None and w is not None:
            e = e + self.w(w.to(c_noise.dtype).expand(c_noise.shape))
        if self.cond is None:
            if cond is not None:
                raise ValueError("this network takes no conditioning input (cond_type='none')")
            return e
        if cond is None:
            raise ValueError("this network needs a conditioning input: pass cond=...")
        return e + self.cond(cond)


class _Block(nn.Module):
    def __init__(self, hidden: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.emb = nn.Linear(emb_dim, hidden)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden))

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        return h + self.mlp(self.norm(h) + self.emb(e))


@buildable
class MLPDenoiserNet(nn.Module):
    """Residual MLP ``F(x_in, c_noise, cond=None)`` with a sinusoidal embedding of ``c_noise``
    added in every block; ``cond_type`` 'label' (``num_classes``) or 'scalar' (e.g. a guidance
    scale w) adds an embedding of a second input; ``w_embedding`` adds one of a guidance scale
    passed as ``w=`` (a w-conditioned student)."""

    def __init__(self, dim: int, hidden: int = 256, depth: int = 3, emb_dim: int = 128,
                 cond_type: str = "none", num_classes: int = 0, w_embedding: bool = False):
        super().__init__()
        self.dim = dim
        self.embed = NoiseEmbedding(emb_dim, cond_type, num_classes, w_embedding=w_embedding)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_Block(hidden, emb_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim))

    @property
    def feature_channels(self) -> list[int]:
        """Widths of the tensors :meth:`features` returns."""
        return [self.inp.out_features] * len(self.blocks)

    def features(self, x_in: Tensor, c_noise: Tensor, cond: Tensor | None = None,
                 w: Tensor | None = None) -> list[Tensor]:
        """The hidden state ``(batch, hidden)`` after every block (for discriminators built on
        the backbone, e.g. UFOGen's and ADD's)."""
        e = self.embed(c_noise, cond, w)
        h = self.inp(x_in)
        hs = []
        for block in self.blocks:
            h = block(h, e)
            hs.append(h)
        return hs

    def forward(self, x_in: Tensor, c_noise: Tensor, cond: Tensor | None = None,
                w: Tensor | None = None) -> Tensor:
        return self.out(self.features(x_in, c_noise, cond, w)[-1])
