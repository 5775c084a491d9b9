"""The neonize adapter, fed with neonize's own event objects the way neonize's Go side
delivers them: serialised protobuf handed to neonize's `Event.execute` (and the raw QR
string to the client's QR callback), on threads other than the engine's loop. Nothing here
connects to WhatsApp."""

from __future__ import annotations

import asyncio
import ctypes
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st
from neonize.client import ClientFactory, NewClient
from neonize.events import (
    EVENT_TO_INT,
    ClientOutdatedEv,
    ConnectedEv,
    DisconnectedEv,
    LoggedOutEv,
    PairStatusEv,
    StreamReplacedEv,
    TemporaryBanEv,
)
from neonize.proto.Neonize_pb2 import JID, ConnectFailureReason, PairStatus, TemporaryBan

from wa_runner.engine import EngineEvent, EventKind
from wa_runner.keys import SqliteKeyFiles
from wa_runner.neonize_engine import NeonizeEngine, SessionEvents, jid_from_text, jid_to_text

QR_CODE = b"2@abc,noise,identity,adv,1"
SALON_JID = JID(User="79001234567", Device=12, Server="s.whatsapp.net", RawAgent=0, Integrator=0, IsEmpty=False)
NO_JID = JID(User="", Device=0, Server="", RawAgent=0, Integrator=0, IsEmpty=True)


def pair_status(status: int, jid: JID = NO_JID, error: str = "") -> PairStatus:
    """As neonize's Go side fills it (ID, BusinessName and Platform are required fields)."""
    return PairStatusEv(ID=jid, BusinessName="", Platform="android", Status=status, Error=error)


class Harness:
    """A SessionEvents on a running loop, with a real neonize client whose callbacks it holds."""

    def __init__(self, loop: asyncio.AbstractEventLoop, attempt_seconds: float = 160.0) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[EngineEvent] = asyncio.Queue()
        self.linked: list[str] = []
        self.events = SessionEvents(101, 7, loop, self.queue.put_nowait, attempt_seconds,
                                    on_linked=self.linked.append)
        self.client = NewClient("unused.db", uuid="unit-test-client")
        self.events.register(self.client)

    def go_event(self, message: Message) -> None:
        """What Go does for an event: serialise it and call neonize's dispatcher with its code."""
        data = message.SerializeToString()
        buffer = ctypes.create_string_buffer(data, len(data) or 1)
        self.client.event.execute(0, ctypes.addressof(buffer), len(data), EVENT_TO_INT[type(message)])

    def go_qr(self, code: bytes) -> None:
        """What Go does for a QR code: call the client's QR callback with a C string."""
        buffer = ctypes.create_string_buffer(code)
        self.client._NewClient__onQr(0, ctypes.addressof(buffer))  # type: ignore[attr-defined]

    def from_go_thread(self, *calls: Any) -> None:
        """Run the calls on another thread, as Go's callbacks are."""
        thread = threading.Thread(target=lambda: [call() for call in calls])
        thread.start()
        thread.join()

    async def next_events(self, count: int, timeout: float = 2.0) -> list[EngineEvent]:
        return [await asyncio.wait_for(self.queue.get(), timeout) for _ in range(count)]


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.mark.parametrize(("message", "kind", "detail"), [
    (pair_status(PairStatus.SUCCESS, SALON_JID), EventKind.PAIR_SUCCESS, "79001234567:12@s.whatsapp.net"),
    (pair_status(PairStatus.ERROR, error="server refused pairing: maximum number of devices"),
     EventKind.LINK_REFUSED, "server refused pairing: maximum number of devices"),
    (pair_status(PairStatus.ERROR, error="Passkey verification required"),
     EventKind.PASSKEY_REQUIRED, "Passkey verification required"),
    (ConnectedEv(status=True), EventKind.CONNECTED, ""),
    (LoggedOutEv(OnConnect=True, Reason=ConnectFailureReason.LOGGED_OUT), EventKind.LOGGED_OUT,
     "LOGGED_OUT on connect"),
    (LoggedOutEv(OnConnect=False, Reason=ConnectFailureReason.MAIN_DEVICE_GONE), EventKind.LOGGED_OUT,
     "MAIN_DEVICE_GONE"),
    (StreamReplacedEv(), EventKind.STREAM_REPLACED, ""),
    (TemporaryBanEv(Code=TemporaryBan.SEND_TO_TOO_MANY_PEOPLE, Expire=3600), EventKind.BANNED,
     "SEND_TO_TOO_MANY_PEOPLE, expires in 3600 s"),
    (ClientOutdatedEv(), EventKind.CLIENT_OUTDATED, "405 client outdated"),
    (DisconnectedEv(status=True), EventKind.DISCONNECTED, ""),
])
def test_each_neonize_event_becomes_its_engine_event(loop: asyncio.AbstractEventLoop, message: Message,
                                                       kind: EventKind, detail: str) -> None:
    harness = Harness(loop)
    harness.from_go_thread(lambda: harness.go_event(message))
    [event] = loop.run_until_complete(harness.next_events(1))
    assert (event.kind, event.salon_id, event.generation, event.detail) == (kind, 101, 7, detail)
    assert harness.events.alive.is_set()


def test_pair_success_records_the_device_before_the_runner_hears_of_it(loop: asyncio.AbstractEventLoop) -> None:
    harness = Harness(loop)
    harness.from_go_thread(lambda: harness.go_event(pair_status(PairStatus.SUCCESS, SALON_JID)))
    [event] = loop.run_until_complete(harness.next_events(1))
    assert harness.linked == ["79001234567:12@s.whatsapp.net"] == [event.detail]


def test_qr_codes_follow_whatsapps_schedule_and_mark_the_connection_up(loop: asyncio.AbstractEventLoop) -> None:
    harness = Harness(loop)
    before = time.time()
    harness.from_go_thread(*(lambda n=n: harness.go_qr(QR_CODE + str(n).encode()) for n in range(3)))
    events = loop.run_until_complete(harness.next_events(3))
    assert [e.kind for e in events] == [EventKind.QR] * 3
    assert [e.code for e in events] == [(QR_CODE + str(n).encode()).decode() for n in range(3)]
    assert events[0].expires_at is not None and 59 <= events[0].expires_at - before <= 61
    assert events[1].expires_at is not None and 19 <= events[1].expires_at - before <= 21
    assert harness.events.connection_up.is_set()
    deadline = harness.events.attempt_deadline
    assert deadline is not None and 159 <= deadline - before <= 161


def test_our_own_timer_ends_an_attempt_nobody_scanned(loop: asyncio.AbstractEventLoop) -> None:
    harness = Harness(loop, attempt_seconds=0.3)
    harness.from_go_thread(lambda: harness.go_qr(QR_CODE))
    started = time.monotonic()
    qr, timeout = loop.run_until_complete(harness.next_events(2))
    assert (qr.kind, timeout.kind) == (EventKind.QR, EventKind.QR_TIMEOUT)
    assert 0.2 <= time.monotonic() - started <= 1.5


def test_a_paired_attempt_does_not_time_out(loop: asyncio.AbstractEventLoop) -> None:
    harness = Harness(loop, attempt_seconds=0.3)
    harness.from_go_thread(lambda: harness.go_qr(QR_CODE),
                           lambda: harness.go_event(pair_status(PairStatus.SUCCESS, SALON_JID)))
    kinds = [e.kind for e in loop.run_until_complete(harness.next_events(2))]
    assert kinds == [EventKind.QR, EventKind.PAIR_SUCCESS]
    with pytest.raises(TimeoutError):
        loop.run_until_complete(harness.next_events(1, timeout=0.6))


def test_a_stopped_session_delivers_nothing_more(loop: asyncio.AbstractEventLoop) -> None:
    harness = Harness(loop, attempt_seconds=0.2)
    harness.from_go_thread(lambda: harness.go_qr(QR_CODE))
    loop.run_until_complete(harness.next_events(1))
    harness.events.close()
    harness.from_go_thread(lambda: harness.go_event(ConnectedEv(status=True)))
    with pytest.raises(TimeoutError):  # neither the late event nor the attempt timer
        loop.run_until_complete(harness.next_events(1, timeout=0.5))


def test_events_from_many_go_threads_all_arrive(loop: asyncio.AbstractEventLoop) -> None:
    harness = Harness(loop)
    threads = [threading.Thread(target=harness.go_event, args=(DisconnectedEv(status=True),)) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = loop.run_until_complete(harness.next_events(50))
    assert {e.kind for e in events} == {EventKind.DISCONNECTED}


@given(user=st.text("0123456789", min_size=5, max_size=15), device=st.integers(0, 99), agent=st.integers(0, 3))
def test_jid_text_round_trip(user: str, device: int, agent: int) -> None:
    jid = JID(User=user, Device=device, RawAgent=agent, Server="s.whatsapp.net", Integrator=0, IsEmpty=False)
    assert jid_from_text(jid_to_text(jid)) == jid


def _neonize_store_with_device(keys: SqliteKeyFiles, salon_id: int, jid: str) -> None:
    """Let neonize's Go side create the salon's store, then put a linked device row in it."""
    assert ClientFactory.get_all_devices_from_db(keys.database(salon_id)) == []
    with sqlite3.connect(keys.path(salon_id)) as db:
        db.execute(
            "INSERT INTO whatsmeow_device (jid, registration_id, noise_key, identity_key, signed_pre_key, "
            "signed_pre_key_id, signed_pre_key_sig, adv_key, adv_details, adv_account_sig, adv_account_sig_key, "
            "adv_device_sig) VALUES (?, 1, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?)",
            (jid, b"n" * 32, b"i" * 32, b"s" * 32, b"g" * 64, b"a", b"d", b"x" * 64, b"k" * 32, b"v" * 64))


def test_each_salon_has_its_own_neonize_store_file(tmp_path: Path) -> None:
    keys = SqliteKeyFiles(tmp_path)
    engine = NeonizeEngine(keys)
    fresh = engine.new_client(101)
    again = engine.new_client(101)
    assert fresh.name == str(tmp_path / "101.db") and fresh.jid is None and fresh.new_device
    assert fresh.uuid != again.uuid  # a collected old client never stops a newer session
    assert not engine.has_credentials(101)

    _neonize_store_with_device(keys, 102, "79001234567:12@s.whatsapp.net")
    [device] = ClientFactory.get_all_devices_from_db(keys.database(102))  # whatsmeow's own reading
    assert f"{device.JID.User}@{device.JID.Server}" == keys.device_jid(102) == "79001234567:12@s.whatsapp.net"
    resumed = engine.new_client(102)
    assert resumed.name == str(tmp_path / "102.db") and resumed.jid == SALON_JID
    assert engine.has_credentials(102)


def test_start_ups_are_serialised(tmp_path: Path) -> None:
    """Several salons started at once: each start-up holds the lock until its session
    answered, so no two `connect()` calls are ever starting together. (`connect` itself is
    replaced: it cannot reach WhatsApp here.)"""
    starting: list[tuple[str, int, float]] = []

    class RecordingEngine(NeonizeEngine):
        @staticmethod
        def _connect(client: NewClient, events: SessionEvents) -> None:
            starting.append(("begin", events.salon_id, time.monotonic()))
            time.sleep(0.1)
            starting.append(("answered", events.salon_id, time.monotonic()))
            events.on_connected(client, ConnectedEv(status=True))
            time.sleep(0.3)
            events.connection_ended("")

    async def scenario() -> list[EngineEvent]:
        engine = RecordingEngine(SqliteKeyFiles(tmp_path))
        await asyncio.gather(*(engine.start(salon_id, 1) for salon_id in (1, 2, 3)))
        received = [await asyncio.wait_for(engine.events.get(), 2) for _ in range(3)]
        await engine.close()
        return received

    received = asyncio.run(scenario())
    assert {e.kind for e in received} == {EventKind.CONNECTED}
    order = [(step, salon) for step, salon, _ in starting]
    assert [step for step, _ in order] == ["begin", "answered"] * 3
    assert all(order[i][1] == order[i + 1][1] for i in range(0, 6, 2))
