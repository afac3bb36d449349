"""Benchmark suites: TOML files naming teachers, methods, NFE budgets and seeds.

A suite expands into cases, one per (teacher, method, nfe, seed); budgets a method cannot
spend exactly (e.g. below its minimum NFE) are listed as skipped, never silently changed, and
so are students run on another teacher than their own. ``by_teacher`` gives a teacher its own
``nfe`` budgets and ``reference_rtol`` (e.g. fewer budgets and a looser reference for a trained
network, whose evaluations cost more).
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .. import solvers
from ..schedules import get_schedule
from . import baselines, early_stopped, peers, students, teachers
from .store import case_key

__all__ = ["BY_TEACHER", "Case", "Suite", "load_suite"]

BY_TEACHER = ("nfe", "reference_rtol")  # what a suite's by_teacher table may override


@dataclass(frozen=True)
class Case:
    """One benchmark case; ``config`` is everything that determines its result."""

    suite: str
    teacher: str
    method: str
    nfe: int
    seed: int
    n_samples: int
    schedule: str
    dtype: str
    reference_rtol: float
    denoise_to_zero: bool = True
    inception_weights: str | None = None
    timing_repeats: int = 3

    @property
    def impl(self) -> str:
        return self.method.split(":")[0] if ":" in self.method else "fewstep"

    @property
    def config(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def key(self) -> str:
        return case_key(self.config)


@dataclass(frozen=True)
class Suite:
    """A parsed suite file."""

    name: str
    teachers: list[str]
    methods: list[str]
    nfe: list[int]
    seeds: list[int]
    n_samples: int = 256
    schedule: str = "karras"
    dtype: str = "float32"
    reference_rtol: float = 1e-6
    denoise_to_zero: bool = True  # fewstep plans: last evaluation steps sigma_min -> 0
    inception_weights: str | None = None  # local FID Inception weights for image teachers
    timing_repeats: int = 3  # warm timed runs per case; rows record their medians
    by_teacher: dict[str, dict[str, Any]] = field(default_factory=dict)  # teacher -> overrides
    skipped: list[str] = field(default_factory=list)

    def nfe_of(self, teacher: str) -> list[int]:
        """The NFE budgets run on ``teacher``: its ``by_teacher`` ``nfe``, else ``nfe``."""
        return sorted(self.by_teacher.get(teacher, {}).get("nfe", self.nfe))

    def validate(self) -> None:
        """Fail early (ValueError), naming any bad value: unknown teacher, method or dtype,
        empty lists, NFE budgets that are not positive integers, negative seeds, a
        non-positive sample count or tolerance."""
        self._check_values()
        known_teachers = teachers.available()
        for t in self.teachers:
            if t not in known_teachers and t.split(":", 1)[0] in teachers.PREFIXES:
                teachers.get(t)  # a user's model, loaded once; or an error naming it
            elif t not in known_teachers:
                raise ValueError(f"suite {self.name!r}: unknown teacher {t!r}; available: "
                                 f"{', '.join(known_teachers)}")
        for m in self.methods:
            if m.startswith("diffusers:"):
                if m not in peers.available():
                    raise ValueError(f"suite {self.name!r}: unknown peer {m!r}; available: "
                                     f"{', '.join(peers.available())}")
            elif m.startswith("student:"):
                students.check(m)
            elif m.startswith(early_stopped.PREFIX):
                early_stopped.check(m)
                for t in self.teachers:  # sigma_s within each teacher it runs on
                    if early_stopped.wrong_teacher(m, t) is None:
                        early_stopped.check(m, teachers.get(t).sigma_max,
                                            teachers.get(t).sigma_min)
            elif baselines.is_baseline(m):
                baselines.get(m)
            else:
                solvers.get(m)
        for t in self.teachers:
            if (k := teachers.num_classes(t)) and self.n_samples % k:
                raise ValueError(f"suite {self.name!r}: n_samples must be a multiple of the "
                                 f"{k} classes of {t!r} (class-balanced rows); got "
                                 f"{self.n_samples}")
        if self.dtype not in ("float32", "float64", "float16", "bfloat16"):
            raise ValueError(f"suite {self.name!r}: unknown dtype {self.dtype!r}")

    def _check_values(self) -> None:
        where = f"suite {self.name!r}"
        if not isinstance(self.by_teacher, dict) or set(self.by_teacher) - set(self.teachers) \
                or any(not isinstance(v, dict) or set(v) - set(BY_TEACHER)
                       for v in self.by_teacher.values()):
            raise ValueError(f"{where}: by_teacher must map teachers of the suite to tables of "
                             f"{', '.join(BY_TEACHER)}; got {self.by_teacher!r}")
        for key, item, ok, what in (
                ("teachers", str, lambda v: bool(v), "names"),
                ("methods", str, lambda v: bool(v), "names"),
                ("nfe", int, lambda v: v >= 1, "positive integers"),
                ("seeds", int, lambda v: v >= 0, "non-negative integers"),
                *((f"by_teacher.{t}.nfe", int, lambda v: v >= 1, "positive integers")
                  for t, o in self.by_teacher.items() if "nfe" in o)):
            values = getattr(self, key) if not key.startswith("by_teacher.") else \
                self.by_teacher[key.removeprefix("by_teacher.").removesuffix(".nfe")]["nfe"]
            if not isinstance(values, list) or not values:
                raise ValueError(f"{where}: {key} must be a non-empty list of {what}; got "
                                 f"{values!r}")
            bad = [v for v in values if not isinstance(v, item) or isinstance(v, bool)
                   or not ok(v)]
            if bad:
                raise ValueError(f"{where}: {key} must be {what}; got {values!r} (bad: "
                                 f"{', '.join(map(repr, bad))})")
        if isinstance(self.n_samples, bool) or not isinstance(self.n_samples, int) or \
                self.n_samples < 2:
            raise ValueError(f"{where}: n_samples must be an integer >= 2; got "
                             f"{self.n_samples!r}")
        if isinstance(self.timing_repeats, bool) or not isinstance(self.timing_repeats, int) \
                or self.timing_repeats < 1:
            raise ValueError(f"{where}: timing_repeats must be an integer >= 1; got "
                             f"{self.timing_repeats!r}")
        for name, rtol in (("reference_rtol", self.reference_rtol),
                           *((f"by_teacher.{t}.reference_rtol", o["reference_rtol"])
                             for t, o in self.by_teacher.items() if "reference_rtol" in o)):
            if isinstance(rtol, bool) or not isinstance(rtol, int | float) or not 0 < rtol < 1:
                raise ValueError(f"{where}: {name} must be a number in (0, 1); got {rtol!r}")
        get_schedule(self.schedule)  # names an unknown schedule

    def cases(self) -> list[Case]:
        """Every reachable case, in a stable order; unreachable budgets go to ``skipped``."""
        out: list[Case] = []
        for t in self.teachers:
            for m in self.methods:
                own = self.by_teacher.get(t, {})
                for nfe in [0] if baselines.is_baseline(m) else self.nfe_of(t):  # no evaluations
                    why = _unreachable(m, nfe, t)
                    if why:
                        if why not in self.skipped:
                            self.skipped.append(why)
                        continue
                    out.extend(Case(self.name, t, m, nfe, s, self.n_samples, self.schedule,
                                    self.dtype, own.get("reference_rtol", self.reference_rtol),
                                    self.denoise_to_zero,
                                    self.inception_weights, self.timing_repeats)
                               for s in self.seeds)
        return out


def _unreachable(method: str, nfe: int, teacher: str | None = None) -> str | None:
    if baselines.is_baseline(method):
        return None
    if method.startswith("student:"):
        return students.unreachable(method, nfe, teacher)
    if method.startswith(early_stopped.PREFIX):
        assert teacher is not None
        return early_stopped.unreachable(method, nfe, teacher)
    if method.startswith("diffusers:"):
        peer = peers.PEERS[method.removeprefix("diffusers:")]
        try:
            peer.steps(nfe)
        except peers.UnreachableNFEError as e:
            return f"{method} at NFE {nfe}: {e}"
        return None if nfe >= peer.min_nfe else f"{method} at NFE {nfe}: below its minimum"
    spec = solvers.get(method)
    if spec.tuned is not None and nfe != spec.tuned.nfe:
        return f"{method} at NFE {nfe}: tuned for NFE {spec.tuned.nfe} only"
    if spec.kind == "parallel":  # a Picard sampler over a sequential grid
        return (f"{method}: parallel sampler, not run on an NFE grid: it spends more NFE than "
                f"its sequential grid (for fewer rounds), so no NFE budget can be held; "
                f"compare it by rounds (docs/solvers.md, ParaDiGMS)")
    if spec.kind == "adaptive":
        return f"{method}: adaptive (NFE follows tolerances), not run on an NFE grid"
    if nfe < spec.min_nfe:
        return f"{method} at NFE {nfe}: below its minimum of {spec.min_nfe}"
    return None


def load_suite(name_or_path: str | Path) -> Suite:
    """Load a built-in suite by name (e.g. "quick") or a TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.is_file():  # a folder named "quick" is not a suite
        if not path.exists():
            raise FileNotFoundError(f"suite file {str(path)!r} does not exist")
        text = path.read_text()
    else:
        builtin = resources.files("fewstep.bench") / "suites" / f"{name_or_path}.toml"
        if not builtin.is_file():
            names = sorted(p.name.removesuffix(".toml") for p in
                           (resources.files("fewstep.bench") / "suites").iterdir())
            raise ValueError(f"unknown suite {str(name_or_path)!r}; built-in suites: {names}")
        text = builtin.read_text()
    raw = tomllib.loads(text)
    allowed = set(Suite.__dataclass_fields__) - {"skipped"}
    unknown = set(raw) - allowed
    if unknown:
        raise ValueError(f"unknown suite keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    suite = Suite(**raw)
    suite.validate()
    return suite
