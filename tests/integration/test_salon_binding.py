"""Issue 9, point 1, adversarially over real HTTP and WebSockets: a second YClients user (who
owns another salon with our app) replays their own validly signed `user_data` with a victim
salon's id. Refused with a 403 page, nothing written but an event on the victim's log, and the
page shows nothing of the victim's salon; the binding resets only after an uninstall and a
fresh consent; re-linking a linked salon is an explicit action of its own page."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import requests

from aiadmin.db import Store
from aiadmin.yclients import sign_user_data
from local.observe import leases, wait_until
from local.owner import follow_redirect, link_to_active, open_page, press_connect, receive_until, scan
from local.process import RunningStack
from local.stack import DEFAULT_PARTNER_TOKEN

pytestmark = pytest.mark.integration

VICTIM, ATTACKER = 402, 401
VICTIM_NAME = "Салон «Жертва»"


@pytest.fixture(scope="module")
def stack(stack: RunningStack) -> RunningStack:
    """The shared stack (tests/integration/conftest.py), with the two salons."""
    for salon_id, name in ((ATTACKER, "Салон нападающего"), (VICTIM, VICTIM_NAME)):
        requests.post(f"{stack.marketplace}/_salon/{salon_id}", json={"name": name}, timeout=5)
    return stack


def _replayed(stack: RunningStack, salon_id: int) -> str:
    """The attacker presses "Подключить" in their own salon and puts the victim's id in the URL."""
    own = press_connect(stack.marketplace, ATTACKER)
    query = dict(parse_qsl(urlsplit(own).query))
    query["salon_id"] = str(salon_id)
    return f"{stack.base_url}/auth/yclients/redirect?{urlencode(query)}"


def _snapshot(stack: RunningStack, salon_id: int) -> tuple[Any, Any, int]:
    store = Store(stack.table())
    return store.salons.get(salon_id), store.sessions.get(salon_id), len(store.events.of(salon_id))


def _assert_refused(stack: RunningStack, response: requests.Response, before: tuple[Any, Any, int]) -> None:
    assert response.status_code == 403
    assert "Location" not in response.headers and "token" not in response.text
    assert "другим пользователем YClients" in response.text
    # Nothing of the victim's salon: not its name, not its state, not its owner.
    assert VICTIM_NAME not in response.text and "Жертва" not in response.text
    for word in ("active", "qr_ready", "Готово", "Отсканируйте"):
        assert word not in response.text
    salon, session, events = _snapshot(stack, VICTIM)
    assert (salon, session) == before[:2]  # nothing written: no consent, no name, no pairing command
    store = Store(stack.table())
    new_events = store.events.of(VICTIM)[before[2]:]
    assert len(new_events) == events - before[2] == 1
    assert new_events[0]["reason"].startswith("consent refused")
    assert new_events[0]["details"] == {"user_id": str(5000 + ATTACKER)}  # the attacker's id, nothing more


def test_another_users_signed_data_is_refused_for_a_pending_and_an_active_salon(stack: RunningStack) -> None:
    _, token = follow_redirect(press_connect(stack.marketplace, VICTIM))  # the real owner consents first
    assert token is not None
    # The runner writes the first QR code within a poll and then nothing for its 6 s: the
    # refusal is checked against that, not against a claim that lands during the check.
    wait_until(lambda: _snapshot(stack, VICTIM)[0].state == "qr_ready", 30, what="the victim's first QR code")
    before = _snapshot(stack, VICTIM)
    assert before[0].owner_user_id == str(5000 + VICTIM)
    _assert_refused(stack, requests.get(_replayed(stack, VICTIM), allow_redirects=False, timeout=10), before)

    async def finish() -> None:
        async with open_page(stack.ws_url, token) as ws:
            qr = await receive_until(ws, {"qr_ready"})
            assert scan(stack.base_url, qr["qr"]).status_code == 200
            await receive_until(ws, {"active"})

    asyncio.run(finish())
    before = _snapshot(stack, VICTIM)
    checks = len(_status_checks(stack, VICTIM))
    _assert_refused(stack, requests.get(_replayed(stack, VICTIM), allow_redirects=False, timeout=10), before)
    # The attacker never got a token, so no socket; the refusal cost no call to YClients.
    assert len(_status_checks(stack, VICTIM)) == checks
    assert stack.marketplace_state()["salons"][str(VICTIM)]["status"] == "active"


def _status_checks(stack: RunningStack, salon_id: int) -> list[dict[str, Any]]:
    calls = requests.get(stack.marketplace + "/_calls", params={"operation": "app_status"}, timeout=5).json()
    return [c for c in calls if f"/salon/{salon_id}/" in c["path"]]


def test_a_consent_without_a_user_id_is_refused_for_a_bound_salon(stack: RunningStack) -> None:
    raw = json.dumps({"name": "Без id"}, ensure_ascii=False, separators=(",", ":")).encode()
    query = {"salon_id": str(VICTIM), "user_data": base64.urlsafe_b64encode(raw).decode(),
             "user_data_sign": sign_user_data(raw, DEFAULT_PARTNER_TOKEN)}
    before = _snapshot(stack, VICTIM)
    response = requests.get(stack.base_url + "/auth/yclients/redirect", params=query, allow_redirects=False,
                            timeout=10)
    assert response.status_code == 403
    assert _snapshot(stack, VICTIM)[:2] == before[:2]


def test_the_bound_user_sees_the_status_and_only_an_explicit_relink_links_again(stack: RunningStack) -> None:
    generation = leases(stack, [VICTIM])[VICTIM].generation
    response, token = follow_redirect(press_connect(stack.marketplace, VICTIM))
    assert response.status_code == 302

    async def revisit_then_relink() -> list[str]:
        states = []
        async with open_page(stack.ws_url, token) as ws:
            states.append((await receive_until(ws, {"active", "pending_whatsapp", "qr_ready"}))["state"])
            await asyncio.sleep(1.0)
            assert leases(stack, [VICTIM])[VICTIM].generation == generation  # the visit restarted nothing
            await ws.send(json.dumps({"action": "relink"}))  # the owner confirmed on the page
            qr = await receive_until(ws, {"qr_ready"})
            states.append(qr["state"])
            assert scan(stack.base_url, qr["qr"]).status_code == 200
            states.append((await receive_until(ws, {"active"}))["state"])
        return states

    assert asyncio.run(revisit_then_relink()) == ["active", "qr_ready", "active"]
    events = Store(stack.table()).events.of(VICTIM)
    assert any(e["actor"] == "owner" and e["reason"] == "owner asked to re-link" for e in events)


def test_the_binding_resets_only_after_an_uninstall_and_a_fresh_consent(stack: RunningStack) -> None:
    # YClients reports the app uninstalled (the lifecycle webhook, delivered twice).
    sent = requests.post(f"{stack.marketplace}/send/{VICTIM}/uninstall", params={"times": 2}, timeout=10).json()
    assert [d["status"] for d in sent["deliveries"]] == [200, 200]
    # Uninstalled and no fresh consent in YClients: the replay is still refused (not pending there).
    assert requests.get(_replayed(stack, VICTIM), allow_redirects=False, timeout=10).status_code == 403
    # The salon changed hands; its new owner installs the app again: a fresh pending consent binds them.
    requests.post(f"{stack.marketplace}/_salon/{VICTIM}", json={"owner_id": 9402}, timeout=5)
    asyncio.run(link_to_active(stack.marketplace, stack.ws_url, stack.base_url, VICTIM))
    salon = Store(stack.table()).salons.get(VICTIM)
    assert salon is not None and salon.owner_user_id == "9402" and salon.state == "active"
    # And the previous owner is now the stranger.
    previous = dict(parse_qsl(urlsplit(press_connect(stack.marketplace, ATTACKER)).query))
    requests.post(f"{stack.marketplace}/_salon/{VICTIM}", json={"owner_id": 5000 + VICTIM}, timeout=5)
    own_old = dict(parse_qsl(urlsplit(press_connect(stack.marketplace, VICTIM)).query))
    assert own_old["user_data"] != previous["user_data"]
    refused = requests.get(stack.base_url + "/auth/yclients/redirect", params=own_old, allow_redirects=False,
                           timeout=10)
    assert refused.status_code == 403
