"""Issue 15, adversarially, over real HTTP and WebSockets against the local stack: a page token
belongs to one consent of its salon. An old owner's token after an uninstall and a new owner's
consent, a socket left open across an uninstall, an expired token's socket, other pages after the
owner's re-link, five sockets of one token, and deeply nested JSON on a socket."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jwt
import pytest
import requests
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from aiadmin.db import Store
from aiadmin.sockets import MAX_SOCKETS_PER_SALON, MESSAGES_PER_TOKEN_WINDOW, MESSAGES_PER_WINDOW
from aiadmin.tokens import issue_token
from local.observe import leases, whatsapp
from local.owner import link_to_active, open_page, receive_until, scan
from local.process import RunningStack
from local.stack import DEFAULT_JWT_SECRET
from tests.helpers import page_token

pytestmark = pytest.mark.integration


# The shared stack (tests/integration/conftest.py); salons 1501-1506.



def _salon(stack: RunningStack, salon_id: int) -> Any:
    salon = Store(stack.table()).salons.get(salon_id)
    assert salon is not None
    return salon


def _refused_status(stack: RunningStack, token: str) -> int | None:
    """The HTTP status a socket with this token is refused with; None when it opens."""
    async def connect() -> None:
        async with websockets.connect(f"{stack.ws_url}?token={token}", open_timeout=10):
            pass

    try:
        asyncio.run(connect())
    except InvalidStatus as exc:
        return int(exc.response.status_code)
    return None


async def _drain(ws: websockets.ClientConnection, seconds: float) -> tuple[list[dict[str, Any]], bool]:
    """Every message within `seconds`, and whether the server closed the socket."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            got.append(json.loads(await asyncio.wait_for(ws.recv(), left)))
        except TimeoutError:
            return got, False
        except ConnectionClosed:
            return got, True
    return got, False


def _uninstall(stack: RunningStack, salon_id: int) -> None:
    assert requests.post(f"{stack.marketplace}/send/{salon_id}/uninstall", timeout=10).json()["status"] == 200


def _new_owner_links(stack: RunningStack, salon_id: int, owner_id: int) -> str:
    """The salon changed hands in YClients; the new owner installs the app and links WhatsApp."""
    requests.post(f"{stack.marketplace}/_salon/{salon_id}", json={"owner_id": owner_id}, timeout=5)
    return asyncio.run(link_to_active(stack.marketplace, stack.ws_url, stack.base_url, salon_id, timeout=45))


def test_the_old_owners_token_opens_nothing_on_a_reinstalled_salon(stack: RunningStack) -> None:
    """Issue 15, failures 1 and 2: A's token after an uninstall and B's consent, scan and
    `active`. It used to connect, get B's live QR through `sync` and re-link B's salon."""
    salon = 1501
    old_token = page_token(stack, salon)
    asyncio.run(link_to_active(stack.marketplace, stack.ws_url, stack.base_url, salon, timeout=45))
    _uninstall(stack, salon)
    assert _refused_status(stack, old_token) == 403  # ended with the uninstall already
    _new_owner_links(stack, salon, owner_id=9501)
    generation = leases(stack, [salon])[salon].generation
    devices = whatsapp(stack).devices
    assert _salon(stack, salon).owner_user_id == "9501"

    assert _refused_status(stack, old_token) == 403
    time.sleep(1)
    salon_now = _salon(stack, salon)
    assert salon_now.state == "active" and salon_now.owner_user_id == "9501"
    assert leases(stack, [salon])[salon].generation == generation  # no re-link, no new attempt
    assert whatsapp(stack).devices.get(str(salon)) == devices.get(str(salon))  # B's device stays linked
    events = Store(stack.table()).events.of(salon)
    assert not [e for e in events if e["actor"] == "owner"]


def test_a_socket_left_open_across_an_uninstall_gets_the_uninstall_last_and_never_the_next_owners_qr(
        stack: RunningStack) -> None:
    """Issue 15, failure 3. The page shows `uninstalled` (its consent's last state), then the server
    closes the socket; the next owner's QR never reaches it."""
    salon = 1502

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with open_page(stack.ws_url, page_token(stack, salon)) as old_page:
            seen: list[dict[str, Any]] = []
            await receive_until(old_page, {"qr_ready"}, timeout=45, seen=seen)
            await asyncio.to_thread(_uninstall, stack, salon)
            await receive_until(old_page, {"uninstalled"}, timeout=20, seen=seen)
            rest, closed = await _drain(old_page, 3)
            assert closed, "the server did not close the old consent's socket"
            seen += rest
            # The new owner consents and gets a QR of the new attempt.
            requests.post(f"{stack.marketplace}/_salon/{salon}", json={"owner_id": 9502}, timeout=5)
            async with open_page(stack.ws_url, await asyncio.to_thread(page_token, stack, salon)) as new_page:
                qr = await receive_until(new_page, {"qr_ready"}, timeout=45)
            return seen, [qr]

    seen, new_qrs = asyncio.run(scenario())
    uninstalled_at = next(i for i, m in enumerate(seen) if m.get("state") == "uninstalled")
    assert all(m.get("type") == "state" and not m.get("qr") for m in seen[uninstalled_at:]), seen[uninstalled_at:]
    assert new_qrs[0]["qr"] not in json.dumps(seen)


def test_an_expired_tokens_socket_gets_no_pairing_code_and_is_closed(stack: RunningStack) -> None:
    """Issue 15, failure 4: the owner asks for a pairing code on another socket; the socket whose
    token expired used to receive `code_ready` with the code."""
    salon = 1503
    token = page_token(stack, salon)
    consent = _salon(stack, salon).consent_id
    short = issue_token(salon, DEFAULT_JWT_SECRET, ttl_seconds=2, consent_id=consent)

    async def scenario() -> tuple[list[dict[str, Any]], bool, dict[str, Any]]:
        async with open_page(stack.ws_url, short) as expiring:
            await receive_until(expiring, {"qr_ready", "pending_whatsapp"}, timeout=45)
            await asyncio.sleep(2.5)  # the short token has expired; its socket is still open
            async with open_page(stack.ws_url, token) as owner:
                await receive_until(owner, {"qr_ready"}, timeout=45)
                await owner.send(json.dumps({"action": "pairing_code", "phone": "79001234567"}))
                code = await receive_until(owner, {"code_ready"}, timeout=45)
            got, closed = await _drain(expiring, 3)
            return got, closed, code

    got, closed, code = asyncio.run(scenario())
    expired_at = jwt.decode(short, options={"verify_signature": False})["exp"]
    assert code["pairing_code"]
    assert code["pairing_code"] not in json.dumps(got)
    # States it received before its token expired were its own; none after.
    assert not [m for m in got if m.get("type") == "state" and m["server_time"] >= expired_at], got
    assert [m["code"] for m in got if m.get("type") == "error"] == ["token_expired"]
    assert closed


def test_a_relink_ends_every_other_page_and_token_of_the_salon(stack: RunningStack) -> None:
    """The owner's re-link is "sign out everywhere": every other page is told and closed, the
    old token opens nothing; the asking page gets a new token, which opens the salon's page."""
    salon = 1504
    token = asyncio.run(link_to_active(stack.marketplace, stack.ws_url, stack.base_url, salon, timeout=45))

    async def scenario() -> tuple[str, list[dict[str, Any]], bool]:
        async with open_page(stack.ws_url, token) as asking, open_page(stack.ws_url, token) as other:
            await receive_until(asking, {"active"})
            await receive_until(other, {"active"})
            await asking.send(json.dumps({"action": "relink"}))
            seen: list[dict[str, Any]] = []
            qr = await receive_until(asking, {"qr_ready"}, timeout=45, seen=seen)
            [renewed] = [m["token"] for m in seen if m.get("type") == "token"]
            got, closed = await _drain(other, 3)
            assert scan(stack.base_url, qr["qr"]).status_code == 200
            await receive_until(asking, {"active"}, timeout=45)
            return renewed, got, closed

    renewed, other_got, other_closed = asyncio.run(scenario())
    assert other_closed and [m.get("code") for m in other_got if m.get("type") == "error"] == ["token_revoked"]
    assert not [m for m in other_got if m.get("type") == "state" and m.get("qr")]
    assert _refused_status(stack, token) == 403

    async def reopen() -> dict[str, Any]:
        async with open_page(stack.ws_url, renewed) as page:
            return await receive_until(page, {"active"})

    assert asyncio.run(reopen())["salon_id"] == salon


def test_five_sockets_of_one_token_share_its_message_budget(stack: RunningStack) -> None:
    salon = 1505
    asyncio.run(link_to_active(stack.marketplace, stack.ws_url, stack.base_url, salon, timeout=45))
    token = page_token(stack, salon)  # a token no message has been counted on yet (the salon is active: no pushes)

    async def flood() -> list[dict[str, Any]]:
        sockets = [await websockets.connect(f"{stack.ws_url}?token={token}") for _ in range(MAX_SOCKETS_PER_SALON)]
        try:
            # Early in a 10-second window, so the flood falls into one.
            while time.time() % 10 > 4:
                await asyncio.sleep(0.2)
            for _ in range(MESSAGES_PER_WINDOW - 3):  # under each socket's own limit
                for ws in sockets:
                    await ws.send(json.dumps({"action": "sync"}))
            # The token's budget of states and one refusal are due; a loaded machine may take a
            # while to answer them all. Then a moment more: nothing else may come.
            replies: list[dict[str, Any]] = []
            deadline = time.monotonic() + 60
            while len(replies) < MAX_SOCKETS_PER_SALON + MESSAGES_PER_TOKEN_WINDOW + 1 \
                    and time.monotonic() < deadline:
                drained = await asyncio.gather(*(_drain(ws, 1) for ws in sockets))
                replies += [reply for got, _closed in drained for reply in got]
            drained = await asyncio.gather(*(_drain(ws, 1) for ws in sockets))
            return replies + [reply for got, _closed in drained for reply in got]
        finally:
            for ws in sockets:
                await ws.close()

    replies = asyncio.run(flood())
    states = [r for r in replies if r.get("type") == "state"]
    limited = [r for r in replies if r.get("code") == "rate_limited"]
    # 35 sent, each socket under its own 10: the five openers and the token's 10, not 35.
    assert len(states) == MAX_SOCKETS_PER_SALON + MESSAGES_PER_TOKEN_WINDOW, len(states)
    assert len(limited) == 1


def test_deeply_nested_json_on_a_socket_is_refused_and_the_socket_stays_open(stack: RunningStack) -> None:
    """API Gateway delivers a message it cannot select a route from to $default; the local gateway
    used to close the socket on JSON nested past Python's recursion limit."""
    salon = 1506
    token = page_token(stack, salon)

    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        async with open_page(stack.ws_url, token) as ws:
            first = await receive_until(ws, {"pending_whatsapp", "qr_ready"}, timeout=45)
            await ws.send("[" * 50_000 + "]" * 50_000)
            await ws.send(json.dumps({"action": {"a": [[[[[[[[{"deep": 1}]]]]]]]]}}))
            got, closed = await _drain(ws, 2)
            assert not closed
            await ws.send(json.dumps({"action": "sync"}))
            return got, await receive_until(ws, {first["state"], "qr_ready", "pending_whatsapp"}, timeout=10)

    got, state = asyncio.run(scenario())
    assert [m.get("code") for m in got if m.get("type") == "error"] == ["bad_request", "bad_request"]
    assert state["salon_id"] == salon
