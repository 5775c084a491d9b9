"""Fan-out to a salon's page sockets through the management API: a stand-in for API Gateway
(it cannot run here) that answers as API Gateway does, 410 for a gone connection and also for
one whose $connect is still under way."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from aiadmin.db import Store
from aiadmin.models import Salon
from aiadmin.push import Pusher
from aiadmin.states import SalonState

SALON = Salon(salon_id=9, state=SalonState.QR_READY, consent_id="consent-now")
LIVE = time.time() + 1800  # a token expiry an hour away


def _open(store: Store, connection_id: str, consent_id: str | None = "consent-now", token_exp: float = LIVE) -> None:
    store.connections.add(connection_id, 9, token_exp=token_exp, consent_id=consent_id)


class ManagementApi(BaseHTTPRequestHandler):
    handshaking: ClassVar[set[str]] = {"c-new"}  # $connect under way: 410 once, then open
    gone: ClassVar[set[str]] = {"c-gone"}
    received: ClassVar[list[str]] = []
    payloads: ClassVar[dict[str, list[dict[str, object]]]] = {}
    closed: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        connection_id = self.path.rsplit("/", 1)[1]
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.payloads.setdefault(connection_id, []).append(json.loads(body))
        if connection_id in self.gone or connection_id in self.handshaking:
            self.handshaking.discard(connection_id)
            self.send_response(410)
            self.send_header("x-amzn-ErrorType", "GoneException")
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"message": "Gone"}')
            return
        self.received.append(connection_id)
        self.send_response(200)
        self.end_headers()

    def do_DELETE(self) -> None:
        self.closed.append(self.path.rsplit("/", 1)[1])
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def management_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ManagementApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_connection_still_in_its_handshake_gets_the_message_and_a_gone_one_is_forgotten(
        store: Store, management_url: str) -> None:
    for connection_id in ("c-open", "c-new", "c-gone"):
        _open(store, connection_id)
    assert Pusher(management_url).fan_out(store, SALON, '{"type": "state"}') == 2
    assert sorted(ManagementApi.received) == ["c-new", "c-open"]
    assert sorted(store.connections.ids_of(9)) == ["c-new", "c-open"]


class BlockingManagementApi(Pusher):
    """Answers a delivery only once `release` lets it (per connection), recording the order."""

    def __init__(self, release: dict[str, threading.Event]) -> None:
        super().__init__("http://127.0.0.1:9", client=object())
        self.release = release
        self.sent: list[str] = []

    def send(self, connection_id: str, payload: str) -> bool:
        if not self.release[connection_id].wait(5):
            raise TimeoutError(connection_id)
        self.sent.append(connection_id)
        return True


def test_a_fan_out_sends_to_every_connection_at_once(store: Store) -> None:
    connections = [f"c{n}" for n in range(5)]
    for connection_id in connections:
        _open(store, connection_id)
    # Every delivery waits until all five are in flight: one at a time, the first would wait in vain.
    barrier = threading.Barrier(len(connections), timeout=5)

    class Together(BlockingManagementApi):
        def send(self, connection_id: str, payload: str) -> bool:
            barrier.wait()
            return super().send(connection_id, payload)

    pusher = Together({c: threading.Event() for c in connections})
    for event in pusher.release.values():
        event.set()
    assert pusher.deliver(store, SALON, "{}") == (5, True)
    assert sorted(pusher.sent) == connections


def test_a_fan_out_gives_up_at_its_deadline_without_waiting_for_a_hanging_connection(store: Store) -> None:
    for connection_id in ("c1", "c2", "c-hangs"):
        _open(store, connection_id)
    release = {"c1": threading.Event(), "c2": threading.Event(), "c-hangs": threading.Event()}
    release["c1"].set()
    release["c2"].set()
    pusher = BlockingManagementApi(release)
    # Two answer at once, one never does: the fan-out returns at its 0.2 s deadline all the same.
    assert pusher.deliver(store, SALON, "{}", deadline_seconds=0.2) == (2, False)
    release["c-hangs"].set()
    assert sorted(pusher.sent)[:2] == ["c1", "c2"]
    assert "c-hangs" in store.connections.ids_of(9)  # late, not gone: kept for the next push


def test_a_push_reaches_only_current_tokens_and_ends_the_others(store: Store, management_url: str) -> None:
    """Issue 15: a socket whose token expired, or whose consent is no longer the salon's (an old
    owner's, after an uninstall and a new owner's consent), never receives the state (its QR):
    it gets one last message saying why, is closed and forgotten."""
    _open(store, "c-current")
    _open(store, "c-old-owner", consent_id="consent-before")
    _open(store, "c-expired", token_exp=time.time() - 1)
    _open(store, "c-legacy", consent_id=None)  # connected before tokens named a consent
    assert Pusher(management_url).fan_out(store, SALON, '{"type": "state", "qr": "secret-qr"}') == 1
    assert ManagementApi.payloads["c-current"] == [{"type": "state", "qr": "secret-qr"}]
    ended = {c: ManagementApi.payloads[c] for c in ("c-old-owner", "c-expired", "c-legacy")}
    assert {c: [m["code"] for m in messages] for c, messages in ended.items()} == {
        "c-old-owner": ["token_revoked"], "c-expired": ["token_expired"], "c-legacy": ["token_revoked"]}
    assert all(m["type"] == "error" and "qr" not in m for messages in ended.values() for m in messages)
    assert sorted(ManagementApi.closed) == ["c-expired", "c-legacy", "c-old-owner"]
    assert store.connections.ids_of(9) == ["c-current"]
    assert store.connections.salon_of("c-old-owner") is None


def test_an_uninstall_is_the_last_state_its_pages_receive(store: Store, management_url: str) -> None:
    """The uninstall ended the consent (a new consent id): the pages of the old one get the
    `uninstalled` state as their last message, then are closed; an expired page gets no state."""
    _open(store, "u-page")
    _open(store, "u-expired", token_exp=time.time() - 1)
    uninstalled = SALON.model_copy(update={"state": SalonState.UNINSTALLED, "consent_id": "after-the-uninstall"})
    assert Pusher(management_url).fan_out(store, uninstalled, '{"type": "state", "state": "uninstalled"}') == 0
    assert ManagementApi.payloads["u-page"] == [{"type": "state", "state": "uninstalled"}]
    assert [m["code"] for m in ManagementApi.payloads["u-expired"]] == ["token_expired"]
    assert {"u-page", "u-expired"} <= set(ManagementApi.closed) and store.connections.ids_of(9) == []


def test_who_pushes_a_change_is_one_rule() -> None:
    from aiadmin.models import Salon
    from aiadmin.push import RUNNER_ACTOR, pushed_by_stream
    from aiadmin.states import SalonState

    def change(actor: str) -> Salon:
        return Salon(salon_id=1, state=SalonState.QR_READY, updated_by=actor)

    assert not pushed_by_stream(change(RUNNER_ACTOR))  # the runner pushes its own at once
    assert all(pushed_by_stream(change(actor)) for actor in ("redirect", "owner", "yclients", "ops", "seed"))


def test_a_late_state_of_an_ended_consent_leaves_the_new_consents_pages_alone(store: Store,
                                                                               management_url: str) -> None:
    """The uninstall's push arrives after the new owner's page connected (new consent): that page
    gets neither the old state nor an ending; the old consent's page is ended."""
    store.salons.put(SALON.model_copy(update={"consent_id": "new-owner"}))
    _open(store, "late-old", consent_id="consent-now")
    _open(store, "late-new", consent_id="new-owner")
    uninstalled = SALON.model_copy(update={"state": SalonState.UNINSTALLED, "consent_id": "after-the-uninstall"})
    Pusher(management_url).fan_out(store, uninstalled, '{"type": "state", "state": "uninstalled"}')
    assert "late-new" not in ManagementApi.payloads and "late-new" not in ManagementApi.closed
    assert ManagementApi.payloads["late-old"] == [{"type": "state", "state": "uninstalled"}]
    assert store.connections.ids_of(9) == ["late-new"]
