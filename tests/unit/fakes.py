"""Fakes the unit tests share."""

from __future__ import annotations

import time


class FakeClock:
    """Time that moves only when the test moves it: pass it where the code takes a `clock`, or
    monkeypatch it over a module's `time.time`. Starts at the real time unless told otherwise,
    since DynamoDB conditions and TTLs the code writes are compared with real times too."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now
