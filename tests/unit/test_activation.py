"""Activation in YClients: every documented and observed answer, over real HTTP against the
fake marketplace, with the salon's state in a moto table built from template.yaml."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pyrate_limiter import Limiter, Rate

from aiadmin import yclients
from aiadmin.activation import ActivationEnd, ActivationPolicy, Activator, backoff_delay
from aiadmin.db import Store
from aiadmin.db.memberships import Fence
from aiadmin.db.transitions import Transition
from aiadmin.states import SalonState
from aiadmin.yclients import RATE_LIMIT_FILE_ENV, PartnerApiError, YClientsClient, process_limiter
from local.fake_yclients import FakeSalon, FakeYClients, ScriptedAnswer
from local.stack import free_port
from tests.helpers import fake_marketplace
from tests.unit.runner_fakes import FakeClock

TOKEN = "partner-token-for-tests"
SALON = 101
BASE = "https://aiadmin.example"


@pytest.fixture(scope="module")
def marketplace() -> Iterator[tuple[FakeYClients, str]]:
    with fake_marketplace(TOKEN) as served:
        yield served


@pytest.fixture
def fake(marketplace: tuple[FakeYClients, str]) -> FakeYClients:
    fake = marketplace[0]
    fake.salons.clear()
    fake.salons[SALON] = FakeSalon(SALON, "Лотос", "Анна", "79001234567", status="pending", consent_at=time.time())
    fake.calls.clear()
    fake.activations.clear()
    fake.scripts.clear()
    fake._recent.clear()
    fake.rate_limit = 1000  # these tests are about answers, not throttling
    return fake


@pytest.fixture
def client(marketplace: tuple[FakeYClients, str]) -> YClientsClient:
    # A private limiter: the process-wide one is tested on its own below.
    return YClientsClient(marketplace[1], TOKEN, 4242, limiter=Limiter(Rate(1000, 1000)), timeout=(1.0, 0.5))


def _member(store: Store, runner_id: str) -> Fence:
    """The runner's membership (joined once): the activation's writes are fenced on it."""
    for member in store.members.all():
        if member.runner_id == runner_id:
            return member.fence
    return Fence(runner_id, store.members.join(runner_id, time.time(), 3600, {}))


def _connected_salon(store: Store, salon_id: int = SALON, deadline_in: float = 3600) -> None:
    """Linked, its session owned by runner-a."""
    now = time.time()
    store.transitions.apply(Transition(
        salon_id, SalonState.PENDING_WHATSAPP, "test",
        attrs={"consent_at": now, "activation_deadline": now + deadline_in}))
    store.transitions.apply(Transition(salon_id, SalonState.PAIRING, "test"))
    store.transitions.apply(Transition(salon_id, SalonState.WHATSAPP_CONNECTED, "test"))
    store.sessions.request(salon_id, "run")
    assert store.sessions.claim(salon_id, _member(store, "runner-a")) is not None


class Waits:
    """Records the backoff the activator asks for, without sleeping."""

    def __init__(self, allow: bool = True) -> None:
        self.delays: list[float] = []
        self.allow = allow

    def __call__(self, seconds: float) -> bool:
        self.delays.append(seconds)
        return self.allow


def _script(fake: FakeYClients, *answers: dict[str, Any]) -> None:
    fake.scripts["activate"] = deque(ScriptedAnswer(**a) for a in answers)


def _activate(store: Store, client: YClientsClient, waits: Waits | None = None, owner: str = "runner-a",
              **policy: Any) -> ActivationEnd:
    notified: list[SalonState] = []
    fence = _member(store, owner)
    activator = Activator(store, client, BASE, lambda: fence, ActivationPolicy(**policy),
                          notify=lambda s: notified.append(s.state))
    return activator.run(SALON, waits or Waits())


def test_201_activates_with_a_per_salon_key_webhook_url_and_channel(store: Store, client: YClientsClient,
                                                                  fake: FakeYClients) -> None:
    _connected_salon(store)
    assert _activate(store, client) == ActivationEnd.ACTIVE
    salon = store.salons.get(SALON)
    assert salon is not None and salon.state == SalonState.ACTIVE
    [activation] = fake.activations
    secrets = store.secrets.get(SALON)
    assert activation["api_key"] == secrets["api_key"] and len(secrets["api_key"]) >= 40
    assert activation["webhook_urls"] == [f"{BASE}/webhook/yclients/{SALON}/{secrets['webhook_secret']}"]
    assert activation["channels"] is None  # no channel declared unless YCLIENTS_CHANNELS names one
    assert [e["to_state"] for e in store.events.of(SALON)][-2:] == ["activating", "active"]


def test_403_already_installed_counts_as_success(store: Store, client: YClientsClient, fake: FakeYClients) -> None:
    _connected_salon(store)
    fake.salons[SALON].status = "active"  # a repeated call after the link is active
    assert _activate(store, client) == ActivationEnd.ACTIVE
    assert [c["status"] for c in fake.calls] == [403]


@pytest.mark.parametrize(("status", "message"), [
    (400, "Агрегатор не найден"), (401, "Неверный токен партнёра"), (422, "Ошибка валидации"),
])
def test_permanent_refusals_fail_at_once_with_the_reason_kept(store: Store, client: YClientsClient,
                                                              fake: FakeYClients, status: int, message: str) -> None:
    _connected_salon(store)
    _script(fake, {"status": status, "message": message})
    waits = Waits()
    assert _activate(store, client, waits) == ActivationEnd.FAILED
    salon = store.salons.get(SALON)
    assert salon is not None and salon.state == SalonState.ACTIVATION_FAILED
    assert salon.activation_error == f"{status} {message}"
    # Never retried; YClients is asked once whether it still waits (it does: not an expired consent).
    assert [c["operation"] for c in fake.calls] == ["activate", "app_status"] and waits.delays == []
    assert store.events.of(SALON)[-1]["to_state"] == "activation_failed"


def test_transient_answers_are_retried_with_growing_jittered_backoff(store: Store, client: YClientsClient,
                                                                      fake: FakeYClients) -> None:
    _connected_salon(store)
    _script(fake,
            {"status": 503},
            {"status": 429, "headers": {"Retry-After": "3"}},
            {"status": 200, "html": "<html><body>YClients</body></html>"},  # a followed redirect
            {"status": 200, "body": {"success": False, "data": None, "meta": {"message": "Ошибка"}}},
            {"status": 502, "html": "<html>Bad Gateway</html>"},
            {"status": 201, "delay": 1.5},  # slower than the client's timeout: no answer
            )
    waits = Waits()
    assert _activate(store, client, waits, first_delay=1.0, max_delay=8.0) == ActivationEnd.ACTIVE
    assert [c.get("status") for c in fake.calls] == [503, 429, 200, 200, 502, 201, 201]
    assert len(fake.activations) == 1
    assert len(waits.delays) == 6
    assert waits.delays[1] >= 3  # Retry-After honoured
    for attempt, delay in enumerate(waits.delays, start=1):
        ceiling = min(8.0, 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= max(ceiling, 3 if attempt == 2 else 0)
    salon = store.salons.get(SALON)
    assert salon is not None and salon.state == SalonState.ACTIVE


def _clocked(store: Store, client: YClientsClient, clock: FakeClock, **policy: Any) -> tuple[Activator, Waits]:
    waits = Waits()

    def wait(seconds: float) -> bool:  # time moves only when the activator waits
        waits.delays.append(seconds)
        clock.advance(seconds)
        return True

    fence = _member(store, "runner-a")
    activator = Activator(store, client, BASE, lambda: fence, ActivationPolicy(**policy), clock=clock)
    return activator, wait  # type: ignore[return-value]


def test_retries_go_on_past_the_owners_hour_while_yclients_still_waits(
        store: Store, client: YClientsClient, fake: FakeYClients) -> None:
    """YClients' help pages say one hour; the platform accepts pending links for 12: our own
    1-hour mark is not the end. Past it, YClients is asked whether it still waits."""
    clock = FakeClock()
    _connected_salon(store)
    fake.salons[SALON].consent_at = time.time()
    # An outage of two hours (as the activator's clock runs), then YClients accepts.
    _script(fake, *[{"status": 503}] * 130)
    activator, wait = _clocked(store, client, clock, first_delay=60, max_delay=60, status_check_seconds=600)
    assert activator.run(SALON, wait) == ActivationEnd.ACTIVE
    salon = store.salons.get(SALON)
    assert salon is not None and salon.state == SalonState.ACTIVE
    assert clock.now - salon.consent_at > 3600  # type: ignore[operator]
    status_checks = [c for c in fake.calls if c["operation"] == "app_status"]
    past_the_hour = clock.now - salon.consent_at - 3600  # type: ignore[operator]
    # Every 10 minutes past the hour, not at every retry (one a minute).
    assert 1 <= len(status_checks) <= past_the_hour // 600 + 1


def test_retries_stop_when_yclients_no_longer_has_the_consent_pending(
        store: Store, client: YClientsClient, fake: FakeYClients) -> None:
    clock = FakeClock()
    _connected_salon(store)
    _script(fake, *[{"status": 503}] * 200)
    activator, wait = _clocked(store, client, clock, first_delay=60, max_delay=60, status_check_seconds=300)

    def lapse_after_90_minutes(seconds: float) -> bool:
        result = wait(seconds)  # type: ignore[operator]
        if clock.now - store.salons.get(SALON).consent_at > 5400:  # type: ignore[union-attr,operator]
            fake.salons[SALON].status = None  # YClients dropped the pending link
        return bool(result)

    assert activator.run(SALON, lapse_after_90_minutes) == ActivationEnd.EXPIRED
    salon = store.salons.get(SALON)
    assert salon is not None and salon.state == SalonState.EXPIRED_CONSENT
    assert 5400 < clock.now - salon.consent_at < 5400 + 300 + 61  # type: ignore[operator]
    assert store.events.of(SALON)[-1]["reason"] == "YClients no longer has the app pending"


def test_retries_stop_at_the_12_hour_cap_even_if_yclients_still_says_pending(
        store: Store, client: YClientsClient, fake: FakeYClients) -> None:
    clock = FakeClock()
    _connected_salon(store)
    fake.rate_limit = 10**6
    activator, wait = _clocked(store, client, clock, first_delay=600, max_delay=600, status_check_seconds=3600)
    # The activation keeps failing; the status keeps saying pending (the fake's own window is real time).
    _script(fake, *[{"status": 503}] * 200)
    assert activator.run(SALON, wait) == ActivationEnd.EXPIRED
    salon = store.salons.get(SALON)
    assert salon is not None and salon.state == SalonState.EXPIRED_CONSENT
    assert clock.now - salon.consent_at == pytest.approx(12 * 3600, abs=1)  # type: ignore[operator]
    # Every 5 to 10 minutes (the jittered backoff) for 12 hours, then no more.
    assert 12 * 6 < len([c for c in fake.calls if c["operation"] == "activate"]) <= 12 * 12 + 1
    assert len(fake.scripts["activate"]) > 0


def test_a_refusal_after_the_window_lapsed_ends_in_expired_consent(store: Store, client: YClientsClient,
                                                                  fake: FakeYClients) -> None:
    """The fake accepts pending links for 12 hours; after that it refuses (422) and no longer
    reports the app: YClients' own refusal decides, and it reads as an expired consent."""
    _connected_salon(store)
    fake.salons[SALON].consent_at = time.time() - 12 * 3600 - 1
    assert _activate(store, client) == ActivationEnd.EXPIRED
    salon = store.salons.get(SALON)
    assert salon is not None and salon.state == SalonState.EXPIRED_CONSENT
    assert salon.activation_error is not None and "422" in salon.activation_error


def test_within_the_window_the_fake_accepts_after_the_hour(store: Store, client: YClientsClient,
                                                           fake: FakeYClients) -> None:
    _connected_salon(store)
    fake.salons[SALON].consent_at = time.time() - 3 * 3600
    assert _activate(store, client) == ActivationEnd.ACTIVE


def test_a_repeated_activation_keeps_the_key_yclients_may_hold(store: Store, client: YClientsClient,
                                                               fake: FakeYClients) -> None:
    _connected_salon(store)
    _script(fake, {"status": 400, "message": "Агрегатор не найден"})
    assert _activate(store, client) == ActivationEnd.FAILED
    first = store.secrets.get(SALON)
    assert _activate(store, client) == ActivationEnd.ACTIVE  # from activation_failed
    assert store.secrets.get(SALON) == first
    assert fake.activations[-1]["api_key"] == first["api_key"]


def _atomic_calls(store: Store) -> None:
    """DynamoDB applies each conditional write atomically; moto's in-memory table does not when
    two threads write at once. Serialise the store's calls, as the real service would."""
    lock = threading.Lock()
    events = store.table.meta.client.meta.events

    def acquire(**_kwargs: Any) -> None:
        lock.acquire()

    def release(**_kwargs: Any) -> None:
        if lock.locked():
            lock.release()

    events.register("before-call.dynamodb", acquire)
    events.register("after-call.dynamodb", release)
    events.register("after-call-error.dynamodb", release)


def test_two_concurrent_triggers_make_exactly_one_activation(store: Store, client: YClientsClient,
                                                            fake: FakeYClients) -> None:
    """The session's owner activates; another runner's trigger is BUSY (whichever comes first)."""
    _atomic_calls(store)
    _connected_salon(store)
    _script(fake, {"passthrough": True, "delay": 0.3})  # slow enough for the two to overlap
    barrier = threading.Barrier(2)
    ends: list[ActivationEnd] = []

    def trigger(owner: str) -> None:
        barrier.wait()
        ends.append(_activate(store, client, owner=owner))

    threads = [threading.Thread(target=trigger, args=(owner,)) for owner in ("runner-a", "runner-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(ends) == [ActivationEnd.ACTIVE, ActivationEnd.BUSY]
    assert len([c for c in fake.calls if c["operation"] == "activate"]) == 1
    assert len(fake.activations) == 1


def test_an_abandoned_activation_is_finished_by_the_sessions_next_owner(store: Store, client: YClientsClient,
                                                                        fake: FakeYClients) -> None:
    _connected_salon(store)
    # runner-a started activating and died during a backoff.
    _script(fake, {"status": 503})
    assert _activate(store, client, Waits(allow=False), owner="runner-a") == ActivationEnd.INTERRUPTED
    salon = store.salons.get(SALON)
    assert salon is not None and salon.state == SalonState.ACTIVATING
    assert _activate(store, client, owner="runner-b") == ActivationEnd.BUSY  # the session is still runner-a's
    assert store.sessions.take_over(SALON, _member(store, "runner-b"), _member(store, "runner-a"),
                                     time.time() + 7200) is not None
    assert _activate(store, client, owner="runner-a") == ActivationEnd.BUSY  # no longer its session
    assert _activate(store, client, owner="runner-b") == ActivationEnd.ACTIVE
    # The same key as the first attempt: YClients may have registered it already.
    assert fake.activations[0]["api_key"] == store.secrets.get(SALON)["api_key"]


def test_an_uninstall_during_retries_wins(store: Store, client: YClientsClient, fake: FakeYClients) -> None:
    _connected_salon(store)
    _script(fake, {"status": 503})

    def uninstall_then_continue(_seconds: float) -> bool:
        store.transitions.apply(Transition(SALON, SalonState.UNINSTALLED, "yclients", "lifecycle uninstall"))
        return True

    assert _activate(store, client, uninstall_then_continue) == ActivationEnd.INTERRUPTED
    salon = store.salons.get(SALON)
    assert salon is not None and salon.state == SalonState.UNINSTALLED
    assert len(fake.calls) == 1


def test_backoff_is_capped_and_never_below_retry_after() -> None:
    policy = ActivationPolicy(first_delay=1, max_delay=60)
    assert all(30 <= backoff_delay(attempt, policy) <= 60 for attempt in range(7, 30))
    assert backoff_delay(1, policy, retry_after=10) == 10


def _six_calls_each_at_once(clients: list[YClientsClient]) -> float:
    """Each client asks for the app status 6 times, all clients at once; the seconds it took."""
    started = time.monotonic()
    threads = [threading.Thread(target=lambda c=c: [c.app_status(SALON) for _ in range(6)]) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return time.monotonic() - started


def test_process_limiter_keeps_every_client_under_5_requests_per_second(marketplace: tuple[FakeYClients, str],
                                                                      fake: FakeYClients) -> None:
    fake.rate_limit = 5  # as YClients
    clients = [YClientsClient(marketplace[1], TOKEN, 4242) for _ in range(2)]  # both on the process limiter
    assert _six_calls_each_at_once(clients) >= 2.0  # 12 calls at 5 per 1.1 s
    assert [c["status"] for c in fake.calls] == [200] * 12


def test_processes_sharing_a_limit_file_stay_under_5_requests_per_second_together(
        marketplace: tuple[FakeYClients, str], fake: FakeYClients, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Two limiters built from one file, as two processes of the local stack build theirs.
    monkeypatch.setenv(RATE_LIMIT_FILE_ENV, str(tmp_path / "limit.sqlite"))
    fake.rate_limit = 5
    clients = [YClientsClient(marketplace[1], TOKEN, 4242, limiter=process_limiter.__wrapped__()) for _ in range(2)]
    assert _six_calls_each_at_once(clients) >= 2.0
    assert [c["status"] for c in fake.calls] == [200] * 12


def test_the_fake_answers_429_above_5_requests_per_second_and_the_client_waits_it_out(
        marketplace: tuple[FakeYClients, str], client: YClientsClient, fake: FakeYClients) -> None:
    fake.rate_limit = 5
    url = f"{marketplace[1]}/marketplace/salon/{SALON}/application/4242"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    burst = [requests.get(url, headers=headers, timeout=5).status_code for _ in range(8)]
    assert burst[:5] == [200] * 5 and set(burst[5:]) == {429}
    # Someone else used up the second: our client's call is refused once, then retried after a pause.
    assert client.app_status(SALON) == "pending"
    assert [c["status"] for c in fake.calls][-2:] == [429, 200]


def test_an_unreachable_yclients_is_asked_again_after_short_pauses_then_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GET that never reaches YClients (here a closed port) changes nothing: it is tried three
    times, 0.5 s then 1 s apart (the pauses recorded, not slept), then refused naming the error."""
    pauses: list[float] = []
    monkeypatch.setattr(yclients.time, "sleep", pauses.append)
    closed = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    client = YClientsClient(closed, TOKEN, 4242, limiter=Limiter(Rate(1000, 1000)), timeout=(1.0, 0.5))
    with pytest.raises(PartnerApiError) as refused:
        client.app_status(SALON)
    assert refused.value.status is None and refused.value.message == "ConnectionError"
    assert pauses == [0.5, 1.0]


def test_the_channels_named_are_declared(store: Store, client: YClientsClient, fake: FakeYClients) -> None:
    _connected_salon(store)
    assert _activate(store, client, channels=("whatsapp",)) == ActivationEnd.ACTIVE
    assert [a["channels"] for a in fake.activations] == [["whatsapp"]]
