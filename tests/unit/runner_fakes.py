"""Stand-ins for the runner's unit tests: an in-memory WhatsApp engine, the one fake clock, a
pusher and a YClients client that record what they are asked, and a runner built from its parts
on a moto table (no loops, no subprocesses, no sleeps: the tests call each part's step with the
clock's time)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from aiadmin.activation import ActivationPolicy
from aiadmin.db import Store
from aiadmin.models import Salon
from aiadmin.push import Pusher
from aiadmin.states import SalonState
from aiadmin.yclients import ActivationOutcome, ActivationResult, PartnerApiError, YClientsClient
from tests.unit.fakes import FakeClock
from wa_runner.engine import EngineEvent, EventKind, SendFailed, Sent
from wa_runner.inbound import MessageQueue
from wa_runner.pace import PacePolicy
from wa_runner.runner import Runner, RunnerLimits

LEASE = 20.0


class InMemoryEngine:
    """A WhatsApp engine in memory: sessions are a dict, events are what the test emits."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[EngineEvent] = asyncio.Queue()
        self.sessions: dict[int, int] = {}  # salon -> generation running
        self.keys: set[int] = set()
        self.log: list[tuple[str, int]] = []
        self.fail_start: set[int] = set()
        self.sent: list[tuple[int, str, str, str]] = []  # (salon, to, text, WhatsApp id), in order
        self.not_on_whatsapp: set[str] = set()
        self.connected: set[int] = set()  # salons whose session can send (CONNECTED was reported)

    def has_credentials(self, salon_id: int) -> bool:
        return salon_id in self.keys

    async def start(self, salon_id: int, generation: int) -> None:
        if salon_id in self.fail_start:
            raise RuntimeError("engine refused to start")
        self.sessions[salon_id] = generation
        self.log.append(("start", salon_id))

    async def request_pairing_code(self, salon_id: int, phone: str) -> None:
        self.log.append(("pairing_code", salon_id))

    async def stop(self, salon_id: int, logout: bool = False) -> None:
        if self.sessions.pop(salon_id, None) is not None:
            self.log.append(("stop", salon_id))
        if logout:
            self.keys.discard(salon_id)
            self.log.append(("logout", salon_id))

    def running(self) -> set[int]:
        return set(self.sessions)

    async def send_text(self, salon_id: int, to_phone: str, text: str) -> Sent:
        if salon_id not in self.sessions:
            raise SendFailed("salon_not_linked")
        if to_phone in self.not_on_whatsapp:
            raise SendFailed("not_on_whatsapp")
        wa_id = f"WA{len(self.sent) + 1:06d}"
        self.sent.append((salon_id, to_phone, text, wa_id))
        return Sent(wa_id, time.time())

    async def close(self) -> None:
        self.sessions.clear()

    def event(self, kind: EventKind, salon_id: int, **fields: Any) -> EngineEvent:
        return EngineEvent(kind, salon_id, self.sessions.get(salon_id, 0), **fields)

    def crash(self, salon_id: int) -> None:
        self.sessions.pop(salon_id, None)

    def starts(self, salon_id: int) -> int:
        return self.log.count(("start", salon_id))


class RecordingPusher(Pusher):
    """Every salon has one open page, `page-<salon id>`; records what each page receives."""

    def __init__(self, threads: int = 4) -> None:
        super().__init__("http://127.0.0.1:9", client=object(), threads=threads)
        self.pushed: list[tuple[int, str]] = []
        self._lock = threading.Lock()

    def audience(self, store: Store, salon: Salon, now: float) -> tuple[list[str], list[tuple[str, str]]]:
        return [f"page-{salon.salon_id}"], []

    def send(self, connection_id: str, payload: str) -> bool:
        with self._lock:
            self.pushed.append((int(connection_id.removeprefix("page-")), payload))
        return True

    def states(self, salon_id: int) -> list[dict[str, Any]]:
        """The messages the salon's page received, in the order they were sent."""
        with self._lock:
            return [json.loads(payload) for pushed_id, payload in self.pushed if pushed_id == salon_id]


class ScriptedYClients(YClientsClient):
    """Answers activations from a script (default: 201); records the salons it was called for."""

    def __init__(self, *answers: ActivationResult) -> None:
        super().__init__("http://127.0.0.1:9", "partner-token", 1)
        self.answers = list(answers)
        self.activated: list[int] = []
        self.release = threading.Event()
        self.release.set()
        self.calling = threading.Semaphore(0)

    def activate(self, salon_id: int, api_key: str, webhook_urls: list[str],
                 channels: list[str] | None = None) -> ActivationResult:
        self.activated.append(salon_id)
        self.calling.release()
        self.release.wait(30)  # a test holds the call to play a YClients outage
        if self.answers:
            return self.answers.pop(0)
        return ActivationResult(ActivationOutcome.ACTIVATED, 201)

    def app_status(self, salon_id: int) -> str | None:
        # What the real client raises for a YClients it cannot reach (its base URL here is a closed
        # port), without its quick retries' real pauses.
        raise PartnerApiError("app status", None, "ConnectionError")


def make_runner(store: Store, clock: FakeClock, engine: InMemoryEngine | None = None,
                yclients: ScriptedYClients | None = None, runner_id: str = "runner-a",
                limits: RunnerLimits | None = None, activation_workers: int = 2,
                inbound_queue: MessageQueue | None = None, pace: PacePolicy | None = None) -> Runner:
    return Runner(runner_id, store, engine or InMemoryEngine(), RecordingPusher(), yclients or ScriptedYClients(),
                  "https://aiadmin.example", lease_seconds=LEASE, limits=limits,
                  activation_policy=ActivationPolicy(first_delay=0.01), activation_workers=activation_workers,
                  clock=clock, inbound_queue=inbound_queue, pace=pace)


def engine_of(runner: Runner) -> InMemoryEngine:
    engine = runner._engine
    assert isinstance(engine, InMemoryEngine)
    return engine


def pusher_of(runner: Runner) -> RecordingPusher:
    pusher = runner._pusher
    assert isinstance(pusher, RecordingPusher)
    return pusher


def put_salon(store: Store, salon_id: int, state: SalonState, **attrs: Any) -> None:
    now = time.time()
    store.salons.put(Salon(salon_id=salon_id, state=state, version=3, updated_at=now,
                          activation_deadline=now + 3600, **attrs))


async def handle(runner: Runner, kind: EventKind, salon_id: int, **fields: Any) -> None:
    """The engine reports `kind` for the salon; the runner's worker for the salon handles it."""
    runner.events.dispatch(engine_of(runner).event(kind, salon_id, **fields))
    worker = runner.events.workers.get(salon_id)
    if worker is not None:
        await worker


async def claim_all(runner: Runner, clock: FakeClock) -> None:
    """Claim polls until each partition had its turn."""
    from aiadmin.db.sessions import RESUME_SHARDS
    from wa_runner.claims import RESUME_EVERY

    for _ in range(RESUME_EVERY * RESUME_SHARDS):
        await runner.claimer.claim_step(clock.now)


async def resume_and_connect(runner: Runner, clock: FakeClock) -> None:
    """Start every queued linked session (a few at a time, as the runner does) and connect it."""
    while runner.resumes.waiting():
        await runner.resumes.step(clock.now)
        for salon_id in [owned.salon_id for owned in runner.book.sessions() if owned.phase.value == "starting"]:
            await handle(runner, EventKind.CONNECTED, salon_id)


def linked_sessions(store: Store, salon_ids: range | list[int], state: SalonState = SalonState.ACTIVE) -> None:
    for salon_id in salon_ids:
        put_salon(store, salon_id, state)
        store.sessions.request(salon_id, "run")


def live_through(clock: FakeClock, seconds: float, *runners: Runner, tick: float = 0.5) -> None:
    """Time passes; these runners' membership threads run their steps meanwhile (the others'
    do not: frozen, killed or cut off)."""
    end = clock.now + seconds
    while clock.now < end:
        clock.advance(min(tick, end - clock.now))
        for runner in runners:
            runner.membership.step(clock.now)
