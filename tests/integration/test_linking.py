"""Every way a WhatsApp link can go, through the local stack: the simulated WhatsApp
servers script what WhatsApp does (refuse the link, ask for a passkey, issue a pairing
code, end a session later) and the test watches the owner's page socket. The runner is a
real process that keeps its keys in one SQLite file per salon; the stack starts it again
when it exits, as ECS would."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import websockets

from local.observe import wait_until
from local.owner import open_page, page_shows, receive_until, scan
from local.process import RunningStack, local_stack
from tests.helpers import page_token, report_stack_output_on_failure

pytestmark = pytest.mark.integration

TIME_SCALE = 0.1  # a pairing attempt lasts 16 s instead of 160 s
PAIRING_CODE = re.compile(r"^[1-9A-HJ-NP-TV-Z]{4}-[1-9A-HJ-NP-TV-Z]{4}$")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("linking-stack")


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[RunningStack]:
    with local_stack(time_scale=TIME_SCALE, data_dir=data_dir, restart_runners=True,
                     extra_env={"LOG_LEVEL": "INFO"}) as running:
        yield running
        report_stack_output_on_failure(request, running)



def _post(stack: RunningStack, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{stack.base_url}/_local/whatsapp/{path}", json=body, timeout=10)


def _device(stack: RunningStack, salon_id: int) -> dict[str, Any] | None:
    devices = requests.get(f"{stack.base_url}/_local/whatsapp/devices", timeout=5).json()["devices"]
    return next((d for d in devices if d["session"] == str(salon_id)), None)


def _key_file(data_dir: Path, salon_id: int) -> Path:
    return data_dir / "sessions" / f"{salon_id}.db"



async def _link_by_qr(stack: RunningStack, ws: websockets.ClientConnection, seen: list[dict[str, Any]]) -> None:
    # Generous waits: on a loaded 2-core machine a code can take longer than the usual second.
    qr = await receive_until(ws, {"qr_ready"}, timeout=45, seen=seen)
    assert scan(stack.base_url, qr["qr"]).status_code == 200
    await receive_until(ws, {"active"}, timeout=45, seen=seen)


async def _send(ws: websockets.ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))


def test_max_linked_devices_refuses_the_link_and_the_owner_retries(stack: RunningStack) -> None:
    token = page_token(stack, 201)

    async def journey() -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        async with open_page(stack.ws_url, token) as ws:
            qr = await receive_until(ws, {"qr_ready"}, seen=seen)
            refused = _post(stack, "scan", {"qr": qr["qr"], "outcome": "max_devices"})
            assert refused.status_code == 200 and refused.json()["reason"] == "max_devices"
            page = await receive_until(ws, {"link_refused"}, seen=seen)
            assert "отвяжите одно из них" in page["hint"] and page["qr"] is None
            # The refused attempt is over: its code no longer links anything.
            assert scan(stack.base_url, qr["qr"]).status_code in (404, 409)
            await _send(ws, {"action": "new_qr"})  # "Получить новый код"
            await _link_by_qr(stack, ws, seen)
        return seen

    states = page_shows(asyncio.run(journey()))
    retry = states[states.index("link_refused"):]
    assert retry.index("pending_whatsapp") < retry.index("qr_ready") < retry.index("active")


def test_passkey_request_tells_the_owner_what_to_do(stack: RunningStack) -> None:
    token = page_token(stack, 202)

    async def journey() -> dict[str, Any]:
        async with open_page(stack.ws_url, token) as ws:
            qr = await receive_until(ws, {"qr_ready"})
            assert _post(stack, "scan", {"qr": qr["qr"], "outcome": "passkey"}).json()["status"] == "passkey_required"
            return await receive_until(ws, {"passkey_required"})

    page = asyncio.run(journey())
    assert "ключ доступа" in page["hint"] and "Получить новый код" in page["hint"]
    assert _device(stack, 202) is None


def test_owner_links_with_a_pairing_code_for_the_phone_number(stack: RunningStack) -> None:
    token = page_token(stack, 203)

    async def journey() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        async with open_page(stack.ws_url, token) as ws:
            await receive_until(ws, {"qr_ready"}, seen=seen)
            await _send(ws, {"action": "pairing_code", "phone": "8 (900) 123-45-67"})
            code = await receive_until(ws, {"code_ready"}, seen=seen)
            # Valid for the rest of the 160 s attempt (scaled), and only for that number's phone.
            assert 0 < code["code_expires_at"] - code["server_time"] <= 160 * TIME_SCALE + 1
            assert _post(stack, "enter-code", {"code": code["pairing_code"], "phone": "79990000000"}).status_code == 403
            assert _post(stack, "enter-code", {"code": "ZZZZ-ZZZZ"}).status_code == 404
            entered = _post(stack, "enter-code", {"code": code["pairing_code"].lower(), "phone": "79001234567"})
            assert entered.status_code == 200, entered.text
            await receive_until(ws, {"active"}, seen=seen)
        return seen, code

    seen, code = asyncio.run(journey())
    assert PAIRING_CODE.match(code["pairing_code"]) and code["qr"] is None and code["qr_svg"] is None
    states = page_shows(seen)
    chosen = states[states.index("qr_ready"):]
    assert chosen.index("pending_whatsapp") < chosen.index("code_ready") < chosen.index("pairing") \
        < chosen.index("whatsapp_connected") < chosen.index("active")
    # Once the owner chose the code, the attempt's QR codes are not shown any more.
    assert "qr_ready" not in chosen[chosen.index("pending_whatsapp"):]
    assert _post(stack, "enter-code", {"code": code["pairing_code"]}).status_code in (404, 409)
    assert stack.marketplace_state()["salons"]["203"]["status"] == "active"


@pytest.mark.parametrize("phone", ["12345", "", "+7 000 000-00-00", "not a number"])
def test_a_bad_phone_number_is_refused_and_nothing_changes(stack: RunningStack, phone: str) -> None:
    token = page_token(stack, 204)

    async def attempt() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        async with open_page(stack.ws_url, token) as ws:
            before = await receive_until(ws, {"qr_ready"})
            await _send(ws, {"action": "pairing_code", "phone": phone})
            while True:
                refused = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if refused["type"] == "error":
                    break
                before = refused  # the attempt's next QR code arrived in between
            await _send(ws, {"action": "sync"})
            after = await receive_until(ws, {"qr_ready", "pending_whatsapp", "code_ready"})
            return before, refused, after

    before, refused, after = asyncio.run(attempt())
    assert refused["action"] == "pairing_code" and re.search("[а-я]", refused["message"])
    assert after["state"] == "qr_ready"
    # The running attempt was not restarted: the code on the page is still one of its codes.
    assert after["qr"].split(",")[1:] == before["qr"].split(",")[1:]


def test_whatsapp_refusing_to_issue_a_code_reaches_the_page(stack: RunningStack) -> None:
    assert _post(stack, "refuse-code", {"phone": "79001112233", "error": "429 rate-overlimit"}).status_code == 200
    token = page_token(stack, 205)

    async def journey() -> dict[str, Any]:
        async with open_page(stack.ws_url, token) as ws:
            await receive_until(ws, {"qr_ready"})
            await _send(ws, {"action": "pairing_code", "phone": "+7 900 111-22-33"})
            return await receive_until(ws, {"code_failed"})

    page = asyncio.run(journey())
    assert "не выдал код" in page["hint"]


@pytest.mark.parametrize(("salon_id", "event", "state", "keys_kept"), [
    (206, "logged_out", "whatsapp_logged_out", False),
    (207, "temp_ban", "banned", True),
    (208, "client_outdated", "client_outdated", True),
])
def test_later_ends_of_a_linked_session_reach_the_page(stack: RunningStack, data_dir: Path, salon_id: int,
                                                        event: str, state: str, keys_kept: bool) -> None:
    token = page_token(stack, salon_id)

    async def journey() -> dict[str, Any]:
        seen: list[dict[str, Any]] = []
        async with open_page(stack.ws_url, token) as ws:
            await _link_by_qr(stack, ws, seen)
            assert _key_file(data_dir, salon_id).exists()
            sent = _post(stack, "session-event", {"session": str(salon_id), "event": event})
            assert sent.json()["status"] == "sent"
            return await receive_until(ws, {state})

    page = asyncio.run(journey())
    assert page["title"]
    if keys_kept:
        assert _key_file(data_dir, salon_id).exists()
    else:
        wait_until(lambda: not _key_file(data_dir, salon_id).exists(), 5, what="the key file to go")


def test_uninstall_logs_out_and_removes_the_key_file(stack: RunningStack, data_dir: Path) -> None:
    token = page_token(stack, 211)

    async def journey() -> None:
        seen: list[dict[str, Any]] = []
        async with open_page(stack.ws_url, token) as ws:
            await _link_by_qr(stack, ws, seen)
            assert _key_file(data_dir, 211).exists() and _device(stack, 211) is not None
            assert requests.post(f"{stack.marketplace}/send/211/uninstall", timeout=10).json()["status"] == 200
            await receive_until(ws, {"uninstalled"})

    asyncio.run(journey())
    wait_until(lambda: not _key_file(data_dir, 211).exists(), 10, what="the key file to go")
    wait_until(lambda: _device(stack, 211) is None, 5, what="the device to be unlinked on WhatsApp's side")


def test_stream_replaced_keeps_the_salon_and_the_owner_takes_the_session_back(stack: RunningStack) -> None:
    token = page_token(stack, 209)

    async def journey() -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        async with open_page(stack.ws_url, token) as ws:
            await _link_by_qr(stack, ws, seen)
            assert _post(stack, "session-event", {"session": "209", "event": "stream_replaced"}).status_code == 200
            await asyncio.to_thread(wait_until, lambda: (_device(stack, 209) or {}).get("connections") == 2, 25,
                                    what="the runner to resume the session")
            with pytest.raises(TimeoutError):  # no state change reaches the page
                await asyncio.wait_for(ws.recv(), 0.5)
        return seen

    asyncio.run(journey())
    device = _device(stack, 209)
    assert device is not None and device["connected"]


def test_a_restarted_runner_resumes_linked_sessions_from_their_key_files(stack: RunningStack, data_dir: Path) -> None:
    token = page_token(stack, 210)

    async def link() -> None:
        async with open_page(stack.ws_url, token) as ws:
            await _link_by_qr(stack, ws, [])

    asyncio.run(link())
    assert _key_file(data_dir, 210).exists()
    before = _device(stack, 210)
    assert before is not None and before["connections"] == 1
    [runner] = stack.runner_pids()

    async def restart() -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        async with open_page(stack.ws_url, token) as ws:
            await receive_until(ws, {"active"}, seen=seen)
            os.kill(runner, signal.SIGTERM)  # a deploy stops the task
            await asyncio.to_thread(wait_until, lambda: (_device(stack, 210) or {}).get("connections") == 2, 30,
                                    what="the new runner to resume the session")
            with pytest.raises(TimeoutError):
                while True:
                    seen.append(json.loads(await asyncio.wait_for(ws.recv(), 0.5)))
        return seen

    seen = asyncio.run(restart())
    assert stack.runner_pids() != [runner]
    # Resumed from the SQLite file: the same device, no new code shown, the salon still active.
    after = _device(stack, 210)
    assert after is not None and after["jid"] == before["jid"] and after["connected"]
    assert [m["state"] for m in seen] == ["active"]
