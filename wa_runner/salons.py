"""The runner's salon writes and pushes: every state change it makes is fenced on its
membership and the session's ownership (a runner that lost either writes nothing), then
pushed to the salon's open pages by the runner itself (`aiadmin.push` says why), on a pool of
its own with a deadline, so a slow management API never holds up anything else."""

from __future__ import annotations

import asyncio
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


class FencedStore(Store):
    """The store with every state change fenced on the runner's membership (what the
    activation writes through)."""

    def __init__(self, store: Store, fence: Callable[[], Fence]) -> None:
        super().__init__(store.table)
        self._fence = fence

    def transition(self, *args: Any, **kwargs: Any) -> Salon:
        """`Store.transition`, with this runner's fence unless one is given."""
        if len(args) < _FENCE_POSITION + 1 and kwargs.get("fence") is None:
            kwargs["fence"] = self._fence()
        return super().transition(*args, **kwargs)


_FENCE_POSITION = 6  # `fence` among Store.transition's positional parameters (after self)


class SalonWriter:
    def __init__(self, store: Store, pusher: Pusher, fence: Callable[[], Fence], push_pool: Executor,
                 push_deadline: float = PUSH_DEADLINE_SECONDS) -> None:
        self._store = store
        self._pusher = pusher
        self._fence = fence
        self._push_pool = push_pool
        self._push_deadline = push_deadline

    async def get_salon(self, salon_id: int) -> Salon | None:
        return await asyncio.to_thread(self._store.get_salon, salon_id)

    async def transition(self, salon_id: int, state: SalonState, reason: str, attrs: dict[str, Any] | None = None,
                         expected: Iterable[SalonState] | None = None) -> Salon:
        """Fenced (LeaseLost when not ours), then pushed. IllegalTransition when the state
        machine or `expected` refuses it."""
        salon = await asyncio.to_thread(self._store.transition, salon_id, state, RUNNER_ACTOR, reason, attrs,
                                        list(expected) if expected is not None else None, self._fence())
        await self.push(salon)
        return salon

    async def push(self, salon: Salon) -> None:
        """Push on the push pool; waits at most the deadline (the push itself gives up then too)."""
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(self._push_pool, self.push_sync, salon, time.monotonic()),
                                   self._push_deadline + 1)
        except TimeoutError:
            metrics.add_metric(name="PushTimedOut", unit="Count", value=1)
            logger.warning("push did not finish in time", extra={"salon_id": salon.salon_id})
        except Exception:
            logger.exception("push failed", extra={"salon_id": salon.salon_id})

    def push_sync(self, salon: Salon, submitted_at: float | None = None) -> None:
        """The deadline counts from `submitted_at` (monotonic): a push that waited for a free
        thread past it is dropped (a newer one follows, or the page's `sync` gets the state)."""
        remaining = self._push_deadline - (time.monotonic() - submitted_at if submitted_at is not None else 0.0)
        if remaining <= 0:
            metrics.add_metric(name="PushTimedOut", unit="Count", value=1)
            return
        self._pusher.fan_out(self._store, salon.salon_id, state_message(salon, time.time()), remaining)
