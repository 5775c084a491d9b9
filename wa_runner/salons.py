"""The runner's salon writes and pushes: every state change it makes is fenced on its
membership and the session's ownership (a runner that lost either writes nothing), then
pushed to the salon's open pages by the runner itself (`aiadmin.push` says why), on a pool of
its own with a deadline, so a slow management API never holds up anything else."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from typing import Any

from aiadmin.models import Salon
from aiadmin.observability import logger, metrics
from aiadmin.onboarding import state_message
from aiadmin.ownership import Fence
from aiadmin.push import PUSH_DEADLINE_SECONDS, RUNNER_ACTOR, Pusher
from aiadmin.states import SalonState
from aiadmin.store import Store

# A push that missed its deadline is tried again with the salon's latest state (messages carry
# the version, so a repeat is harmless), this long later, this many times.
PUSH_RETRY_SECONDS = 1.0
PUSH_RETRIES = 3


class SalonWriter:
    def __init__(self, store: Store, pusher: Pusher, fence: Callable[[], Fence], push_pool: Executor,
                 push_deadline: float = PUSH_DEADLINE_SECONDS) -> None:
        self._store = store
        self._pusher = pusher
        self._fence = fence
        self._push_pool = push_pool
        self._push_deadline = push_deadline
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retries: set[asyncio.Task[None]] = set()
        self._notified: set[concurrent.futures.Future[None]] = set()

    async def get_salon(self, salon_id: int) -> Salon | None:
        return await asyncio.to_thread(self._store.get_salon, salon_id)

    async def transition(self, salon_id: int, state: SalonState, reason: str, attrs: dict[str, Any] | None = None,
                         expected: Iterable[SalonState] | None = None, attempt: int | None = None) -> Salon:
        """Fenced (LeaseLost when not ours), then pushed. IllegalTransition when the state
        machine or `expected` refuses it, or (StaleAttempt) when `attempt`, the linking attempt
        the write belongs to, is no longer the session's."""
        salon = await asyncio.to_thread(self._store.transition, salon_id, state, RUNNER_ACTOR, reason, attrs,
                                        list(expected) if expected is not None else None, self._fence(),
                                        attempt=attempt)
        await self.push(salon)
        return salon

    async def push(self, salon: Salon) -> None:
        """Push on the push pool, waiting at most the deadline (the push itself gives up then
        too). One that did not reach every page is tried again in the background with the
        salon's latest state: a page is never left on a state the salon has left."""
        self._loop = loop = asyncio.get_running_loop()
        complete = False
        try:
            complete = await asyncio.wait_for(
                loop.run_in_executor(self._push_pool, self.push_sync, salon, time.monotonic()), self._push_deadline + 1)
        except TimeoutError:
            metrics.add_metric(name="PushTimedOut", unit="Count", value=1)
            logger.warning("push did not finish in time", extra={"salon_id": salon.salon_id})
        except Exception:
            logger.exception("push failed", extra={"salon_id": salon.salon_id})
        if not complete:
            task = loop.create_task(self._push_again(salon.salon_id))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)

    async def _push_again(self, salon_id: int) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(PUSH_RETRIES):
            await asyncio.sleep(PUSH_RETRY_SECONDS)
            try:
                salon = await self.get_salon(salon_id)
                if salon is None or await asyncio.wait_for(
                        loop.run_in_executor(self._push_pool, self.push_sync, salon, time.monotonic()),
                        self._push_deadline + 1):
                    return
            except Exception:
                logger.exception("push failed again", extra={"salon_id": salon_id})

    def notify(self, salon: Salon) -> None:
        """A change made on another thread (the activation's): pushed like the loop's own, or
        right here when no loop runs."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                future = asyncio.run_coroutine_threadsafe(self.push(salon), loop)
            except RuntimeError:  # the loop is shutting down
                pass
            else:
                self._notified.add(future)
                future.add_done_callback(self._notified.discard)
                return
        self.push_sync(salon)

    async def drain(self) -> None:
        """Wait for the pushes under way (those notified from other threads, and retries)."""
        while self._notified or self._retries:
            await asyncio.gather(*(asyncio.wrap_future(f) for f in list(self._notified)), *list(self._retries),
                                 return_exceptions=True)

    def push_sync(self, salon: Salon, submitted_at: float | None = None) -> bool:
        """The deadline counts from `submitted_at` (monotonic): a push that waited for a free
        thread past it is not sent. True when every page of the salon was tried."""
        remaining = self._push_deadline - (time.monotonic() - submitted_at if submitted_at is not None else 0.0)
        if remaining <= 0:
            metrics.add_metric(name="PushTimedOut", unit="Count", value=1)
            return False
        return self._pusher.deliver(self._store, salon, state_message(salon, time.time()), remaining)[1]
