"""Test-only helpers."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
from aiohttp import web

from aiadmin.db import Store
from aiadmin.onboarding import Requester
from local.fake_yclients import FakeYClients
from local.owner import follow_redirect, press_connect
from local.process import RunningStack
from local.stack import free_port

# The stack most integration modules share (tests/integration/conftest.py).
SHARED_STACK_TIME_SCALE = 0.1  # a pairing attempt's six codes last 16 s instead of 160 s
PAIRING_INTERVAL_SECONDS = 1.0  # least time between pairing-code requests there (30 s in production)
SHARED_STACK_ENV = {
    "LOG_LEVEL": "INFO",
    "PAIRING_MIN_INTERVAL_SECONDS": str(PAIRING_INTERVAL_SECONDS),
    "ACTIVATION_RETRY_SECONDS": "0.05",  # activation retries within a test's patience
}


def page_token(stack: RunningStack, salon_id: int) -> str:
    """The owner presses "Подключить" for the salon in the fake marketplace: the page token its
    redirect carries."""
    _, token = follow_redirect(press_connect(stack.marketplace, salon_id))
    assert token, f"salon {salon_id}'s redirect carried no page token"
    return token


def script_marketplace(stack: RunningStack, operation: str, *answers: dict[str, Any]) -> None:
    """The stack's fake YClients gives these answers to the next calls of the operation."""
    response = requests.post(stack.marketplace + "/_script", json={"operation": operation, "answers": list(answers)},
                             timeout=5)
    assert response.status_code == 200


def client_keys(qr: str) -> list[str]:
    """A linking code without its ref (the part before the first comma): the keys part, the same
    for every code one client shows in one attempt."""
    return qr.split(",")[1:]


def report_stack_output_on_failure(request: pytest.FixtureRequest, stack: RunningStack) -> None:
    """When a test that used the stack failed, show what the stack printed (bypassing capture,
    so CI logs have it)."""
    if request.session.testsfailed:
        sys.__stderr__.write("\n----- local stack output -----\n" + "".join(stack.output[-300:]) + "\n")


@contextmanager
def fake_marketplace(partner_token: str, application_id: int = 4242,
                     callback_url: str = "") -> Iterator[tuple[FakeYClients, str]]:
    """The fake YClients marketplace served over real HTTP from a background thread; yields it
    and its base URL (what `YCLIENTS_BASE_URL` would be)."""
    fake = FakeYClients(partner_token=partner_token, application_id=application_id, callback_url=callback_url)
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.add_routes(fake.routes())
    runner = web.AppRunner(app, access_log=None)
    started: list[int] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        started.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    while not started:
        time.sleep(0.01)
    try:
        yield fake, f"http://127.0.0.1:{started[0]}{fake.prefix}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto server on a free port of this machine, as AWS for code that calls it over HTTP; yields its URL."""
    from moto.server import ThreadedMotoServer  # flask and werkzeug: only for the tests that need one

    port = free_port("127.0.0.1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def page_of(store: Store, salon_id: int) -> Requester:
    """A page socket of the salon's current consent (as if opened with its latest token)."""
    salon = store.salons.get(salon_id)
    return Requester(consent_id=salon.consent_id if salon else None)
