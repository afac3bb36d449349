"""One name -> entry table for every kind of thing fewstep registers (solvers, metrics, data
sets, methods, teachers, baselines, schedules, tuning methods, zoo recipes, peers).

Each kind keeps a :class:`Registry` and checks its own entries; the registry gives every kind
the same lookup, listing and error text: an unknown name raises :class:`UnknownNameError`, whose
message names the bad value and every available one, and a taken name is refused unless
``overwrite``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

__all__ = ["Registry", "UnknownNameError"]

T = TypeVar("T")


class UnknownNameError(ValueError, KeyError):
    """A name that no entry of a registry has. A ValueError (bad input, one clear line) and a
    KeyError (a failed mapping lookup), so callers may catch either; ``str()`` is the message
    itself, not KeyError's quoted repr."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Mapping[str, T], Generic[T]):
    """Entries of one ``kind`` (``"solver"``, ``"metric"``, ...) by name, iterated in the
    order they were added (:meth:`names` sorts).

    ``registry[name]`` raises :class:`UnknownNameError` ("unknown solver 'x'; available: a, b" plus
    ``hint``, e.g. the prefixes a teacher name may also take)."""

    def __init__(self, kind: str, entries: Mapping[str, T] | None = None, *, hint: str = ""):
        self.kind, self.hint = kind, hint
        self._entries: dict[str, T] = {}
        for name, entry in (entries or {}).items():
            self.add(name, entry)

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; available: "
                              f"{', '.join(self.names()) or '(none)'}{self.hint}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def add(self, name: str, entry: T, *, overwrite: bool = False) -> T:
        """Register ``entry`` as ``name`` and return it. Raises ValueError if ``name`` is taken
        by another entry, unless ``overwrite``; re-adding the same entry is a no-op."""
        old = self._entries.get(name)
        if old is not None and old is not entry and not overwrite:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Forget ``name`` (no error if absent)."""
        self._entries.pop(name, None)
