"""The activation worker's own bounded pool: a YClients outage holding every activation
thread delays nothing else the runner does."""

from __future__ import annotations

import asyncio

from aiadmin.db import Store
from aiadmin.states import SalonState
from tests.unit.runner_fakes import (
    LEASE,
    FakeClock,
    ScriptedYClients,
    claim_all,
    engine_of,
    handle,
    linked_sessions,
    live_through,
    make_runner,
    pusher_of,
    put_salon,
    resume_and_connect,
)
from wa_runner.engine import EventKind

S = SalonState


def test_a_yclients_outage_holding_every_activation_delays_nothing_else(store: Store) -> None:
    clock = FakeClock()
    yclients = ScriptedYClients()
    yclients.release.clear()  # every activation call hangs until the test lets it go
    runner = make_runner(store, clock, yclients=yclients, activation_workers=1)
    runner.membership.join(clock.now)
    linked_sessions(store, [1, 2, 3], state=S.WHATSAPP_CONNECTED)
    put_salon(store, 9, S.PENDING_WHATSAPP)

    async def scenario() -> None:
        await claim_all(runner, clock)
        await resume_and_connect(runner, clock)  # three activations: one calling, two queued
        assert yclients.calling.acquire(timeout=10)
        assert runner.activations.active() == {1, 2, 3}
        # Meanwhile: the membership is renewed, a new owner gets a QR, a freeze is carried out.
        live_through(clock, 10, runner)
        assert runner.membership.holds(clock.now)
        store.sessions.request(9, "link")
        await claim_all(runner, clock)
        await handle(runner, EventKind.QR, 9, code="qr", expires_at=clock.now + 60)
        store.sessions.request(3, "pause")
        await runner.intake.poll(clock.now)
        assert 3 not in engine_of(runner).running()
        yclients.release.set()
        runner.activations.join(10)
        await runner.writer.drain()

    asyncio.run(scenario())
    salon = store.salons.get(9)
    assert salon is not None and salon.state == S.QR_READY
    assert any(message["state"] == "qr_ready" for message in pusher_of(runner).states(9))
    # The paused salon's queued activation never started; the others ran to the end.
    assert sorted(yclients.activated) == [1, 2]
    assert {store.salons.get(s).state for s in (1, 2)} == {S.ACTIVE}  # type: ignore[union-attr]


def test_a_runner_that_takes_over_mid_activation_finishes_the_activation(store: Store) -> None:
    """Issue 16: the salon's previous owner died while activating (the salon is `activating`).
    The runner that takes the session over must finish the activation: the fence says who may
    act, not a lock the dead runner left behind (it answered BUSY for 120 s, and nothing ever
    tried again: the salon stayed `activating`)."""
    clock = FakeClock()
    dying_yclients, yclients = ScriptedYClients(), ScriptedYClients()
    dying_yclients.release.clear()  # runner-a's call never comes back: it dies during it
    dying = make_runner(store, clock, yclients=dying_yclients, runner_id="runner-a")
    taker = make_runner(store, clock, yclients=yclients, runner_id="runner-b")
    dying.membership.join(clock.now)
    taker.membership.join(clock.now)
    linked_sessions(store, [5], state=S.WHATSAPP_CONNECTED)

    async def scenario() -> None:
        await claim_all(dying, clock)
        await resume_and_connect(dying, clock)
        assert dying_yclients.calling.acquire(timeout=10)  # runner-a is activating
        salon = store.salons.get(5)
        assert salon is not None and salon.state == S.ACTIVATING
        live_through(clock, LEASE + LEASE / 10 + 1, taker)  # runner-a renews no more: dead
        assert await taker.claimer.takeover_step(clock.now) == 1
        await resume_and_connect(taker, clock)
        taker.activations.join(10)
        await taker.writer.drain()

    try:
        asyncio.run(scenario())
    finally:
        dying_yclients.release.set()
        dying.activations.join(10)
    assert yclients.activated == [5]
    salon = store.salons.get(5)
    assert salon is not None and salon.state == S.ACTIVE
