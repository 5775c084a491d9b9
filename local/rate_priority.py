"""Owners first: background YClients calls yield to interactive ones under the local stack's
YClients limit, which all its processes share. Installed by the stack's processes at start-up
(`install`: its Lambda workers and runners); the service's own code never imports it.

Where one rate limit is shared by every process of a host (`YCLIENTS_RATE_LIMIT_FILE`: the
local stack, whose redirects and runners all call from one address), a burst of owners would
otherwise have its redirects' status checks (an owner waits on each, within API Gateway's
29 s) queue behind activations of salons linked a moment earlier. An interactive caller
announces itself with a file in a shared directory while it waits for the limit; a background
caller waits while any such announcement is fresh, then takes the limit as usual. The limit
itself is still the one bucket: this only orders who takes its next slot.

pyrate-limiter has no priorities, and its buckets count calls, not waiters; this is the small
addition that orders them (a file per waiter: no lock, and a crashed waiter's file goes stale).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiadmin import yclients

# An announcement older than this is a crashed waiter's (API Gateway gives a request 29 s).
STALE_SECONDS = 30.0
POLL_SECONDS = 0.05


class PriorityLimiter:
    """A pyrate-limiter `Limiter` (anything with its `try_acquire`) used by interactive or
    background callers; `waiting_dir` is shared by every process of the limit."""

    def __init__(self, limiter: Any, waiting_dir: Path, background: bool,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        self._limiter = limiter
        self._dir = waiting_dir
        self._background = background
        self._clock = clock
        self._sleep = sleep
        self._dir.mkdir(parents=True, exist_ok=True)

    def try_acquire(self, name: str, weight: int = 1, blocking: bool = True, timeout: float = -1) -> bool:
        if self._background:
            started = self._clock()
            while self.interactive_waiting():
                if not blocking or (timeout >= 0 and self._clock() - started >= timeout):
                    return False
                self._sleep(POLL_SECONDS)
            remaining = timeout if timeout < 0 else max(0.0, timeout - (self._clock() - started))
            return bool(self._limiter.try_acquire(name, weight, blocking=blocking, timeout=remaining))
        mark = self._dir / f"{os.getpid()}-{uuid.uuid4().hex}"
        mark.touch()
        try:
            return bool(self._limiter.try_acquire(name, weight, blocking=blocking, timeout=timeout))
        finally:
            mark.unlink(missing_ok=True)

    def __getattr__(self, name: str) -> Any:
        # The rest of the Limiter (the adapter fills its bucket after a 429): the wrapped one's.
        return getattr(self._limiter, name)

    def interactive_waiting(self) -> bool:
        """Whether an interactive caller is waiting now; stale announcements are removed."""
        fresh_after = self._clock() - STALE_SECONDS
        for mark in self._dir.iterdir():
            with contextlib.suppress(FileNotFoundError):  # its caller just took its slot
                if mark.stat().st_mtime >= fresh_after:
                    return True
                mark.unlink(missing_ok=True)
        return False


def install() -> bool:
    """Under a limit shared by the host's processes (`YCLIENTS_RATE_LIMIT_FILE` set), every new
    YClients client of this process takes its place in the order (owners first). Returns whether
    it was installed."""
    shared_file = os.environ.get(yclients.RATE_LIMIT_FILE_ENV)
    if not shared_file:
        return False
    waiting_dir = Path(shared_file + ".waiting")
    yclients.install_limiter_factory(
        lambda background: PriorityLimiter(yclients.process_limiter(), waiting_dir, background))
    return True
