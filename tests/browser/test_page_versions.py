"""Ordered pushes, in a real browser: each state message carries the salon's version and the
page ignores one older than what it shows (pushes from the runner and the stream may arrive
out of order). The page's WebSocket is routed through playwright, which passes the real
messages on and slips in a late one."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import Browser, WebSocketRoute, expect

from local.process import RunningStack

pytestmark = pytest.mark.browser


def test_a_late_older_state_never_replaces_a_newer_one(stack: RunningStack, browser: Browser) -> None:
    page = browser.new_page(viewport={"width": 480, "height": 900}, locale="ru-RU")
    received: list[dict[str, object]] = []
    routes: list[WebSocketRoute] = []

    def route(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        ws.on_message(lambda message: server.send(message))

        def to_page(message: str | bytes) -> None:
            received.append(json.loads(message))
            ws.send(message)

        server.on_message(to_page)
        routes.append(ws)

    page.route_web_socket("**/ws**", route)
    page.goto(stack.marketplace + "/")
    page.locator("li[data-salon='103'] button").click()  # "Подключить"
    card = page.locator("#card")
    expect(card).to_have_attribute("data-state", "qr_ready", timeout=45000)
    shown = max(int(m["version"]) for m in received if m.get("state") == "qr_ready")  # type: ignore[call-overload]
    [socket] = routes[-1:]

    page.evaluate("""() => {
        window.seenStates = [];
        const card = document.getElementById("card");
        new MutationObserver(() => window.seenStates.push(card.dataset.state))
            .observe(card, {attributes: true, attributeFilter: ["data-state"]});
    }""")
    current = next(m for m in reversed(received) if m.get("state") == "qr_ready")
    late = {**current, "state": "pending_whatsapp", "title": "Готовим код", "qr": None, "qr_svg": None,
            "version": shown - 1}
    socket.send(json.dumps(late))  # the consent's push, arriving after the QR's
    # Handled after the late one; the page draws its titles from its own texts, so the marker
    # travels in the salon's name, which the page shows as sent.
    socket.send(json.dumps({**current, "salon_name": "Проверка порядка"}))
    expect(page.locator("#salon")).to_contain_text("Проверка порядка")
    expect(card).to_have_attribute("data-state", "qr_ready")
    assert "pending_whatsapp" not in page.evaluate("window.seenStates")

    newer = {**late, "state": "uninstalled", "title": "Приложение отключено", "version": shown + 1}
    socket.send(json.dumps(newer))
    expect(card).to_have_attribute("data-state", "uninstalled")
