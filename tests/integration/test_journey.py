"""The whole onboarding journey through the local stack: real HTTP, a real WebSocket, the
runner as its own process, the fake marketplace and the simulated WhatsApp servers."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
import requests
import websockets
from websockets.exceptions import InvalidStatus

from aiadmin.tokens import issue_token
from aiadmin.yclients import sign_user_data
from local.owner import follow_redirect, open_page, page_shows, press_connect, receive_until, scan
from local.process import RunningStack
from local.stack import DEFAULT_JWT_SECRET, DEFAULT_PARTNER_TOKEN

pytestmark = pytest.mark.integration


# The shared stack (tests/integration/conftest.py); salons 101-103.


def test_owner_links_whatsapp_and_the_integration_becomes_active(stack: RunningStack) -> None:
    redirect_url = press_connect(stack.marketplace, 101)
    response, token = follow_redirect(redirect_url)
    assert response.status_code == 302 and token
    assert response.headers["Location"].startswith("/marketplace/onboarding#token=")

    async def journey() -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        async with open_page(stack.ws_url, token) as ws:
            qr_message = await receive_until(ws, {"qr_ready"}, seen=seen)
            assert qr_message["qr"].startswith("https://wa.me/settings/linked_devices#2@")
            assert qr_message["qr_svg"].lstrip().startswith("<")
            assert qr_message["salon_name"] == "Салон красоты «Лотос»"
            assert qr_message["activation_deadline"] > qr_message["server_time"]
            assert scan(stack.base_url, qr_message["qr"]).status_code == 200
            await receive_until(ws, {"active"}, seen=seen)
        return seen

    seen = asyncio.run(journey())
    states = page_shows(seen)
    assert states.index("qr_ready") < states.index("pairing") < states.index("whatsapp_connected") \
        < states.index("activating") < states.index("active")
    state = stack.marketplace_state()
    assert state["salons"]["101"]["status"] == "active"
    [activation] = [a for a in state["activations"] if a["salon_id"] == 101]
    assert activation["application_id"] == 4242 and len(activation["api_key"]) >= 32
    assert activation["webhook_urls"][0].startswith(stack.base_url + "/webhook/yclients/101/")
    assert activation["channels"] is None  # no channel declared unless YCLIENTS_CHANNELS names one

    # A scan of a code that was already used is refused, as WhatsApp would.
    assert scan(stack.base_url, seen[[m["state"] for m in seen].index("qr_ready")]["qr"]).status_code in (404, 409)


def test_reopened_page_gets_the_current_state(stack: RunningStack) -> None:
    _, token = follow_redirect(press_connect(stack.marketplace, 102))

    async def reopen() -> tuple[dict[str, Any], dict[str, Any]]:
        async with open_page(stack.ws_url, token) as ws:
            first = await receive_until(ws, {"qr_ready"})
        async with open_page(stack.ws_url, token) as ws:
            second = await receive_until(ws, {"qr_ready"})
        return first, second

    first, second = asyncio.run(reopen())
    assert second["salon_id"] == first["salon_id"] == 102
    # The scan of a foreign or altered code is refused and pairs nothing.
    forged = first["qr"].replace("2@", "2@X", 1)
    assert scan(stack.base_url, forged).status_code in (400, 404)
    assert scan(stack.base_url, "not a code").status_code == 400
    assert requests.post(stack.base_url + "/_local/whatsapp/scan", data="{", timeout=5).status_code == 400


def test_qr_expires_and_owner_gets_a_new_one(stack: RunningStack) -> None:
    _, token = follow_redirect(press_connect(stack.marketplace, 103))

    async def wait_out() -> tuple[dict[str, Any], dict[str, Any]]:
        async with open_page(stack.ws_url, token) as ws:
            first = await receive_until(ws, {"qr_ready"})
            expired = await receive_until(ws, {"qr_expired"}, timeout=30)
            assert expired["qr"] is None and expired["qr_svg"] is None
            # The old code no longer pairs.
            assert scan(stack.base_url, first["qr"]).status_code in (404, 410)
            await ws.send(json.dumps({"action": "new_qr"}))
            fresh = await receive_until(ws, {"qr_ready"})
        return first, fresh

    first, fresh = asyncio.run(wait_out())
    assert fresh["qr"] != first["qr"]
    assert scan(stack.base_url, fresh["qr"]).status_code == 200


def _signed_query(salon_id: int | None, user: dict[str, Any], token: str = DEFAULT_PARTNER_TOKEN) -> dict[str, str]:
    raw = json.dumps(user, ensure_ascii=False, separators=(",", ":")).encode()
    query = {"user_data": base64.urlsafe_b64encode(raw).decode(), "user_data_sign": sign_user_data(raw, token)}
    if salon_id is not None:
        query["salon_id"] = str(salon_id)
    return query


@pytest.mark.parametrize(("name", "query"), [
    ("forged sign", _signed_query(101, {"name": "x"}, token="not-our-partner-token")),
    ("missing sign", {"salon_id": "101", "user_data": _signed_query(101, {})["user_data"]}),
    ("missing data", {"salon_id": "101", "user_data_sign": "00" * 32}),
    ("malformed data", {"salon_id": "101", "user_data": "%%%not-base64", "user_data_sign": "00" * 32}),
    ("no salon", _signed_query(None, {"name": "x"})),
    ("bad salon", {**_signed_query(None, {}), "salon_id": "abc"}),
    ("not installed", _signed_query(999, {"name": "x"})),
])
def test_bad_redirects_get_a_russian_page_and_create_nothing(stack: RunningStack, name: str,
                                                               query: dict[str, str]) -> None:
    response = requests.get(stack.base_url + "/auth/yclients/redirect", params=query,
                            allow_redirects=False, timeout=10)
    assert 400 <= response.status_code < 500, name
    assert "text/html" in response.headers["Content-Type"]
    assert "YClients" in response.text and "Location" not in response.headers
    assert "Content-Security-Policy" in response.headers
    # Nothing was recorded: a socket for that salon sees no state.
    salon_id = int(query["salon_id"]) if query.get("salon_id", "").isdigit() else 999
    if salon_id != 101:
        _assert_no_salon(stack, salon_id)


def _assert_no_salon(stack: RunningStack, salon_id: int) -> None:
    token = issue_token(salon_id, DEFAULT_JWT_SECRET, 60)

    async def probe() -> None:
        async with open_page(stack.ws_url, token):
            pass

    # No salon, so no consent a token could name: even a validly signed token opens no socket.
    with pytest.raises(InvalidStatus) as refused:
        asyncio.run(probe())
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize("token", [
    None, "", "garbage",
    issue_token(101, "a-different-secret-that-is-long-enough!!", 600),
    issue_token(101, DEFAULT_JWT_SECRET, 60, now=0),
])
def test_socket_without_a_valid_token_is_refused(stack: RunningStack, token: str | None) -> None:
    url = stack.ws_url if token is None else f"{stack.ws_url}?token={token}"

    async def connect() -> None:
        async with websockets.connect(url):
            pass

    with pytest.raises(InvalidStatus) as refused:
        asyncio.run(connect())
    assert refused.value.response.status_code == 401


def test_lifecycle_webhook_checks_token_and_uninstall_reaches_the_page(stack: RunningStack) -> None:
    callback = stack.base_url + "/callback/yclients"
    wrong = {"salon_id": 101, "application_id": 4242, "event": "uninstall", "partner_token": "wrong"}
    assert requests.post(callback, json=wrong, timeout=5).status_code == 401
    assert requests.post(callback, data="{not json", timeout=5).status_code == 400
    assert requests.post(callback, json=[1, 2], timeout=5).status_code == 400
    _, token = follow_redirect(press_connect(stack.marketplace, 101))  # salon 101 is active from the first test

    async def uninstall() -> dict[str, Any]:
        async with open_page(stack.ws_url, token) as ws:
            current = await receive_until(ws, {"active", "pending_whatsapp", "qr_ready"})
            assert current["state"] == "active"  # a repeat visit shows the state, no new pairing
            sent = requests.post(f"{stack.marketplace}/send/101/uninstall", timeout=10).json()
            assert sent["status"] == 200
            # The stream consumer pushes the change made by the webhook.
            return await receive_until(ws, {"uninstalled"})

    assert asyncio.run(uninstall())["state"] == "uninstalled"
    # A replay gets the first answer again (powertools Idempotency) and changes nothing.
    replay = requests.post(f"{stack.marketplace}/send/101/uninstall", timeout=10).json()
    assert replay["status"] == 200 and json.loads(replay["body"]) == {"success": True, "result": "uninstalled"}
    # Unknown events are recorded and answered 2xx.
    unknown = {"salon_id": 101, "application_id": 4242, "event": "something_new",
               "partner_token": DEFAULT_PARTNER_TOKEN}
    answer = requests.post(callback, json=unknown, timeout=5)
    assert answer.status_code == 200 and answer.json()["result"] == "recorded"


def test_onboarding_page_is_served_with_a_strict_policy(stack: RunningStack) -> None:
    response = requests.get(stack.base_url + "/marketplace/onboarding", timeout=5)
    assert response.status_code == 200
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'nonce-" in policy and "unsafe-inline" not in policy
    assert stack.ws_url in response.text


def test_health_check_reports_without_secrets(stack: RunningStack) -> None:
    response = requests.get(stack.base_url + "/marketplace/health-check", timeout=5)
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True, "status": "ok"}
    assert DEFAULT_PARTNER_TOKEN not in response.text and DEFAULT_JWT_SECRET not in response.text
