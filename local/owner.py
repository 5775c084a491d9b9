"""The salon owner's side of the journey over real HTTP and a real WebSocket (what the
browser does), shared by the integration tests and the benchmark."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl

import requests
import websockets


def press_connect(marketplace: str, salon_id: int) -> str:
    """The owner presses "Подключить" in the (fake) marketplace; returns our redirect URL."""
    response = requests.post(f"{marketplace}/connect/{salon_id}", allow_redirects=False, timeout=10)
    if response.status_code != 302:
        raise RuntimeError(f"marketplace answered {response.status_code}: {response.text[:200]}")
    return str(response.headers["Location"])


def press_connect_locations(marketplace: str, owner_id: int, **params: str) -> str:
    """A network's owner presses "Подключить" for all its locations at once (`salon_ids[]`);
    returns our redirect URL. `params`: `form=indexed`, `include_connected=1`, `sign=string`."""
    response = requests.post(f"{marketplace}/connect-locations/{owner_id}", params=params, allow_redirects=False,
                             timeout=10)
    if response.status_code != 302:
        raise RuntimeError(f"marketplace answered {response.status_code}: {response.text[:200]}")
    return str(response.headers["Location"])


def page_tokens(response: requests.Response) -> list[str]:
    """The onboarding tokens our redirect put in the page URL's fragment (one per location)."""
    location = response.headers.get("Location", "")
    if "#" not in location:
        return []
    return [value for key, value in parse_qsl(location.split("#", 1)[1]) if key == "token"]


def follow_redirect(redirect_url: str, timeout: float = 10) -> tuple[requests.Response, str | None]:
    """Our redirect's answer and the (first) page token in it."""
    response = requests.get(redirect_url, allow_redirects=False, timeout=timeout)
    tokens = page_tokens(response)
    return response, tokens[0] if tokens else None


async def receive_until(ws: websockets.ClientConnection, states: set[str], timeout: float = 20,
                        seen: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Read state messages until one of `states` arrives; every message is appended to `seen`."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no state in {states}; saw {[m.get('state') for m in seen or []]}")
        message = json.loads(await asyncio.wait_for(ws.recv(), remaining))
        if seen is not None:
            seen.append(message)
        if message.get("type") == "state" and message.get("state") in states:
            return message


def page_shows(messages: list[dict[str, Any]]) -> list[str]:
    """The states the page shows, in order, from the messages its socket received: as the page
    does (`onboarding.html`), a state message older than the salon version shown is ignored.
    Pushes from the runner, the stream and a `sync` reply travel separately and may arrive out
    of order; the version is what keeps the page right, so an assertion about what the owner
    sees must apply the same rule."""
    shown: list[str] = []
    version = -1
    for message in messages:
        if message.get("type") != "state":
            continue
        if message.get("version", 0) < version:
            continue
        version = message.get("version", 0)
        shown.append(message["state"])
    return shown


@asynccontextmanager
async def open_page(ws_url: str, token: str | None,
                    open_timeout: float = 10) -> AsyncIterator[websockets.ClientConnection]:
    """What the onboarding page does on load: open the socket with the token and ask for the
    salon's current state."""
    async with websockets.connect(f"{ws_url}?token={token}", open_timeout=open_timeout) as ws:
        await ws.send(json.dumps({"action": "sync"}))
        yield ws


def scan(base_url: str, qr: str, timeout: float = 10) -> requests.Response:
    return requests.post(f"{base_url}/_local/whatsapp/scan", json={"qr": qr}, timeout=timeout)


async def link_whatsapp(base_url: str, marketplace: str, salon_id: int, until: set[str],
                        timeout: float = 30) -> list[dict[str, Any]]:
    """The whole owner journey for one salon: "Подключить", the page, a scan of the first code;
    returns the state messages the page saw up to one of `until`."""
    _, token = follow_redirect(press_connect(marketplace, salon_id))
    if token is None:
        raise RuntimeError(f"salon {salon_id}: the redirect gave no page token")
    seen: list[dict[str, Any]] = []
    ws_url = base_url.replace("http://", "ws://") + "/ws"
    async with open_page(ws_url, token) as ws:
        message = await receive_until(ws, {"qr_ready"} | until, timeout, seen)
        if message["state"] == "qr_ready":
            response = scan(base_url, message["qr"])
            if response.status_code != 200:
                raise RuntimeError(f"scan refused: {response.status_code} {response.text[:200]}")
            await receive_until(ws, until, timeout, seen)
    return seen


async def link_to_active(marketplace: str, ws_url: str, base_url: str, salon_id: int, timeout: float = 20) -> str:
    """The whole journey of one salon, from "Подключить" to `active`; returns the page token."""
    _, token = follow_redirect(press_connect(marketplace, salon_id))
    if token is None:
        raise RuntimeError(f"salon {salon_id}: the redirect gave no token")
    async with open_page(ws_url, token) as ws:
        qr = await receive_until(ws, {"qr_ready"}, timeout)
        if scan(base_url, qr["qr"]).status_code != 200:
            raise RuntimeError(f"salon {salon_id}: scan refused")
        await receive_until(ws, {"active"}, timeout)
    return token
