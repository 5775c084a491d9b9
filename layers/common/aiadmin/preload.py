"""Work left to the first request: a handler declares its clients at module level, as before, but
importing it costs nothing beyond its imports (a cold start only pays for what the first
request uses, and a SnapStart snapshot holds no connection or credentials).

A handler also names, in `FIRST_USE_IMPORTS`, the modules its routes import only when they need
them (the YClients client and `requests`, pyjwt, qrcode, phonenumbers; the store and models of
the redirect and callback functions): `preload` does that work ahead of the first request,
before a SnapStart snapshot (bench/cold_start.py measures the same work as its `first` figure)."""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable, Iterable
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


def preload(modules: Iterable[str]) -> None:
    """Do now what a first request would do later: import `modules`, then build the validators
    pydantic defers (`defer_build`) of the models in aiadmin.models and in `modules`. Never a
    client: those hold connections and credentials."""
    names = tuple(modules)
    for name in names:
        importlib.import_module(name)
    for name in ("aiadmin.models", *names):
        module = sys.modules.get(name)
        for value in list(vars(module).values()) if module is not None else ():
            # The models defined there (not pydantic's BaseModel they import), not yet built.
            if (isinstance(value, type) and value.__module__ == name
                    and getattr(value, "__pydantic_complete__", True) is False):
                value.model_rebuild()  # type: ignore[attr-defined]


def preload_before_snapshot(modules: Iterable[str]) -> bool:
    """With SnapStart (Lambda's Python runtimes carry `snapshot_restore_py`), `preload(modules)`
    runs before the snapshot, so a restored function pays neither the imports nor the builds.
    Elsewhere (tests, the local stack, a function without SnapStart) nothing happens."""
    try:
        from snapshot_restore_py import register_before_snapshot
    except ImportError:
        return False
    register_before_snapshot(preload, tuple(modules))
    return True
