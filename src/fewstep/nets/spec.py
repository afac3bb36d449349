"""Architecture specs: a JSON-able record of a module's constructor arguments, so a
checkpoint can rebuild its model without pickling code."""

from __future__ import annotations

import functools
import inspect
from typing import Any

from torch import nn

__all__ = ["build_model", "buildable", "model_spec"]

_BUILDABLE: dict[str, type[nn.Module]] = {}


def _encode(value: Any) -> Any:
    if isinstance(value, nn.Module):
        spec = model_spec(value)
        if spec is None:
            raise TypeError(f"{type(value).__name__} has no spec")
        return spec
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot record a constructor argument of type {type(value).__name__}")


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "class" in value:
        return build_model(value)
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def buildable(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: record the constructor arguments of each instance as ``spec``."""
    init = cls.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def recording_init(self, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if type(self) is not cls:  # a subclass records itself if it is buildable
            return
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        try:
            arguments = {k: _encode(v) for k, v in list(bound.arguments.items())[1:]}
            self.__dict__["_spec"] = {"class": cls.__name__, "kwargs": arguments}
        except TypeError:
            self.__dict__["_spec"] = None

    cls.__init__ = recording_init  # type: ignore[method-assign]
    _BUILDABLE[cls.__name__] = cls
    return cls


def model_spec(module: nn.Module) -> dict[str, Any] | None:
    """The JSON-able spec of a module built from a ``@buildable`` class (None otherwise)."""
    return getattr(module, "_spec", None)


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Rebuild an (untrained) module from its :func:`model_spec`."""
    name = spec.get("class")
    if name not in _BUILDABLE:
        raise ValueError(f"unknown model class {name!r}; buildable: "
                         f"{', '.join(sorted(_BUILDABLE))}")
    return _BUILDABLE[name](**{k: _decode(v) for k, v in spec["kwargs"].items()})
