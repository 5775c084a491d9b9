"""The runner's salon writes and pushes: every state change it makes is fenced on its
membership and the session's ownership (a runner that lost either writes nothing), then
pushed to the salon's open pages by the runner itself (`aiadmin.push` says why and how: the
latest state per salon, one pool, one deadline, one retry policy), so a slow management API
never holds up anything else."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from aiadmin.db import Store
from aiadmin.db.memberships import Fence
from aiadmin.db.transitions import Transition
from aiadmin.models import Salon
from aiadmin.onboarding import state_message
from aiadmin.push import RUNNER_ACTOR, Pusher, PushPolicy, PushQueue
from aiadmin.states import SalonState


class SalonWriter:
    def __init__(self, store: Store, pusher: Pusher, fence: Callable[[], Fence], clock: Callable[[], float],
                 policy: PushPolicy | None = None) -> None:
        self._store = store
        self._fence = fence
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup = asyncio.Event()
        self.pushes = PushQueue(pusher, store, clock, policy, latest=self._latest, wake=self._wake)

    async def get_salon(self, salon_id: int) -> Salon | None:
        return await asyncio.to_thread(self._store.salons.get, salon_id)

    async def transition(self, salon_id: int, state: SalonState, reason: str, attrs: dict[str, Any] | None = None,
                         expected: Iterable[SalonState] | None = None, attempt: int | None = None) -> Salon:
        """Fenced (LeaseLost when not ours), then pushed. IllegalTransition when the state
        machine or `expected` refuses it, or (StaleAttempt) when `attempt`, the linking attempt
        the write belongs to, is no longer the session's."""
        change = Transition(salon_id, state, RUNNER_ACTOR, reason, attrs=attrs or {},
                            expected=frozenset(expected) if expected is not None else None)
        change = change.fenced(self._fence(), attempt)
        salon = await asyncio.to_thread(self._store.transitions.apply, change)
        self.push(salon)
        return salon

    def push(self, salon: Salon) -> None:
        """Send the salon's state to its pages (from any thread: the activation's changes too);
        never waits for them."""
        self.pushes.put(salon, state_message(salon, self._clock()))

    notify = push  # what the activation is given

    async def pump(self) -> None:
        """The runner's push loop: carries out what the pushes have due (re-sends, deadlines,
        pushes that come again), on the injected clock."""
        self._loop = asyncio.get_running_loop()
        while True:
            due = self.pushes.next_due()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), None if due is None else max(0.0, due - self._clock()))
            self._wakeup.clear()
            self.pushes.step(self._clock())

    async def drain(self, seconds: float | None = None) -> None:
        """Wait for the pushes under way (and those that come again), at most `seconds`."""
        until = None if seconds is None else self._clock() + seconds
        await asyncio.to_thread(self.pushes.settle, self.pushes.idle, until)

    def _latest(self, salon_id: int) -> tuple[Salon, str] | None:
        salon = self._store.salons.get(salon_id)
        return None if salon is None else (salon, state_message(salon, self._clock()))

    def _wake(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is shutting down
                loop.call_soon_threadsafe(self._wakeup.set)
