"""Resume pacing: claimed linked sessions start a few at a time (`resume_concurrency`
connecting at once), and the runner claims no more of them than it can start soon
(`RunnerLimits.resume_backlog`), so after a restart or a takeover the others take their share."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from wa_runner.book import SessionBook
from wa_runner.limits import RunnerLimits
from wa_runner.restarts import START_TIMEOUT_SECONDS, Restarts
from wa_runner.sessions import OwnedSession, Phase


class ResumePacer:
    def __init__(self, book: SessionBook, restarts: Restarts, holds: Callable[[float], bool],
                 limits: RunnerLimits) -> None:
        self._book = book
        self._restarts = restarts
        self._holds = holds
        self._limits = limits
        self._queue: deque[int] = deque()
        self._wakeup = asyncio.Event()

    def waiting(self) -> int:
        return len(self._queue)

    def backlog_room(self) -> int:
        return self._limits.resume_backlog - len(self._queue)

    def enqueue(self, owned: OwnedSession, now: float) -> None:
        owned.enter(Phase.QUEUED, now)
        self._queue.append(owned.salon_id)
        self.wake()

    def wake(self) -> None:
        """A resume slot may have freed (a session connected, or its start timed out)."""
        self._wakeup.set()

    async def woken(self) -> None:
        await self._wakeup.wait()
        self._wakeup.clear()

    def clear(self) -> None:
        self._queue.clear()

    async def step(self, now: float) -> None:
        """Start queued linked sessions, at most `resume_concurrency` connecting at once."""
        connecting = sum(1 for owned in self._book.sessions() if owned.phase == Phase.STARTING
                         and now - owned.since < START_TIMEOUT_SECONDS)
        while self._queue and connecting < self._limits.resume_concurrency and self._holds(now):
            queued = self._book.get(self._queue.popleft())
            if queued is None or queued.phase != Phase.QUEUED:
                continue
            queued.enter(Phase.STARTING, now)
            await self._restarts.start(queued, now)
            connecting += 1
