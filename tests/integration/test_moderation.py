"""What YClients' moderators do before publishing the app, step by step, over real HTTP and
WebSockets against the local stack and the fake marketplace (../shared/yclients-protocol.md §4b):
first connect; disconnect (uninstall); reconnect; "Подключить" again while active; freeze,
payment, unfrozen; payment report and refund through `ops`.

The steps run in order on one salon, as a moderator walks through them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from aiadmin.db import Store
from local import observe
from local.owner import follow_redirect, open_page, press_connect, receive_until, scan
from local.process import ROOT, RunningStack
from local.stack import DEFAULT_APP_ID, DEFAULT_PARTNER_TOKEN

pytestmark = pytest.mark.integration

SALON = 601


@pytest.fixture(scope="module")
def stack(stack: RunningStack) -> RunningStack:
    """The shared stack (tests/integration/conftest.py), with the moderator's salon."""
    requests.post(f"{stack.marketplace}/_salon/{SALON}", json={"name": "Салон модератора"}, timeout=5)
    return stack


@pytest.fixture(scope="module")
def journal() -> dict[str, Any]:
    """What one step leaves for the next (the moderator's notes)."""
    return {}


def _activation(stack: RunningStack) -> dict[str, Any]:
    return [a for a in stack.marketplace_state()["activations"] if a["salon_id"] == SALON][-1]


def _keys_file(data_dir: Path) -> Path:
    return data_dir / "sessions" / f"{SALON}.db"


async def _connect_and_scan(stack: RunningStack) -> list[dict[str, Any]]:
    response, token = follow_redirect(press_connect(stack.marketplace, SALON))
    assert response.status_code == 302 and token
    seen: list[dict[str, Any]] = []
    async with open_page(stack.ws_url, token) as ws:
        qr = await receive_until(ws, {"qr_ready"}, seen=seen)
        assert scan(stack.base_url, qr["qr"]).status_code == 200
        await receive_until(ws, {"active"}, seen=seen)
    return seen


def test_1_first_connect(stack: RunningStack, data_dir: Path, journal: dict[str, Any]) -> None:
    seen = asyncio.run(_connect_and_scan(stack))
    assert [m["state"] for m in seen][-1] == "active"
    assert stack.marketplace_state()["salons"][str(SALON)]["status"] == "active"
    journal["activation"] = _activation(stack)
    journal["device"] = observe.whatsapp(stack).devices[str(SALON)]["device_id"]
    assert _keys_file(data_dir).exists()


def test_2_disconnect_logs_whatsapp_out_and_removes_the_keys(stack: RunningStack, data_dir: Path,
                                                            journal: dict[str, Any]) -> None:
    webhook_url = journal["activation"]["webhook_urls"][0]
    # YClients delivers `uninstall` twice (seen live): both answered, processed once.
    sent = requests.post(f"{stack.marketplace}/send/{SALON}/uninstall", params={"times": 2}, timeout=20).json()
    assert [d["status"] for d in sent["deliveries"]] == [200, 200]
    assert {json.loads(d["body"])["result"] for d in sent["deliveries"]} == {"uninstalled"}
    store = Store(stack.table())
    assert store.salons.get(SALON).state == "uninstalled"  # type: ignore[union-attr]
    # WhatsApp: the device is logged out (unlinked at WhatsApp), its keys are gone from disk.
    observe.wait_until(lambda: str(SALON) not in observe.whatsapp(stack).devices, 15, what="device logged out")
    observe.wait_until(lambda: not _keys_file(data_dir).exists(), 15, what="keys file removed")
    # Our keys for YClients are gone too: no API key, the entity webhook URL is dead.
    assert store.secrets.get(SALON) == {}
    entity = {"company_id": SALON, "resource": "record", "resource_id": 1, "status": "create"}
    assert requests.post(webhook_url, json=entity, timeout=5).status_code == 404
    uninstalls = [e for e in store.events.of(SALON) if e.get("to_state") == "uninstalled"]
    assert len(uninstalls) == 1  # the duplicate changed nothing


def test_3_reconnect_is_a_new_pairing_with_a_new_api_key(stack: RunningStack, data_dir: Path,
                                                         journal: dict[str, Any]) -> None:
    seen = asyncio.run(_connect_and_scan(stack))
    assert "qr_ready" in [m["state"] for m in seen]
    activation = _activation(stack)
    assert activation["api_key"] != journal["activation"]["api_key"]
    assert activation["webhook_urls"] != journal["activation"]["webhook_urls"]
    device = observe.whatsapp(stack).devices[str(SALON)]["device_id"]
    assert device != journal["device"]
    assert _keys_file(data_dir).exists()
    journal.update(activation=activation, device=device)


def test_4_connect_again_while_active_shows_the_status_without_relinking(stack: RunningStack,
                                                                          journal: dict[str, Any]) -> None:
    before = observe.whatsapp(stack)
    generation = observe.leases(stack, [SALON])[SALON].generation
    activations = len(stack.marketplace_state()["activations"])
    response, token = follow_redirect(press_connect(stack.marketplace, SALON))
    assert response.status_code == 302

    async def page() -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        async with open_page(stack.ws_url, token) as ws:
            await receive_until(ws, {"active"}, seen=seen)
            await asyncio.sleep(1.0)  # nothing else follows
            while True:
                try:
                    seen.append(json.loads(await asyncio.wait_for(ws.recv(), 0.5)))
                except TimeoutError:
                    break
        return seen

    assert {m["state"] for m in asyncio.run(page())} == {"active"}
    after = observe.whatsapp(stack)
    assert after.devices[str(SALON)]["device_id"] == journal["device"] and after.connected(SALON)
    assert after.pairing_attempts == before.pairing_attempts
    assert observe.leases(stack, [SALON])[SALON].generation == generation
    assert len(stack.marketplace_state()["activations"]) == activations  # and no second activation


def test_5_freeze_then_payment_unfreezes(stack: RunningStack, journal: dict[str, Any]) -> None:
    _, token = follow_redirect(press_connect(stack.marketplace, SALON))

    async def lifecycle() -> list[str]:
        states = []
        async with open_page(stack.ws_url, token) as ws:
            states.append((await receive_until(ws, {"active"}))["state"])
            assert requests.post(f"{stack.marketplace}/send/{SALON}/freeze", timeout=10).json()["status"] == 200
            states.append((await receive_until(ws, {"frozen"}))["state"])
            # Paused: the bot is off, the keys stay (no new scan after payment).
            observe.wait_until(lambda: not observe.whatsapp(stack).connected(SALON), 15, what="session paused")
            paid = requests.post(f"{stack.marketplace}/send/{SALON}/payment", timeout=10).json()
            assert paid["status"] == 200 and json.loads(paid["body"])["result"] == "active"
            states.append((await receive_until(ws, {"active"}))["state"])
        return states

    assert asyncio.run(lifecycle()) == ["active", "frozen", "active"]
    observe.wait_until(lambda: observe.whatsapp(stack).connected(SALON), 15, what="session resumed")
    assert observe.whatsapp(stack).devices[str(SALON)]["device_id"] == journal["device"]  # the same link


def _ops(stack: RunningStack, *args: str) -> dict[str, Any]:
    env = {**os.environ, "YCLIENTS_BASE_URL": stack.marketplace, "YCLIENTS_APP_ID": DEFAULT_APP_ID,
           "YCLIENTS_PARTNER_TOKEN": DEFAULT_PARTNER_TOKEN}
    done = subprocess.run([sys.executable, "-m", "ops.yclients", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_6_payment_report_and_refund_through_ops(stack: RunningStack) -> None:
    assert _ops(stack, "status", str(SALON))["status"] == "active"
    payment_id = _ops(stack, "payment", str(SALON), "2990", "RUB", "2026-11-20", "2026-12-20")["payment_id"]
    payment = stack.marketplace_state()["payments"][str(payment_id)]
    assert payment["salon_id"] == SALON and payment["payment_sum"] == 2990
    assert payment["period_from"] == "2026-11-20 00:00:00" and payment["refunded"] is False
    assert _ops(stack, "refund", str(payment_id)) == {"payment_id": payment_id, "refunded": True}
    assert stack.marketplace_state()["payments"][str(payment_id)]["refunded"] is True
    # A refund of an unknown payment is YClients' refusal, reported, not a traceback.
    env = {**os.environ, "YCLIENTS_BASE_URL": stack.marketplace, "YCLIENTS_APP_ID": DEFAULT_APP_ID,
           "YCLIENTS_PARTNER_TOKEN": DEFAULT_PARTNER_TOKEN}
    unknown = subprocess.run([sys.executable, "-m", "ops.yclients", "refund", "123456"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert unknown.returncode == 1 and "404" in unknown.stderr and "Traceback" not in unknown.stderr


def test_7_disconnect_and_reconnect_on_a_test_stand_without_lifecycle_callbacks(stack: RunningStack,
                                                                                 journal: dict[str, Any]) -> None:
    """A test stand sends no lifecycle callbacks (the vendor's notes): the moderator disconnects
    and connects again, and we only see YClients report the app pending. The linked device is
    activated again; nothing is re-linked."""
    requests.post(f"{stack.marketplace}/_salon/{SALON}", json={"status": "uninstalled"}, timeout=5)  # no webhook
    activations = len(stack.marketplace_state()["activations"])
    response, token = follow_redirect(press_connect(stack.marketplace, SALON))  # pending again in YClients
    assert response.status_code == 302

    async def page() -> list[str]:
        seen: list[dict[str, Any]] = []
        async with open_page(stack.ws_url, token) as ws:
            # The redirect moved the salon to `activating` before answering: `active` is the new one.
            await receive_until(ws, {"active"}, seen=seen)
        return [m["state"] for m in seen]

    states = asyncio.run(page())
    assert "qr_ready" not in states and "pending_whatsapp" not in states
    assert stack.marketplace_state()["salons"][str(SALON)]["status"] == "active"
    assert len(stack.marketplace_state()["activations"]) == activations + 1
    assert _activation(stack)["api_key"] == journal["activation"]["api_key"]
    assert observe.whatsapp(stack).devices[str(SALON)]["device_id"] == journal["device"]
