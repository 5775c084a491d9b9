"""The first request's work, done ahead of it. Handlers build their settings and clients on first
use (cached factories: importing a handler costs nothing beyond its imports, and a SnapStart
snapshot holds no connection and no secret) and name, in `FIRST_USE_IMPORTS`, the modules their
routes import only when they need them (pydantic-settings with `aiadmin.settings`, the YClients
client and `requests`, pyjwt, qrcode, phonenumbers; the store and models of the redirect and
callback functions). `preload` does that import work ahead of the first request, before a SnapStart
snapshot (bench/cold_start.py measures the same work as its `first` figure)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable


def preload(modules: Iterable[str], *warm: Callable[[], object]) -> None:
    """Do now what a first request would do later: import `modules`, build the validators pydantic
    defers (`defer_build`) of the models in aiadmin.models and in `modules`, then call each of
    `warm` (factories of what holds no connection and no secret: settings, never a client)."""
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
    for factory in warm:
        factory()


def preload_before_snapshot(modules: Iterable[str], *warm: Callable[[], object]) -> bool:
    """With SnapStart (Lambda's Python runtimes carry `snapshot_restore_py`), `preload` runs
    before the snapshot, so a restored function pays neither the imports nor the builds (and
    settings that do not load fail the version's publication, not an owner's request).
    Elsewhere (tests, the local stack, a function without SnapStart) nothing happens."""
    try:
        from snapshot_restore_py import register_before_snapshot
    except ImportError:
        return False
    register_before_snapshot(preload, tuple(modules), *warm)
    return True
