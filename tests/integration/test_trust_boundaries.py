"""Issue 9, adversarially, over real HTTP and WebSockets against the local stack: a flood of
pairing-code requests, 30 sockets for one salon, a flooding socket, an expired token, replayed
and repeated lifecycle events, uninstalls that must delete WhatsApp keys and the owner's data,
a runner without the token secret, the page's security headers and the local stack's host."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import websockets
from boto3.dynamodb.conditions import Key

from aiadmin.sockets import MAX_SOCKETS_PER_SALON, MESSAGES_PER_WINDOW
from aiadmin.tokens import issue_token
from local.observe import wait_until
from local.owner import link_to_active, open_page, receive_until
from local.process import ROOT, RunningStack
from local.stack import DEFAULT_APP_ID, DEFAULT_JWT_SECRET, DEFAULT_PARTNER_TOKEN
from tests.helpers import PAIRING_INTERVAL_SECONDS, page_token

pytestmark = pytest.mark.integration
INTERVAL = PAIRING_INTERVAL_SECONDS  # in the shared stack (tests/integration/conftest.py); salons 911-942




def _item(stack: RunningStack, salon_id: int, sk: str) -> dict[str, Any] | None:
    item: dict[str, Any] | None = stack.table().get_item(Key={"pk": f"SALON#{salon_id}", "sk": sk},
                                                         ConsistentRead=True).get("Item")
    return item


def _consent(stack: RunningStack, salon_id: int) -> str:
    """The salon's current consent, which a token must name (a test mints its own tokens)."""
    item = _item(stack, salon_id, "STATE")
    assert item is not None
    return str(item["consent_id"])


def _state(stack: RunningStack, salon_id: int) -> str | None:
    item = _item(stack, salon_id, "STATE")
    return str(item["state"]) if item else None


def _events(stack: RunningStack, salon_id: int) -> list[dict[str, Any]]:
    response = stack.table().query(KeyConditionExpression=Key("pk").eq(f"SALON#{salon_id}")
                                   & Key("sk").begins_with("EVENT#"), ConsistentRead=True)
    return list(response["Items"])


def _lifecycle(stack: RunningStack, salon_id: int, event: str) -> requests.Response:
    """A lifecycle webhook exactly as YClients posts it (the same bytes every time: a replay)."""
    body = {"salon_id": salon_id, "application_id": int(DEFAULT_APP_ID), "event": event,
            "partner_token": DEFAULT_PARTNER_TOKEN}
    return requests.post(f"{stack.base_url}/callback/yclients", json=body, timeout=10)


async def _replies(ws: websockets.ClientConnection, seconds: float) -> list[dict[str, Any]]:
    """Every message the socket receives within `seconds`."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            got.append(json.loads(await asyncio.wait_for(ws.recv(), left)))
        except (TimeoutError, websockets.ConnectionClosed):
            break
    return got


# ---- 2. pairing codes -------------------------------------------------------------------------

def test_a_flood_of_pairing_requests_reaches_whatsapp_for_three_numbers_at_most(stack: RunningStack) -> None:
    salon = 911
    numbers = [f"7900555{i:04d}" for i in range(12)]

    async def flood() -> list[dict[str, Any]]:
        errors: list[dict[str, Any]] = []
        async with open_page(stack.ws_url, page_token(stack, salon)) as ws:
            await receive_until(ws, {"qr_ready"}, timeout=45)
            # A burst: one request is taken, the others come too soon.
            for number in numbers[:4]:
                await ws.send(json.dumps({"action": "pairing_code", "phone": number}))
            errors += [m for m in await _replies(ws, 2) if m.get("type") == "error"]
        async with open_page(stack.ws_url, page_token(stack, salon)) as ws:
            # Then one request per interval, each for another number: only the hour's limit refuses.
            for number in numbers[4:]:
                await ws.send(json.dumps({"action": "pairing_code", "phone": number}))
                errors += [m for m in await _replies(ws, INTERVAL + 0.3) if m.get("type") == "error"]
        return errors

    errors = asyncio.run(flood())
    interval = [e for e in errors if "можно запросить через" in e["message"]]
    hourly = [e for e in errors if "3 разных номеров" in e["message"]]
    assert len(interval) >= 3, errors
    assert len(hourly) >= len(numbers) - 4 - 2, errors
    assert all(e["code"] == "pairing_limited" and e["action"] == "pairing_code" and e["retry_after"] > 0
               for e in interval + hourly)
    accepted = [e for e in _events(stack, salon) if e["reason"] == "pairing code requested"]
    assert len(accepted) == 3

    def phones() -> list[str]:
        devices = requests.get(f"{stack.base_url}/_local/whatsapp/devices", timeout=5).json()
        return list(devices["code_phones"].get(str(salon), []))

    # WhatsApp was asked for codes for three numbers, no more (a later attempt may not have asked yet).
    time.sleep(2)
    assert 1 <= len(set(phones())) <= 3 and set(phones()) <= set(numbers)


def test_a_flooding_socket_is_told_once_and_then_ignored(stack: RunningStack) -> None:
    salon = 912
    # A salon nothing happens to (active): every state message is an answer to the flood.
    token = asyncio.run(link_to_active(stack.marketplace, stack.ws_url, stack.base_url, salon, timeout=45))
    time.sleep(1)

    async def flood() -> list[dict[str, Any]]:
        async with websockets.connect(f"{stack.ws_url}?token={token}") as ws:
            for _ in range(MESSAGES_PER_WINDOW * 3):
                await ws.send(json.dumps({"action": "sync"}))
            return await _replies(ws, 3)

    # Start at the beginning of a 10-second window, so the flood falls into one.
    time.sleep(10 - time.time() % 10 + 0.05)
    replies = asyncio.run(flood())
    states = [r for r in replies if r.get("type") == "state"]
    errors = [r for r in replies if r.get("type") == "error"]
    assert len(states) == MESSAGES_PER_WINDOW, [r.get("type") for r in replies]
    assert len(errors) == 1 and errors[0]["code"] == "rate_limited" and "Подождите" in errors[0]["message"]


def test_commands_are_refused_once_the_token_has_expired(stack: RunningStack) -> None:
    salon = 913
    page_token(stack, salon)  # the salon exists and is linking
    short = issue_token(salon, DEFAULT_JWT_SECRET, ttl_seconds=3, consent_id=_consent(stack, salon))

    async def page() -> tuple[list[dict[str, Any]], list[dict[str, Any]], int | None]:
        async with websockets.connect(f"{stack.ws_url}?token={short}") as ws:
            await ws.send(json.dumps({"action": "sync"}))
            before = await _replies(ws, 1)
            await asyncio.sleep(3.5)
            await ws.send(json.dumps({"action": "pairing_code", "phone": "79001234567"}))
            after = await _replies(ws, 2)
            return before, after, ws.close_code

    version = int(_item(stack, salon, "STATE")["version"])  # type: ignore[index]
    before, after, close_code = asyncio.run(page())
    assert any(m.get("type") == "state" for m in before)
    refusals = [m for m in after if m.get("type") == "error"]
    assert len(refusals) == 1 and refusals[0]["code"] == "token_expired"
    assert "Ссылка устарела" in refusals[0]["message"]
    assert close_code == 1000  # closed by the server: the socket gets nothing more (issue 15)
    lease = _item(stack, salon, "SESSION")
    assert lease is not None and "pair_phone" not in lease
    # A state push from the runner may have moved the version on; no command of the page did.
    assert not [e for e in _events(stack, salon) if e["actor"] == "owner"]
    assert int(_item(stack, salon, "STATE")["version"]) >= version  # type: ignore[index]


# ---- 3. sockets per salon ---------------------------------------------------------------------

def test_thirty_sockets_for_one_salon_get_five(stack: RunningStack) -> None:
    salon = 921
    token = page_token(stack, salon)

    async def storm() -> tuple[int, list[int], int, bool]:
        async def one() -> websockets.ClientConnection | int:
            try:
                return await websockets.connect(f"{stack.ws_url}?token={token}")
            except websockets.InvalidStatus as exc:
                return exc.response.status_code

        results = await asyncio.gather(*(one() for _ in range(30)))
        sockets = [r for r in results if not isinstance(r, int)]
        refused = [r for r in results if isinstance(r, int)]
        # A push reaches the open ones only; one closed frees one slot, and only one.
        for ws in sockets:
            await ws.send(json.dumps({"action": "sync"}))
        answered = 0
        for ws in sockets:
            try:  # each gets its state (a loaded machine may take seconds to answer)
                await receive_until(ws, {"pending_whatsapp", "qr_ready"}, timeout=15)
                answered += 1
            except TimeoutError:
                pass
        await sockets[0].close()
        await asyncio.sleep(0.5)
        again = [await one(), await one()]
        reopened = sum(not isinstance(r, int) for r in again)
        for ws in sockets[1:] + [r for r in again if not isinstance(r, int)]:
            await ws.close()
        await asyncio.sleep(0.5)
        # All closed: the salon's page can connect again.
        last = await one()
        ok = not isinstance(last, int)
        if not isinstance(last, int):
            await last.close()
        return len(sockets), refused, answered * 100 + reopened, ok

    opened, refused, combined, ok_after = asyncio.run(storm())
    answered, reopened = divmod(combined, 100)
    assert opened == MAX_SOCKETS_PER_SALON
    assert refused == [429] * (30 - MAX_SOCKETS_PER_SALON)
    assert answered == MAX_SOCKETS_PER_SALON
    assert reopened == 1
    assert ok_after
    slots = stack.table().query(KeyConditionExpression=Key("pk").eq(f"SALON#{salon}")
                                & Key("sk").begins_with("CONN#"), ConsistentRead=True)["Items"]
    assert len(slots) <= MAX_SOCKETS_PER_SALON


# ---- 5. and 6. lifecycle ----------------------------------------------------------------------

def _uninstalls(stack: RunningStack, salon_id: int) -> int:
    return sum(1 for e in _events(stack, salon_id)
               if e["to_state"] == "uninstalled" and e["from_state"] != "uninstalled")


def test_replayed_uninstalls_are_harmless_and_a_reinstall_then_uninstall_is_processed(stack: RunningStack,
                                                                                       data_dir: Path) -> None:
    salon = 931
    asyncio.run(link_to_active(stack.marketplace, stack.ws_url, stack.base_url, salon, timeout=45))
    keys = data_dir / "sessions" / f"{salon}.db"
    assert keys.exists()
    secrets_before = _item(stack, salon, "SECRETS")
    assert secrets_before is not None and "api_key" in secrets_before
    state = _item(stack, salon, "STATE")
    assert state is not None and "api_key" not in state and state.get("user_name")

    answers = [_lifecycle(stack, salon, "uninstall") for _ in range(3)]  # YClients delivers it three times
    assert [a.json() for a in answers] == [{"success": True, "result": "uninstalled"}] * 3
    assert _state(stack, salon) == "uninstalled" and _uninstalls(stack, salon) == 1
    wait_until(lambda: not keys.exists(), 30, what="the WhatsApp keys to be deleted")
    state = _item(stack, salon, "STATE")
    assert state is not None and "user_name" not in state and int(state["ttl"]) > time.time() + 29 * 86400
    assert _item(stack, salon, "SECRETS") is None
    session = _item(stack, salon, "SESSION")
    assert session is not None and session["desired"] == "stop" and "pair_phone" not in session

    # Minutes later (here: seconds), the owner installs again and uninstalls again.
    page_token(stack, salon)
    # The runner may already show the new attempt's QR: either way a fresh linking attempt, no TTL.
    assert _state(stack, salon) in ("pending_whatsapp", "qr_ready") and "ttl" not in _item(stack, salon, "STATE")  # type: ignore[operator]
    assert _lifecycle(stack, salon, "uninstall").json()["result"] == "uninstalled"
    assert _state(stack, salon) == "uninstalled" and _uninstalls(stack, salon) == 2
    assert _lifecycle(stack, salon, "uninstall").json()["result"] == "uninstalled"
    assert _uninstalls(stack, salon) == 2


def test_freeze_payment_freeze_is_processed_twice(stack: RunningStack) -> None:
    salon = 932
    asyncio.run(link_to_active(stack.marketplace, stack.ws_url, stack.base_url, salon, timeout=45))
    assert _lifecycle(stack, salon, "freeze").json()["result"] == "frozen"
    assert _lifecycle(stack, salon, "freeze").json()["result"] == "frozen"
    body = {"salon_id": salon, "application_id": int(DEFAULT_APP_ID), "event": "payment",
            "partner_token": DEFAULT_PARTNER_TOKEN, "period_from": "2026-01-01 00:00:00"}
    assert requests.post(f"{stack.base_url}/callback/yclients", json=body, timeout=10).json()["result"] == "active"
    assert _lifecycle(stack, salon, "freeze").json()["result"] == "frozen"
    frozen = [e for e in _events(stack, salon) if e["to_state"] == "frozen" and e["from_state"] != "frozen"]
    assert len(frozen) == 2


@pytest.mark.parametrize("end", ["frozen", "banned"])
def test_uninstall_of_a_frozen_or_banned_salon_deletes_its_whatsapp_keys(stack: RunningStack, data_dir: Path,
                                                                       end: str) -> None:
    salon = 941 if end == "frozen" else 942
    asyncio.run(link_to_active(stack.marketplace, stack.ws_url, stack.base_url, salon, timeout=45))
    keys = data_dir / "sessions" / f"{salon}.db"
    assert keys.exists()
    if end == "frozen":
        assert _lifecycle(stack, salon, "freeze").json()["result"] == "frozen"
    else:
        response = requests.post(f"{stack.base_url}/_local/whatsapp/session-event",
                                 json={"session": str(salon), "event": "temp_ban"}, timeout=10)
        assert response.status_code == 200
    wait_until(lambda: _state(stack, salon) == end, 30, what=f"the salon to be {end}")
    time.sleep(1)
    assert keys.exists(), "a frozen or banned salon keeps its keys until it is uninstalled"
    assert _lifecycle(stack, salon, "uninstall").json()["result"] == "uninstalled"
    wait_until(lambda: not keys.exists(), 30, what="the WhatsApp keys to be deleted")


# ---- 4. secrets -------------------------------------------------------------------------------

def test_the_runner_does_not_hold_the_token_secret(stack: RunningStack) -> None:
    pids = stack.runner_pids()
    assert pids
    for pid in pids:
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        names = {entry.split(b"=", 1)[0].decode() for entry in environment if entry}
        assert "JWT_SECRET" not in names and "JWT_SECRET_PARAM" not in names
        assert DEFAULT_JWT_SECRET.encode() not in b"\0".join(environment)


# ---- 7. the page's headers --------------------------------------------------------------------

def test_the_page_is_served_with_hsts_and_names_the_yclients_hosts_that_may_frame_it(stack: RunningStack) -> None:
    for path in ("/marketplace/onboarding", "/auth/yclients/redirect"):
        response = requests.get(stack.base_url + path, allow_redirects=False, timeout=10)
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")
        csp = response.headers["Content-Security-Policy"]
        ancestors = next(p for p in csp.split(";") if p.strip().startswith("frame-ancestors")).split()[1:]
        assert ancestors[:4] == ["https://yclients.com", "https://*.yclients.com", "https://app.alteg.io",
                                 "https://*.alteg.io"]
        # The local stack alone adds loopback origins, for a test page framing ours (issue 12).
        assert ancestors[4:] == ["http://127.0.0.1:*", "http://localhost:*"]


# ---- 8. the local stack -----------------------------------------------------------------------

def test_the_local_stack_refuses_to_listen_beyond_this_machine_without_the_flag() -> None:
    result = subprocess.run([sys.executable, "-m", "local", "--host", "0.0.0.0", "--port", "0"],  # noqa: S104
                            cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 2
    assert "--allow-remote" in result.stderr and "LOCAL_STACK_READY" not in result.stdout
