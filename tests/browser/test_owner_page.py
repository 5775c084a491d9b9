"""Issue 12: the owner's page phone-first, in Russian and English, with a status card for
return visits, one next action per end state, accessible (axe-core), inside YClients' iframe,
and photographed in every state at a phone's and a desktop's size."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from aiadmin.config import LOCAL_JWT_SECRET
from aiadmin.db import Store
from aiadmin.models import Salon
from aiadmin.states import SalonState
from aiadmin.tokens import issue_token
from local.owner import press_connect
from local.process import RunningStack
from tests.browser.conftest import (
    CYRILLIC,
    DESKTOP,
    PHONE,
    assert_accessible,
    assert_primary_visible,
    decode_qr,
    desktop_page,
    phone_page,
    screenshot,
    visible_text,
    watch_errors,
)

pytestmark = pytest.mark.browser

# Unknown salons get this profile from the fake marketplace (owner's phone 79000000000).
OWNER_PHONE = "79000000000"


def _register(stack: RunningStack, salon_id: int, name: str) -> None:
    requests.post(f"{stack.marketplace}/_salon/{salon_id}", json={"name": name}, timeout=5)


def test_on_a_phone_the_number_leads_and_the_owner_links_by_code(stack: RunningStack, browser: Browser) -> None:
    _register(stack, 301, "Салон Телефон")
    page = phone_page(browser)
    errors = watch_errors(page)
    page.goto(press_connect(stack.marketplace, 301))
    card = page.locator("#card")
    expect(card).to_have_attribute("data-state", "qr_ready", timeout=45000)
    # Phone-first: the number form leads, the QR is one tap away.
    expect(page.locator("#phone-form")).to_be_visible()
    expect(page.locator("#qr-box")).to_be_hidden()
    expect(page.locator("#steps li[aria-current='step']")).to_have_text("Отсканируйте или введите код")
    assert page.locator("[data-primary]").get_attribute("id") == "phone-submit"
    assert_primary_visible(page)
    assert_accessible(page)
    page.get_by_role("button", name="Привязать по QR-коду").click()
    expect(page.locator("#qr-box")).to_be_visible()
    page.get_by_role("button", name="Привязать по номеру телефона").click()

    page.get_by_label("Номер WhatsApp салона").fill("8 (900) 000-00-00")
    page.get_by_role("button", name="Получить код").click()
    expect(card).to_have_attribute("data-state", "code_ready", timeout=15000)
    assert_primary_visible(page)
    assert_accessible(page)
    code = page.locator("#pairing-code").inner_text()
    entered = requests.post(stack.base_url + "/_local/whatsapp/enter-code", json={"code": code, "phone": OWNER_PHONE},
                            timeout=10)
    assert entered.status_code == 200, entered.text

    expect(card).to_have_attribute("data-state", "active", timeout=15000)
    # After linking: the linked number (masked), and it is the owner's own, so no warning.
    expect(page.locator("#status-number")).to_have_text("+7 900 ***-00-00")
    expect(page.locator("#mismatch")).to_be_hidden()
    expect(page.locator("#steps li.done")).to_have_count(3)
    assert page.locator("[data-primary]").get_attribute("id") == "back"
    assert_primary_visible(page)
    assert_accessible(page)
    assert errors == []


def test_on_a_desktop_the_qr_leads_and_a_foreign_number_is_pointed_out(stack: RunningStack,
                                                                      browser: Browser) -> None:
    _register(stack, 302, "Салон Компьютер")
    page = desktop_page(browser)
    errors = watch_errors(page)
    page.goto(press_connect(stack.marketplace, 302))
    card = page.locator("#card")
    expect(card).to_have_attribute("data-state", "qr_ready", timeout=45000)
    expect(page.locator("#qr-box")).to_be_visible()
    expect(page.locator("#phone-form")).to_be_hidden()
    expect(page.get_by_role("button", name="Привязать по номеру телефона")).to_be_visible()
    assert page.locator("[data-primary]").get_attribute("id") == "qr"
    assert_primary_visible(page)

    # Scanned by a phone whose WhatsApp is not the owner's number in YClients.
    scanned = requests.post(stack.base_url + "/_local/whatsapp/scan",
                            json={"qr": decode_qr(page.locator("#qr")), "phone": "79161234567"}, timeout=10)
    assert scanned.status_code == 200, scanned.text
    expect(card).to_have_attribute("data-state", "active", timeout=15000)
    expect(page.locator("#status-number")).to_have_text("+7 916 ***-45-67")
    expect(page.locator("#mismatch")).to_be_visible()
    expect(page.locator("#status-since")).not_to_be_empty()
    expect(page.get_by_role("button", name="Перепривязать WhatsApp")).to_be_visible()
    back = page.get_by_role("link", name="Вернуться в YClients")
    expect(back).to_have_attribute("href", stack.marketplace + "/")
    expect(back).to_have_attribute("target", "_top")

    # A return visit (the owner opens the app from YClients again): the status card at once.
    page.goto(press_connect(stack.marketplace, 302))
    expect(card).to_have_attribute("data-state", "active", timeout=15000)
    expect(page.locator("#status-state")).to_have_text("Готово! AI Admin подключён")
    expect(page.locator("#status-number")).to_have_text("+7 916 ***-45-67")
    assert_accessible(page)
    assert errors == []


def test_an_english_browser_gets_english_throughout(stack: RunningStack, browser: Browser) -> None:
    """Names (the salon's, typed by people) are the only Russian left."""
    name = "Салон Лондон"
    _register(stack, 303, name)
    page = phone_page(browser, locale="en-US")
    errors = watch_errors(page)
    page.goto(press_connect(stack.marketplace, 303))
    card = page.locator("#card")
    expect(card).to_have_attribute("data-state", "qr_ready", timeout=45000)
    expect(page.locator("html")).to_have_attribute("lang", "en")

    def no_russian() -> None:
        text = visible_text(page).replace(name, "")
        assert not CYRILLIC.search(text), text
        assert not CYRILLIC.search(page.title())

    no_russian()
    page.get_by_label("The salon's WhatsApp number").fill("12-34")
    page.get_by_role("button", name="Get the code").click()
    expect(page.locator("#phone-error")).to_contain_text("No such number")   # the socket's refusal, in English
    no_russian()
    page.get_by_label("The salon's WhatsApp number").fill("+7 900 000-00-00")
    page.get_by_role("button", name="Get the code").click()
    expect(card).to_have_attribute("data-state", "code_ready", timeout=15000)
    expect(page.locator("#code-countdown")).to_contain_text("The code is valid for")
    no_russian()
    code = page.locator("#pairing-code").inner_text()
    requests.post(stack.base_url + "/_local/whatsapp/enter-code", json={"code": code}, timeout=10)
    expect(card).to_have_attribute("data-state", "active", timeout=15000)
    expect(page.locator("#title")).to_have_text("Done! AI Admin is connected")
    no_russian()
    screenshot(page, "english-active-phone")

    # The owner's switch wins over the browser's language, and survives a reload.
    page.get_by_role("button", name="RU").click()
    expect(page.locator("#title")).to_have_text("Готово! AI Admin подключён")
    expect(page.get_by_role("button", name="RU")).to_have_attribute("aria-pressed", "true")
    page.reload()
    expect(page.locator("#title")).to_have_text("Готово! AI Admin подключён", timeout=15000)
    page.get_by_role("button", name="EN").click()
    expect(page.locator("#title")).to_have_text("Done! AI Admin is connected")
    assert errors == []


def test_error_pages_follow_accept_language(stack: RunningStack, browser: Browser) -> None:
    url = stack.base_url + "/auth/yclients/redirect?salon_id=101&user_data=e30&user_data_sign=00"
    english = desktop_page(browser, locale="en-GB")
    response = english.goto(url)
    assert response is not None and response.status == 400
    expect(english.locator("h1")).to_have_text("Invalid link")
    assert not CYRILLIC.search(visible_text(english))
    expect(english.get_by_role("link", name="Back to YClients")).to_have_attribute("href", stack.marketplace + "/")
    assert_accessible(english)
    screenshot(english, "error-page-en-desktop")
    russian = phone_page(browser)
    russian.goto(url)
    expect(russian.locator("h1")).to_have_text("Ссылка недействительна")
    assert_primary_visible_link(russian)
    screenshot(russian, "error-page-ru-phone")


def assert_primary_visible_link(page: Page) -> None:
    box = page.get_by_role("link", name="Вернуться в YClients").bounding_box()
    assert box is not None and box["y"] + box["height"] <= PHONE["height"]


@pytest.fixture
def yclients_like_host() -> Iterator[tuple[str, dict[str, str]]]:
    """A page on another origin (another port) that embeds ours in an iframe, as YClients does."""
    frame_src: dict[str, str] = {}

    class Host(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = (f'<!doctype html><html lang="ru"><head><title>YClients</title></head><body>'
                    f'<h1>Настройки приложения</h1><iframe title="AI Admin" src="{frame_src["url"]}" '
                    f'width="1000" height="820"></iframe></body></html>').encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Host)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", frame_src
    server.shutdown()


def test_inside_a_yclients_iframe_the_owner_links(stack: RunningStack, browser: Browser,
                                                 yclients_like_host: tuple[str, dict[str, str]]) -> None:
    host_url, frame_src = yclients_like_host
    _register(stack, 304, "Салон Айфрейм")
    frame_src["url"] = press_connect(stack.marketplace, 304)
    page = desktop_page(browser)
    errors = watch_errors(page)
    page.goto(host_url)
    frame = page.frame_locator("iframe[title='AI Admin']")
    card = frame.locator("#card")
    expect(card).to_have_attribute("data-state", "qr_ready", timeout=45000)
    scanned = requests.post(stack.base_url + "/_local/whatsapp/scan",
                            json={"qr": decode_qr(frame.locator("#qr")), "phone": OWNER_PHONE}, timeout=10)
    assert scanned.status_code == 200, scanned.text
    expect(card).to_have_attribute("data-state", "active", timeout=15000)
    expect(frame.locator("#status-number")).to_have_text("+7 900 ***-00-00")
    expect(frame.get_by_role("link", name="Вернуться в YClients")).to_have_attribute("target", "_top")
    screenshot(page, "iframe-active-desktop")
    assert errors == []


def test_the_page_refuses_frames_of_other_sites(stack: RunningStack) -> None:
    csp = requests.get(stack.base_url + "/marketplace/onboarding", timeout=5).headers["Content-Security-Policy"]
    ancestors = csp.split("frame-ancestors", 1)[1].split(";")[0].split()
    assert "https://*.yclients.com" in ancestors and "http://127.0.0.1:*" in ancestors
    assert "*" not in ancestors and "https:" not in ancestors


# Every state the owner can meet, as the store holds it; the page renders what it receives.
def _every_state(now: float) -> list[tuple[SalonState, dict[str, object]]]:
    linked = {"linked_phone": "79161234567", "owner_phone": OWNER_PHONE}
    qr = "https://wa.me/settings/linked_devices#2@AbCdEfGh,aGVsbG8=,d29ybGQ=,c2VjcmV0"
    return [
        (SalonState.PENDING_WHATSAPP, {"activation_deadline": now + 3000}),
        (SalonState.QR_READY, {"qr": qr, "qr_expires_at": now + 600, "activation_deadline": now + 3000}),
        (SalonState.QR_EXPIRED, {"activation_deadline": now + 3000}),
        (SalonState.CODE_READY, {"pairing_code": "ABCD-EFGH", "code_expires_at": now + 600,
                                 "activation_deadline": now + 3000}),
        (SalonState.CODE_FAILED, {}),
        (SalonState.LINK_REFUSED, {}),
        (SalonState.PASSKEY_REQUIRED, {}),
        (SalonState.PAIRING, {}),
        (SalonState.WHATSAPP_CONNECTED, linked),
        (SalonState.ACTIVATING, linked),
        (SalonState.ACTIVE, linked),
        (SalonState.ACTIVATION_FAILED, linked),
        (SalonState.FROZEN, linked),
        (SalonState.UNINSTALLED, {}),
        (SalonState.WHATSAPP_LOGGED_OUT, linked),
        (SalonState.BANNED, linked),
        (SalonState.CLIENT_OUTDATED, linked),
        (SalonState.EXPIRED_CONSENT, linked),
    ]


# The one next action of each end state (issue 12, point 4).
NEXT_ACTION = {
    SalonState.PASSKEY_REQUIRED: "new-qr", SalonState.LINK_REFUSED: "new-qr", SalonState.QR_EXPIRED: "new-qr",
    SalonState.CODE_FAILED: "new-qr", SalonState.WHATSAPP_LOGGED_OUT: "link-again", SalonState.BANNED: "link-again",
    SalonState.CLIENT_OUTDATED: "back", SalonState.ACTIVATION_FAILED: "back", SalonState.EXPIRED_CONSENT: "back",
    SalonState.ACTIVE: "back", SalonState.FROZEN: "back", SalonState.UNINSTALLED: "back",
}


@pytest.mark.parametrize("language", ["ru", "en"])
def test_every_state_on_a_phone_and_a_desktop(stack: RunningStack, browser: Browser, language: str) -> None:
    """Screenshots of every state at 360x740 and 1280x900; in each the primary action is on
    screen without scrolling, axe-core finds nothing serious, and the end states have their
    one next action."""
    salon_id = 390 if language == "ru" else 391
    store = Store(stack.table())
    token = issue_token(salon_id, LOCAL_JWT_SECRET, 1800)
    store.salons.put(Salon(salon_id=salon_id, state=SalonState.PENDING_WHATSAPP, salon_name="Салон «Все состояния»",
                          updated_at=time.time()))
    for size, make in (("phone", phone_page), ("desktop", desktop_page)):
        page = make(browser, locale="en-US" if language == "en" else "ru-RU")
        errors = watch_errors(page)
        page.goto(f"{stack.base_url}/marketplace/onboarding#token={token}")
        for state, attrs in _every_state(time.time()):
            store.salons.put(Salon(salon_id=salon_id, state=state, salon_name="Салон «Все состояния»",
                                  updated_at=time.time() - 3600, **attrs))  # type: ignore[arg-type]
            page.reload()
            expect(page.locator("#card")).to_have_attribute("data-state", state.value, timeout=15000)
            if state in NEXT_ACTION:
                assert page.locator("[data-primary]").get_attribute("id") == NEXT_ACTION[state], state
            assert_primary_visible(page)
            assert_accessible(page)
            if language == "en":
                assert not CYRILLIC.search(visible_text(page).replace("Салон «Все состояния»", "")), state
            screenshot(page, f"state-{state.value}-{language}-{size}")
        assert page.viewport_size in (PHONE, DESKTOP)
        assert errors == []
        page.context.close()
