"""Several locations in one redirect (`salon_ids[]`), over real HTTP and WebSockets against the
local stack and the fake marketplace: every location is confirmed with YClients, linked to its
own WhatsApp and activated; one token per location opens that location only."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from local.observe import leases
from local.owner import (
    link_to_active,
    open_page,
    page_shows,
    page_tokens,
    press_connect,
    press_connect_locations,
    receive_until,
    scan,
)
from local.process import RunningStack

pytestmark = pytest.mark.integration


# The shared stack (tests/integration/conftest.py); salons 201, 202 (the fake marketplace's
# network of owner 7001) and 211-232.


def _network(stack: RunningStack, owner_id: int, *salon_ids: int) -> None:
    for salon_id in salon_ids:
        response = requests.post(f"{stack.marketplace}/_salon/{salon_id}", timeout=5,
                                 json={"name": f"Сеть {owner_id}: филиал {salon_id}", "owner_id": owner_id})
        assert response.status_code == 200


def _ids_in(redirect: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in parse_qsl(urlsplit(redirect).query) if k.startswith("salon_id")]


async def _link_each(stack: RunningStack, tokens: list[str], timeout: float = 30) -> dict[int, list[dict[str, Any]]]:
    """The owner's page for several locations: one socket per token; each location's code is
    scanned by that location's phone, one after the other; returns what each socket received."""
    seen: dict[int, list[dict[str, Any]]] = {}
    async with open_page(stack.ws_url, tokens[0]) as first, open_page(stack.ws_url, tokens[1]) as second:
        for ws in (first, second):
            messages: list[dict[str, Any]] = []
            current = await receive_until(ws, {"qr_ready", "active"}, timeout, messages)
            if current["state"] == "qr_ready":
                assert scan(stack.base_url, current["qr"]).status_code == 200
                await receive_until(ws, {"active"}, timeout, messages)
            seen[current["salon_id"]] = messages
    return seen


def test_two_locations_from_one_redirect_are_each_linked_and_activated(stack: RunningStack) -> None:
    redirect = press_connect_locations(stack.marketplace, 7001)
    assert _ids_in(redirect) == [("salon_ids[]", "201"), ("salon_ids[]", "202")]
    response = requests.get(redirect, allow_redirects=False, timeout=10)
    assert response.status_code == 302
    tokens = page_tokens(response)
    assert len(tokens) == 2 and response.headers["Location"].startswith("/marketplace/onboarding#token=")

    seen = asyncio.run(_link_each(stack, tokens))
    assert sorted(seen) == [201, 202]
    for salon_id, messages in seen.items():
        # Each token's socket hears of its own location only.
        assert {m["salon_id"] for m in messages} == {salon_id}
        states = page_shows(messages)
        assert states.index("qr_ready") < states.index("activating") < states.index("active")
    state = stack.marketplace_state()
    assert state["salons"]["201"]["status"] == state["salons"]["202"]["status"] == "active"
    keys = {a["salon_id"]: a["api_key"] for a in state["activations"] if a["salon_id"] in (201, 202)}
    assert sorted(keys) == [201, 202] and keys[201] != keys[202]  # every location activated, each its own key


def test_an_already_active_location_is_shown_active_and_the_indexed_form_works(stack: RunningStack) -> None:
    _network(stack, 7002, 211, 212)
    asyncio.run(link_to_active(stack.marketplace, stack.ws_url, stack.base_url, 211))
    # YClients leaves connected locations out...
    assert _ids_in(press_connect_locations(stack.marketplace, 7002)) == [("salon_ids[]", "212")]
    # ...but if it sends one, it is shown as active, never linked again.
    redirect = press_connect_locations(stack.marketplace, 7002, include_connected="1", form="indexed")
    assert _ids_in(redirect) == [("salon_ids[0]", "211"), ("salon_ids[1]", "212")]
    generation = leases(stack, [211])[211].generation
    tokens = page_tokens(requests.get(redirect, allow_redirects=False, timeout=10))
    assert len(tokens) == 2

    async def page() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with open_page(stack.ws_url, tokens[0]) as active, open_page(stack.ws_url, tokens[1]) as pending:
            shown = await receive_until(active, {"active", "pending_whatsapp", "qr_ready"})
            messages: list[dict[str, Any]] = []
            qr = await receive_until(pending, {"qr_ready"}, seen=messages)
            assert scan(stack.base_url, qr["qr"]).status_code == 200
            await receive_until(pending, {"active"}, seen=messages)
        return shown, messages

    shown, messages = asyncio.run(page())
    assert shown["salon_id"] == 211 and shown["state"] == "active"
    assert leases(stack, [211])[211].generation == generation  # no new pairing for the active one
    assert {m["salon_id"] for m in messages} == {212}
    assert stack.marketplace_state()["salons"]["212"]["status"] == "active"


def test_a_location_yclients_does_not_confirm_refuses_the_redirect_and_writes_nothing(stack: RunningStack) -> None:
    _network(stack, 7003, 221, 222)
    redirect = press_connect_locations(stack.marketplace, 7003)
    requests.post(f"{stack.marketplace}/_salon/222", json={"status": None}, timeout=5)  # not installed there
    response = requests.get(redirect, allow_redirects=False, timeout=10)
    assert response.status_code == 403 and "№222" in response.text and "Location" not in response.headers
    assert leases(stack, [221, 222]) == {}  # no linking started, not even for the confirmed location
    assert requests.get(redirect, allow_redirects=False, timeout=10).status_code == 403  # and again


def test_too_many_locations_get_a_clear_page(stack: RunningStack) -> None:
    redirect = press_connect(stack.marketplace, 101)
    query = [(k, v) for k, v in parse_qsl(urlsplit(redirect).query) if k != "salon_id"]
    ids = [("salon_ids[]", str(300 + n)) for n in range(11)]
    response = requests.get(stack.base_url + "/auth/yclients/redirect", params=[*ids, *query],
                            allow_redirects=False, timeout=10)
    assert response.status_code == 400 and "не больше 10" in response.text
    calls = requests.get(stack.marketplace + "/_calls", params={"operation": "app_status"}, timeout=5).json()
    assert not [c for c in calls if "/salon/300/" in c["path"]]  # refused before asking YClients


def test_a_token_opens_its_own_location_only(stack: RunningStack) -> None:
    """The redirect's tokens are per location: a socket never receives another location's state."""
    _network(stack, 7004, 231, 232)
    tokens = page_tokens(requests.get(press_connect_locations(stack.marketplace, 7004), allow_redirects=False,
                                      timeout=10))

    async def first_states() -> list[int]:
        ids = []
        for token in tokens:
            async with open_page(stack.ws_url, token) as ws:
                ids.append(json.loads(await asyncio.wait_for(ws.recv(), 10))["salon_id"])
        return ids

    assert asyncio.run(first_states()) == [231, 232]
