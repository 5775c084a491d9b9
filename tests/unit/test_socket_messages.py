"""The page socket's `$default` handler on moto (DynamoDB and the @connections API): each
refusal answers the page with a reason, changes nothing and counts a metric."""

from __future__ import annotations

import importlib.util
import json
import time
import uuid
from types import ModuleType
from typing import Any

import pytest
from moto.apigatewaymanagementapi.models import apigatewaymanagementapi_backends
from moto.core import DEFAULT_ACCOUNT_ID

from aiadmin.db import Store
from aiadmin.db.transitions import Transition
from aiadmin.observability import metrics
from aiadmin.onboarding import new_consent_id
from aiadmin.push import Pusher
from aiadmin.sockets import MESSAGES_PER_WINDOW
from aiadmin.states import SalonState
from aiadmin.tokens import TokenClaims, verify_token_claims
from local.gateway import LambdaContext
from local.template import ROOT
from tests.unit.fakes import FakeClock

REGION = "eu-central-1"
SALON = 7
JWT_SECRET = "j" * 40


@pytest.fixture
def closed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Sockets the handler closed (moto would forget what they received: recorded instead)."""
    names: list[str] = []
    monkeypatch.setattr(Pusher, "close", lambda _self, connection_id: names.append(connection_id))
    return names


@pytest.fixture
def handler(table: Any, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("TABLE_NAME", table.name)
    monkeypatch.setenv("WEBSOCKET_MANAGEMENT_URL", f"https://abc123.execute-api.{REGION}.amazonaws.com/prod")
    monkeypatch.setenv("JWT_SECRET", JWT_SECRET)
    spec = importlib.util.spec_from_file_location("ws_default_under_test", ROOT / "functions" / "ws_message" / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    names: list[str] = []
    monkeypatch.setattr(metrics, "add_metric", lambda name, **_kwargs: names.append(name))
    return names


def _send(handler: ModuleType, connection_id: str, body: object) -> int:
    event = {"requestContext": {"routeKey": "$default", "eventType": "MESSAGE", "connectionId": connection_id,
                                "stage": "prod", "apiId": "abc123", "requestId": "r", "messageId": "m"},
             "body": body if isinstance(body, str) else json.dumps(body), "isBase64Encoded": False}
    result: dict[str, Any] = handler.lambda_handler(event, LambdaContext("WsMessageFunction", str(uuid.uuid4())))
    return int(result["statusCode"])


def _pushed(connection_id: str) -> list[dict[str, Any]]:
    data = apigatewaymanagementapi_backends[DEFAULT_ACCOUNT_ID][REGION].connections[connection_id].data
    # moto appends every post to one buffer: split the JSON objects again.
    decoder, text, found, at = json.JSONDecoder(), data.decode(), [], 0
    while at < len(text):
        value, at = decoder.raw_decode(text, at)
        found.append(value)
    return found


def _page(store: Store, expires_in: float = 600, consent_id: str = "consent-1") -> str:
    if store.salons.get(SALON) is None:
        store.transitions.apply(Transition(
            SALON, SalonState.PENDING_WHATSAPP, actor="redirect", attrs={"consent_id": consent_id}))
        store.sessions.request(SALON, "link")
        store.transitions.apply(Transition(SALON, SalonState.QR_READY, actor="runner", attrs={"qr": "code"}))
    connection = f"page-{uuid.uuid4().hex[:6]}"
    claims = TokenClaims(SALON, int(time.time() + expires_in), consent_id=consent_id, token_id=uuid.uuid4().hex)
    store.connections.add(connection, SALON, now=time.time(), token_exp=claims.expires_at, consent_id=consent_id,
                         token_id=claims.token_id)
    return connection


def test_an_unknown_command_is_answered_and_counted(handler: ModuleType, store: Store, counted: list[str]) -> None:
    page = _page(store)
    counted.clear()  # the setup's own transitions
    assert _send(handler, page, {"action": "delete_everything"}) == 400
    assert _send(handler, page, "not json at all") == 400
    [first, second] = _pushed(page)
    assert first["type"] == "error" and first["code"] == "bad_request" and first["action"] == "unknown"
    assert second["code"] == "bad_request"
    assert counted == ["SocketBadMessage", "SocketBadMessage"]
    assert store.salons.get(SALON).version == 2  # type: ignore[union-attr]  # the setup's two transitions


def test_after_the_token_expired_nothing_is_done(handler: ModuleType, store: Store, counted: list[str],
                                                 closed: list[str]) -> None:
    page = _page(store, expires_in=-1)
    counted.clear()  # the setup's own transitions
    assert _send(handler, page, {"action": "pairing_code", "phone": "79001234567"}) == 403
    [refusal] = _pushed(page)
    assert refusal["code"] == "token_expired" and "Ссылка устарела" in refusal["message"]
    assert counted == ["SocketTokenExpired", "SocketEnded"]
    assert store.sessions.get(SALON).pair_phone is None  # type: ignore[union-attr]
    # The socket gets nothing more: closed and forgotten (issue 15).
    assert closed == [page] and store.connections.salon_of(page) is None


def _set(store: Store, **fields: object) -> None:
    salon = store.salons.get(SALON)
    assert salon is not None
    store.salons.put(salon.model_copy(update={**fields, "version": salon.version + 1}))


@pytest.mark.parametrize("action", [{"action": "sync"}, {"action": "new_qr"}, {"action": "relink"},
                                    {"action": "pairing_code", "phone": "79001234567"}])
def test_a_socket_of_an_ended_consent_does_nothing_and_is_closed(
        handler: ModuleType, store: Store, counted: list[str], closed: list[str], action: dict[str, str]) -> None:
    """Issue 15: the old owner's socket after an uninstall and a new owner's consent gets no state
    (no QR), changes nothing (no re-link of the new owner's salon), and is closed."""
    old_page = _page(store)
    _set(store, state=SalonState.ACTIVE, consent_id=new_consent_id())  # uninstalled, re-installed, linked
    before = store.salons.get(SALON)
    counted.clear()
    assert _send(handler, old_page, action) == 403
    [refusal] = _pushed(old_page)
    assert refusal["type"] == "error" and refusal["code"] == "token_revoked" and "qr" not in refusal
    assert closed == [old_page] and store.connections.salon_of(old_page) is None
    assert store.salons.get(SALON) == before
    assert store.sessions.get(SALON).pair_phone is None  # type: ignore[union-attr]


def test_a_relink_ends_every_other_token_and_gives_the_asking_page_a_new_one(
        handler: ModuleType, store: Store, closed: list[str]) -> None:
    asking, other = _page(store), _page(store)
    _set(store, state=SalonState.ACTIVE)
    assert _send(handler, asking, {"action": "relink"}) == 200
    salon = store.salons.get(SALON)
    assert salon is not None and salon.state == SalonState.PENDING_WHATSAPP and salon.consent_id != "consent-1"
    [token_message, state] = _pushed(asking)
    assert token_message["type"] == "token" and state["state"] == "pending_whatsapp"
    claims = verify_token_claims(str(token_message["token"]), JWT_SECRET)
    assert (claims.salon_id, claims.consent_id) == (SALON, salon.consent_id)
    # The asking socket is on the new consent: it goes on; the other page's token has ended.
    assert _send(handler, asking, {"action": "sync"}) == 200
    assert _send(handler, other, {"action": "sync"}) == 403
    assert [m["code"] for m in _pushed(other)] == ["token_revoked"] and closed == [other]


def test_a_flood_is_answered_once_then_ignored(handler: ModuleType, store: Store, counted: list[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    page = _page(store)
    counted.clear()  # the setup's own transitions
    # The handler's clock at the beginning of the next 10-second window, so the flood falls into one.
    monkeypatch.setattr(handler, "clock", FakeClock(time.time() // 10 * 10 + 10 + 0.01))
    statuses = [_send(handler, page, {"action": "sync"}) for _ in range(MESSAGES_PER_WINDOW + 3)]
    assert statuses == [200] * MESSAGES_PER_WINDOW + [429] * 3
    replies = _pushed(page)
    assert [r["type"] for r in replies] == ["state"] * MESSAGES_PER_WINDOW + ["error"]
    assert replies[-1]["code"] == "rate_limited" and 0 < replies[-1]["retry_after"] <= 10
    assert counted == ["SocketRateLimited"] * 3


def test_pairing_limits_are_answered_and_counted(handler: ModuleType, store: Store, counted: list[str]) -> None:
    page = _page(store)
    counted.clear()  # the setup's own transitions
    assert _send(handler, page, {"action": "pairing_code", "phone": "79001234567"}) == 200
    store.transitions.apply(Transition(SALON, SalonState.QR_READY, actor="runner", attrs={"qr": "code"}))
    assert _send(handler, page, {"action": "pairing_code", "phone": "79007654321"}) == 429
    assert _send(handler, page, {"action": "pairing_code", "phone": "12"}) == 400
    refusals = [r for r in _pushed(page) if r["type"] == "error"]
    assert [r["code"] for r in refusals] == ["pairing_limited", "invalid_phone"]
    assert refusals[0]["retry_after"] > 0 and "можно запросить через" in refusals[0]["message"]
    assert counted == ["Transition_pending_whatsapp", "Transition_qr_ready", "PairingCodeLimited",
                       "PairingPhoneRefused"]
    assert store.sessions.get(SALON).pair_phone == "79001234567"  # type: ignore[union-attr]


def test_an_unknown_connection_is_refused(handler: ModuleType, counted: list[str]) -> None:
    assert _send(handler, "never-connected", {"action": "sync"}) == 403
    assert counted == ["SocketUnknownConnection"]


@pytest.mark.parametrize("body", [
    "[" * 100_000 + "]" * 100_000,                        # json.loads' RecursionError: caught in _message
    '{"action": "sync", "x": ' + "[" * 5_000 + "]" * 5_000 + "}",
    '{"action": "sync", "n": ' + "7" * 5_000 + "}",        # an integer int() refuses to read
])
def test_a_message_json_cannot_read_is_a_bad_request(handler: ModuleType, store: Store, counted: list[str],
                                                     body: str) -> None:
    page = _page(store)
    counted.clear()  # the setup's own transitions
    assert _send(handler, page, body) == 400
    [refusal] = _pushed(page)
    assert refusal["code"] == "bad_request" and refusal["action"] == "unknown"
    assert counted == ["SocketBadMessage"]


def test_a_phone_with_a_lone_surrogate_is_refused_and_not_stored(handler: ModuleType, store: Store,
                                                                  counted: list[str]) -> None:
    page = _page(store)
    counted.clear()  # the setup's own transitions
    assert _send(handler, page, '{"action": "pairing_code", "phone": "7900123456\\udfff7"}') == 400
    [refusal] = _pushed(page)
    assert refusal["code"] == "invalid_phone"
    assert store.sessions.get(SALON).pair_phone is None  # type: ignore[union-attr]
