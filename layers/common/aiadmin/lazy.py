"""Objects built on first use: a handler declares its clients at module level, as before, but
importing it costs nothing beyond its imports (a cold start only pays for what the first
request uses, and a SnapStart snapshot holds no connection or credentials)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")


class _Lazy:
    __slots__ = ("_factory", "_lock", "_value")

    def __init__(self, factory: Callable[[], Any]) -> None:
        object.__setattr__(self, "_factory", factory)
        object.__setattr__(self, "_lock", threading.Lock())
        object.__setattr__(self, "_value", None)

    def _target(self) -> Any:
        value = object.__getattribute__(self, "_value")
        if value is None:
            with object.__getattribute__(self, "_lock"):
                value = object.__getattribute__(self, "_value")
                if value is None:
                    value = object.__getattribute__(self, "_factory")()
                    object.__setattr__(self, "_value", value)
        return value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target(), name, value)

    def __repr__(self) -> str:
        value = object.__getattribute__(self, "_value")
        return f"lazy({value!r})" if value is not None else "lazy(<not built yet>)"


def lazy(factory: Callable[[], T]) -> T:
    """A stand-in for `factory()` that calls it on the first attribute access (once, thread-safe).
    Typed as the object itself, so callers and mypy see no difference."""
    return cast(T, _Lazy(factory))


def built(obj: object) -> bool:
    """Whether a lazy object has been built (always True for an ordinary object)."""
    if isinstance(obj, _Lazy):
        return object.__getattribute__(obj, "_value") is not None
    return True
