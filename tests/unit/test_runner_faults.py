"""DynamoDB faults at unit level (fake clock, in-memory engine, moto): every call taking 2 s for
20 s, or every call throttled for 10 s, drops no session and loses no command. (The same on
the local stack, through a fault proxy in front of moto: tests/integration/test_dynamo_faults.py.)"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from botocore.exceptions import ClientError

from aiadmin.db import Store
from aiadmin.states import SalonState
from tests.unit.runner_fakes import (
    FakeClock,
    claim_all,
    engine_of,
    handle,
    linked_sessions,
    make_runner,
    put_salon,
    resume_and_connect,
)
from wa_runner.engine import EventKind
from wa_runner.runner import Runner

LINKED = [1, 2, 3]
WAITING = 9


class Fault:
    """A botocore hook on the table's client: while on, each DynamoDB call takes `delay` (fake)
    seconds, or is refused as throttled."""

    def __init__(self, store: Store, clock: FakeClock) -> None:
        self.clock = clock
        self.until = 0.0
        self.delay = 0.0
        self.throttle = False
        self.hits = 0
        store.table.meta.client.meta.events.register("before-call.dynamodb.*", self._call)

    def _call(self, model: Any, **_kwargs: Any) -> None:
        if self.clock.now >= self.until:
            return
        self.hits += 1
        self.clock.advance(self.delay)
        if self.throttle:
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, model.name)


def _setup(store: Store, clock: FakeClock) -> Runner:
    runner = make_runner(store, clock)
    runner.membership.join(clock.now)
    linked_sessions(store, LINKED)
    put_salon(store, WAITING, SalonState.PENDING_WHATSAPP)
    store.sessions.request(WAITING, "link")

    async def ready() -> None:
        await claim_all(runner, clock)
        await resume_and_connect(runner, clock)
        await handle(runner, EventKind.QR, WAITING, code="qr-1", expires_at=clock.now + 60)

    asyncio.run(ready())
    return runner


async def _through(runner: Runner, clock: FakeClock, seconds: float) -> None:
    """The runner's loops, one round after another, until `seconds` of fake time have passed.
    The membership runs on its own thread with its own client: its step comes between any two
    others here (a slow call elsewhere never holds it up), and its own calls are slow too."""
    end = clock.now + seconds
    code = 1
    while clock.now < end:
        clock.advance(0.25)
        for step in (runner.intake.poll(clock.now), runner.claimer.claim_step(clock.now),
                     runner.restart_crashed(clock.now), runner.resumes.step(clock.now)):
            with contextlib.suppress(ClientError):  # a failed step: the runner's loop logs it, tries again
                await step
            runner.membership.step(clock.now)
        if clock.now > end - seconds / 2 and code == 1:
            code = 2  # the waiting owner's attempt shows its next code meanwhile
            await handle(runner, EventKind.QR, WAITING, code="qr-2", expires_at=clock.now + 20)
            runner.membership.step(clock.now)


def _nothing_dropped(runner: Runner, store: Store, uninstalled: int) -> None:
    engine = engine_of(runner)
    for salon_id in LINKED:
        if salon_id != uninstalled:
            assert salon_id in engine.running() and engine.starts(salon_id) == 1, salon_id
    assert WAITING in engine.running() and engine.starts(WAITING) == 1  # the same attempt: its QR still links
    assert runner.membership.epoch == 1 and runner.membership.holds(runner._clock())  # never lapsed
    assert uninstalled not in engine.running() and uninstalled not in runner.book  # the command landed
    lease = store.sessions.get(uninstalled)
    assert lease is not None and lease.desired == "stop" and lease.owner is None


def test_dynamodb_answering_in_two_seconds_for_twenty_seconds(store: Store) -> None:
    clock = FakeClock()
    runner = _setup(store, clock)
    fault = Fault(store, clock)
    fault.delay = 2.0

    async def scenario() -> None:
        fault.until = clock.now + 20
        await _through(runner, clock, 2)
        store.sessions.request(3, "stop")  # YClients' uninstall, during the fault (2 s per call here too)
        await _through(runner, clock, 30)

    asyncio.run(scenario())
    assert fault.hits >= 10  # 20 s of calls taking 2 s each
    _nothing_dropped(runner, store, uninstalled=3)
    salon = store.salons.get(WAITING)
    assert salon is not None and salon.qr == "qr-2"


def test_dynamodb_throttling_for_ten_seconds(store: Store) -> None:
    clock = FakeClock()
    runner = _setup(store, clock)
    fault = Fault(store, clock)
    fault.throttle, fault.delay = True, 0.05
    waiting_at = clock.now

    async def scenario() -> None:
        fault.until = clock.now + 10
        await _through(runner, clock, 1)
        # The uninstall is written before the throttle reaches the handler (a handler retries).
        fault.until, paused = 0.0, fault.until
        store.sessions.request(2, "stop")
        fault.until = paused
        await _through(runner, clock, 25)

    asyncio.run(scenario())
    assert fault.hits > 10 and clock.now - waiting_at > 25
    _nothing_dropped(runner, store, uninstalled=2)
