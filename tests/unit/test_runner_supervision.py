"""Session supervision with an in-memory engine and a fake clock: staggered resumes, crash
restarts with backoff that spare the other sessions, abandoned linking attempts, and nothing
started by a runner whose membership does not hold."""

from __future__ import annotations

import asyncio

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
from wa_runner.runner import RunnerLimits
from wa_runner.sessions import Phase


def test_linked_sessions_resume_a_few_at_a_time(store: Store) -> None:
    clock = FakeClock()
    runner = make_runner(store, clock, limits=RunnerLimits(resume_concurrency=3))
    runner.membership.join(clock.now)
    linked_sessions(store, range(1, 11))

    async def scenario() -> None:
        await claim_all(runner, clock)
        await runner.resumes.step(clock.now)
        assert len(engine_of(runner).sessions) == 3  # the others wait in the queue
        await runner.resumes.step(clock.now)
        assert len(engine_of(runner).sessions) == 3
        first = next(iter(engine_of(runner).sessions))
        await handle(runner, EventKind.CONNECTED, first)  # one slot frees
        await runner.resumes.step(clock.now)
        assert len(engine_of(runner).sessions) == 4
        await resume_and_connect(runner, clock)

    asyncio.run(scenario())
    assert runner.status()["phases"] == {"connected": 10}


def test_a_crashed_session_restarts_with_backoff_and_the_others_go_on(store: Store) -> None:
    clock = FakeClock()
    runner = make_runner(store, clock)
    runner.membership.join(clock.now)
    linked_sessions(store, [1, 2, 3])

    async def scenario() -> None:
        await claim_all(runner, clock)
        await resume_and_connect(runner, clock)
        engine_of(runner).crash(2)  # its task died without an event
        await runner.restart_crashed(clock.now)
        owned = runner.book.get(2)
        assert owned.phase == Phase.RETRYING and 1 <= owned.retry_at - clock.now <= 1.5
        await runner.restart_crashed(clock.advance(0.5))
        assert 2 not in engine_of(runner).sessions  # not before its time
        await runner.restart_crashed(clock.advance(1.0))
        await resume_and_connect(runner, clock)

    asyncio.run(scenario())
    engine = engine_of(runner)
    assert engine.starts(2) == 2 and engine.starts(1) == 1 and engine.starts(3) == 1
    assert runner.status()["phases"] == {"connected": 3}


def test_an_attempt_nobody_watches_is_stopped_and_retired(store: Store) -> None:
    clock = FakeClock()
    runner = make_runner(store, clock, limits=RunnerLimits(abandon_seconds=8))
    runner.membership.join(clock.now)
    put_salon(store, 5, SalonState.PENDING_WHATSAPP)
    store.sessions.request(5, "link")
    store.connections.add("page", 5)

    async def scenario() -> None:
        await claim_all(runner, clock)
        await handle(runner, EventKind.QR, 5, code="qr", expires_at=clock.now + 60)
        await runner.linking.check_pages(clock.advance(8))
        assert runner.book.get(5).phase == Phase.AWAITING_PHONE  # the page is open
        store.connections.remove("page", 5)
        await runner.linking.check_pages(clock.advance(4))
        assert 5 in runner.book
        await runner.linking.check_pages(clock.advance(6))

    asyncio.run(scenario())
    salon = store.salons.get(5)
    assert salon is not None and salon.state == SalonState.QR_EXPIRED
    assert 5 not in runner.book and engine_of(runner).running() == set()
    assert runner.pairings_in_flight() == 0


def test_nothing_starts_while_the_membership_does_not_hold(store: Store) -> None:
    clock = FakeClock()
    runner = make_runner(store, clock)
    runner.membership.join(clock.now)
    linked_sessions(store, [1])

    async def scenario() -> None:
        await claim_all(runner, clock)
        clock.advance(runner.membership.times.lease)  # no renewal meanwhile (cut off from DynamoDB)
        await runner.resumes.step(clock.now)
        await runner.restart_crashed(clock.now)

    asyncio.run(scenario())
    assert engine_of(runner).running() == set()
    assert runner.book.get(1).phase == Phase.QUEUED
