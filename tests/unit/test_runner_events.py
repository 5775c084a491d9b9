"""Engine events carried out by the runner (in-memory engine, fake clock, moto table): salon
states with their version pushed, activation only when it should, a refused write drops the
session."""

from __future__ import annotations

import asyncio
import threading

import pytest

from aiadmin.db import Store
from aiadmin.db.transitions import Transition
from aiadmin.models import Salon, UserData
from aiadmin.onboarding import request_pairing_code, start_onboarding
from aiadmin.states import SalonState
from aiadmin.yclients import ActivationOutcome, ActivationResult
from tests.helpers import page_of
from tests.unit.runner_fakes import (
    FakeClock,
    RecordingPusher,
    ScriptedYClients,
    claim_all,
    engine_of,
    handle,
    linked_sessions,
    make_runner,
    pusher_of,
    put_salon,
    resume_and_connect,
)
from wa_runner.engine import EventKind

S = SalonState


def test_a_linking_attempt_from_qr_to_active(store: Store) -> None:
    clock = FakeClock()
    yclients = ScriptedYClients()
    runner = make_runner(store, clock, yclients=yclients)
    runner.membership.join(clock.now)
    start_onboarding(store, 5, UserData(name="Анна"), clock.now)

    yclients.release.clear()  # YClients answers once the page has seen `activating`

    async def scenario() -> None:
        await claim_all(runner, clock)
        # Each change is sent before the next one comes (a newer state would supersede a queued one).
        for kind, fields in [(EventKind.QR, {"code": "qr-1", "expires_at": clock.now + 60}),
                             (EventKind.QR, {"code": "qr-2", "expires_at": clock.now + 80}),
                             (EventKind.PAIR_SUCCESS, {"detail": "jid"}), (EventKind.CONNECTED, {})]:
            await handle(runner, kind, 5, **fields)
            await runner.writer.drain()
        assert yclients.calling.acquire(timeout=10)
        await runner.writer.drain()  # the activation's pushes (sent from its thread)
        yclients.release.set()
        runner.activations.join(10)
        await runner.writer.drain()

    asyncio.run(scenario())
    salon = store.salons.get(5)
    assert salon is not None and salon.state == S.ACTIVE and yclients.activated == [5]
    lease = store.sessions.get(5)
    assert lease is not None and lease.desired == "run"
    # Every change reached the page, each with its own version (the page orders by these).
    messages = sorted(pusher_of(runner).states(5), key=lambda m: int(m["version"]))
    assert [m["state"] for m in messages] == ["qr_ready", "qr_ready", "pairing", "whatsapp_connected",
                                              "activating", "active"]
    assert len({m["version"] for m in messages}) == len(messages)


@pytest.mark.parametrize("linking_state", [S.QR_READY, S.PENDING_WHATSAPP, S.CODE_READY])
def test_a_session_that_connects_without_a_pairing_event_is_connected_and_activated(
        store: Store, linking_state: SalonState) -> None:
    """Issue 16's bug: the mapping moved a salon connected in `qr_ready` or `pending_whatsapp`
    to `whatsapp_connected`, which the state machine forbade: the CONNECTED event was logged as
    ignored and the linked salon was never activated."""
    clock = FakeClock()
    yclients = ScriptedYClients()
    runner = make_runner(store, clock, yclients=yclients)
    runner.membership.join(clock.now)
    start_onboarding(store, 5, UserData(name="Анна"), clock.now)

    async def scenario() -> None:
        await claim_all(runner, clock)
        if linking_state == S.QR_READY:
            await handle(runner, EventKind.QR, 5, code="qr-1", expires_at=clock.now + 60)
        elif linking_state == S.CODE_READY:
            await handle(runner, EventKind.PAIRING_CODE, 5, code="ABCD-EFGH", expires_at=clock.now + 60)
        salon = store.salons.get(5)
        assert salon is not None and salon.state == linking_state
        await handle(runner, EventKind.CONNECTED, 5)  # WhatsApp connected; no PAIR_SUCCESS came first
        runner.activations.join(10)
        await runner.writer.drain()

    asyncio.run(scenario())
    salon = store.salons.get(5)
    assert salon is not None and salon.state == S.ACTIVE and yclients.activated == [5]
    states = [m["state"] for m in sorted(pusher_of(runner).states(5), key=lambda m: int(m["version"]))]
    assert states[-3:] == ["whatsapp_connected", "activating", "active"]


def test_a_failed_activation_is_not_retried_on_reconnect_only_on_an_explicit_retry(store: Store) -> None:
    """Issue 10's bug: `activation_failed` was activated again on every CONNECTED event, calling
    YClients and firing the ActivationFailed alarm each time."""
    clock = FakeClock()
    yclients = ScriptedYClients()
    runner = make_runner(store, clock, yclients=yclients)
    runner.membership.join(clock.now)
    linked_sessions(store, [5], state=S.ACTIVATION_FAILED)

    async def reconnects() -> None:
        await claim_all(runner, clock)
        await resume_and_connect(runner, clock)
        for _ in range(3):  # the transport drops and comes back
            await handle(runner, EventKind.DISCONNECTED, 5)
            await handle(runner, EventKind.CONNECTED, 5)
        runner.activations.join(10)

    asyncio.run(reconnects())
    assert yclients.activated == []
    salon = store.salons.get(5)
    assert salon is not None and salon.state == S.ACTIVATION_FAILED

    # The owner presses "Подключить" again: the explicit retry activates, once.
    start_onboarding(store, 5, UserData(name="Анна"), clock.now)

    async def retry() -> None:
        await runner.intake.poll(clock.now)
        runner.activations.join(10)
        await handle(runner, EventKind.CONNECTED, 5)
        await runner.intake.reconcile(clock.now)
        runner.activations.join(10)

    asyncio.run(retry())
    assert yclients.activated == [5]
    salon = store.salons.get(5)
    assert salon is not None and salon.state == S.ACTIVE


def test_a_retry_asked_while_nobody_owned_the_session_is_not_lost(store: Store) -> None:
    clock = FakeClock()
    yclients = ScriptedYClients(ActivationResult(ActivationOutcome.PERMANENT_FAILURE, 400, "Агрегатор не найден"))
    linked_sessions(store, [5], state=S.ACTIVATION_FAILED)
    store.sessions.request(5, "run", renew_command=True)  # the retry, between two runners
    runner = make_runner(store, clock, yclients=yclients)
    runner.membership.join(clock.now)

    async def scenario() -> None:
        await claim_all(runner, clock)
        await resume_and_connect(runner, clock)
        runner.activations.join(10)
        await handle(runner, EventKind.CONNECTED, 5)  # refused again: no third call on reconnect
        runner.activations.join(10)

    asyncio.run(scenario())
    assert yclients.activated == [5]
    salon = store.salons.get(5)
    assert salon is not None and salon.state == S.ACTIVATION_FAILED


def test_a_write_refused_by_the_fence_drops_the_session(store: Store) -> None:
    clock = FakeClock()
    runner, other = make_runner(store, clock), make_runner(store, clock, runner_id="other")
    runner.membership.join(clock.now)
    other.membership.join(clock.now)
    put_salon(store, 5, S.PENDING_WHATSAPP)
    store.sessions.request(5, "link")

    async def scenario() -> None:
        await claim_all(runner, clock)
        assert engine_of(runner).running() == {5}
        # The session moved to another runner behind this one's back.
        assert store.sessions.take_over(5, other.membership.fence, runner.membership.fence, clock.now + 100)
        await handle(runner, EventKind.QR, 5, code="stale", expires_at=clock.now + 60)

    asyncio.run(scenario())
    assert 5 not in runner.book and engine_of(runner).running() == set()
    salon = store.salons.get(5)
    assert salon is not None and salon.state == S.PENDING_WHATSAPP and salon.qr is None


def test_a_code_of_an_attempt_the_owner_replaced_is_not_shown(store: Store) -> None:
    """The owner asked for a pairing code while the QR attempt ran; before the runner took that
    command, the old attempt's QR rotated. The old QR must not replace the new attempt's state
    (the page would show a QR after the owner chose the code); the session stays the runner's,
    and the command then starts the code attempt."""
    clock = FakeClock()
    runner = make_runner(store, clock)
    runner.membership.join(clock.now)
    start_onboarding(store, 5, UserData(name="Анна"), clock.now)

    async def scenario() -> None:
        await claim_all(runner, clock)
        await handle(runner, EventKind.QR, 5, code="qr-1", expires_at=clock.now + 60)
        assert request_pairing_code(store, 5, "+7 900 123-45-67", page_of(store, 5), now=clock.now) is not None
        await handle(runner, EventKind.QR, 5, code="qr-2", expires_at=clock.now + 80)
        salon = store.salons.get(5)
        assert salon is not None and salon.state == S.PENDING_WHATSAPP and salon.qr is None
        assert 5 in runner.book
        await runner.intake.poll(clock.now)

    asyncio.run(scenario())
    assert ("pairing_code", 5) in engine_of(runner).log
    pushed = [m["state"] for m in pusher_of(runner).states(5)]
    assert pushed == ["qr_ready"]  # only the first attempt's QR, while it was the attempt


def test_a_logout_unlinks_the_device_and_retires_the_session(store: Store) -> None:
    clock = FakeClock()
    runner = make_runner(store, clock)
    runner.membership.join(clock.now)
    linked_sessions(store, [5])
    engine_of(runner).keys.add(5)

    async def scenario() -> None:
        await claim_all(runner, clock)
        await resume_and_connect(runner, clock)
        await handle(runner, EventKind.LOGGED_OUT, 5)

    asyncio.run(scenario())
    salon = store.salons.get(5)
    assert salon is not None and salon.state == S.WHATSAPP_LOGGED_OUT
    assert not engine_of(runner).has_credentials(5) and 5 not in runner.book
    lease = store.sessions.get(5)
    assert lease is not None and lease.owner is None


def test_the_activations_writes_are_fenced_too(store: Store) -> None:
    """A runner that lost the session neither writes the salon's state nor calls YClients."""
    from aiadmin.activation import ActivationEnd, Activator

    clock = FakeClock()
    runner, other = make_runner(store, clock), make_runner(store, clock, runner_id="other")
    runner.membership.join(clock.now)
    other.membership.join(clock.now)
    linked_sessions(store, [5, 6, 7], state=S.WHATSAPP_CONNECTED)
    asyncio.run(claim_all(runner, clock))
    yclients = ScriptedYClients(ActivationResult(ActivationOutcome.TRANSIENT_FAILURE, 503))
    activator = Activator(store, yclients, "https://aiadmin.example", lambda: runner.membership.fence)
    store.transitions.apply(Transition(5, S.ACTIVATING, "runner", "activating", fence=runner.membership.fence))

    def take_over(salon_id: int) -> bool:
        return store.sessions.take_over(salon_id, other.membership.fence, runner.membership.fence,
                                         clock.now + 100) is not None

    assert take_over(5) and take_over(6)
    assert activator.run(5, lambda _s: True) == ActivationEnd.BUSY   # activating: the new owner goes on
    assert activator.run(6, lambda _s: True) == ActivationEnd.BUSY   # connected: never moved to activating
    assert yclients.activated == []
    # Lost during a backoff: no further call.
    assert activator.run(7, lambda _s: take_over(7)) == ActivationEnd.INTERRUPTED
    assert yclients.activated == [7]
    assert [store.salons.get(s).state for s in (5, 6, 7)] == [  # type: ignore[union-attr]
        S.ACTIVATING, S.WHATSAPP_CONNECTED, S.ACTIVATING]


class HangingFirstSend(RecordingPusher):
    """The first message hangs (a management API that does not answer) until `release`."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.hanging = threading.Event()

    def send(self, connection_id: str, payload: str) -> bool:
        first = not self.pushed
        super().send(connection_id, payload)
        if first:
            self.hanging.set()
            self.release.wait(10)
        return True


def test_a_push_that_missed_its_deadline_comes_again_with_the_latest_state(store: Store) -> None:
    from aiadmin.db.memberships import Fence
    from aiadmin.push import PushPolicy
    from wa_runner.salons import SalonWriter

    clock = FakeClock()
    put_salon(store, 5, S.QR_READY)
    pusher = HangingFirstSend()
    writer = SalonWriter(store, pusher, lambda: Fence("a", 1), clock, PushPolicy(deadline_seconds=10, again_seconds=1))
    stale = store.salons.get(5)
    assert stale is not None

    async def scenario() -> None:
        writer.push(stale)
        assert await asyncio.to_thread(pusher.hanging.wait, 10)
        store.transitions.apply(Transition(5, S.PAIRING, actor="test"))  # moved on before the push came again
        writer.pushes.step(clock.advance(10))  # its deadline passed: it comes again a second later
        writer.pushes.step(clock.advance(0.5))
        assert len(pusher.pushed) == 1
        writer.pushes.step(clock.advance(0.5))
        await writer.drain()
        pusher.release.set()

    try:
        asyncio.run(scenario())
    finally:
        pusher.release.set()
    assert [m["state"] for m in pusher.states(5)] == ["qr_ready", "pairing"]


def test_a_newer_state_supersedes_a_queued_one_and_never_an_older_one(store: Store) -> None:
    """The pool is busy: of three states of a salon waiting for it, only the latest is sent. A
    state older than the one on its way is never sent after it."""
    from aiadmin.db.memberships import Fence
    from wa_runner.salons import SalonWriter

    clock = FakeClock()
    pusher = HangingFirstSend()
    pusher._threads = 1  # one thread: what comes after the hanging send waits for it
    writer = SalonWriter(store, pusher, lambda: Fence("a", 1), clock)
    busy = Salon(salon_id=1, state=S.QR_READY, version=1)
    states = [Salon(salon_id=2, state=state, version=version)
              for version, state in enumerate([S.QR_READY, S.PAIRING, S.WHATSAPP_CONNECTED], start=1)]

    async def scenario() -> None:
        writer.push(busy)
        assert await asyncio.to_thread(pusher.hanging.wait, 10)
        for salon in states:
            writer.push(salon)
        writer.push(states[0])  # late: older than the one waiting
        pusher.release.set()
        await writer.drain()

    try:
        asyncio.run(scenario())
    finally:
        pusher.release.set()
    assert [m["state"] for m in pusher.states(2)] == ["whatsapp_connected"]
