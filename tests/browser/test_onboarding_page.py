"""The owner's journey in a real browser: Debian's Chromium, headless, driven by playwright.

The QR is decoded *from a screenshot* of the page with zbar, so the test fails if the page
draws a code that a phone could not read back as exactly the engine's pairing string."""

from __future__ import annotations

import re

import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from local.process import RunningStack
from tests.browser.conftest import decode_qr, desktop_page, phone_page, screenshot

pytestmark = pytest.mark.browser


def _new_page(browser: Browser) -> Page:
    # A desktop: the QR leads there (on a phone the number does, see the phone tests).
    return desktop_page(browser)


def _decode_qr(page: Page) -> str:
    return decode_qr(page.locator("#qr"))


def test_owner_scans_the_qr_from_the_page_and_sees_active(stack: RunningStack, browser: Browser) -> None:
    page = _new_page(browser)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(stack.marketplace + "/")
    page.locator("li[data-salon='102'] button").click()  # "Подключить"
    page.wait_for_url("**/marketplace/onboarding*")
    assert "token=" not in page.url, "the token must leave the address bar"
    card = page.locator("#card")
    expect(card).to_have_attribute("data-state", "qr_ready", timeout=45000)
    expect(page.locator("#salon")).to_contain_text("Барбершоп «Борода & Ко»")
    expect(page.locator("#countdown")).to_contain_text("Код обновится через")
    expect(page.locator("#deadline")).to_contain_text("Осталось времени")

    qr = _decode_qr(page)
    assert qr.startswith("https://wa.me/settings/linked_devices#2@")
    response = requests.post(stack.base_url + "/_local/whatsapp/scan", json={"qr": qr}, timeout=10)
    assert response.status_code == 200, response.text

    expect(card).to_have_attribute("data-state", "active", timeout=15000)
    expect(page.locator("#title")).to_have_text("Готово! AI Admin подключён")
    expect(page.locator("#qr-box")).to_be_hidden()
    assert stack.marketplace_state()["salons"]["102"]["status"] == "active"
    assert errors == []
    screenshot(page, "onboarding-active")


def test_owner_supplied_names_are_escaped(stack: RunningStack, browser: Browser) -> None:
    page = _new_page(browser)
    page.goto(stack.marketplace + "/")
    page.locator("li[data-salon='103'] button").click()
    expect(page.locator("#card")).to_have_attribute("data-state", "qr_ready", timeout=45000)
    # "<Ноготок>" is shown as text, never parsed as markup.
    expect(page.locator("#salon")).to_have_text("Салон: Студия маникюра <Ноготок>")
    assert page.locator("#salon ноготок").count() == 0
    screenshot(page, "onboarding-qr")


def test_owner_on_the_salons_phone_links_with_a_pairing_code(stack: RunningStack, browser: Browser) -> None:
    """The page is open on the very phone that runs the salon's WhatsApp: no QR to scan, so
    the page leads with the number; the owner asks for a code and types it into WhatsApp."""
    page = phone_page(browser)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(stack.marketplace + "/")
    page.locator("li[data-salon='101'] button").click()
    card = page.locator("#card")
    expect(card).to_have_attribute("data-state", "qr_ready", timeout=45000)
    expect(page.locator("#qr-box")).to_be_hidden()                  # phone-first: the number leads
    expect(page.get_by_role("button", name="Привязать по QR-коду")).to_be_visible()
    phone = page.get_by_label("Номер WhatsApp салона")
    phone.fill("12-34")
    page.get_by_role("button", name="Получить код").click()
    expect(page.locator("#phone-error")).to_contain_text("номер")   # refused, in Russian
    expect(card).to_have_attribute("data-state", "qr_ready")        # and nothing changed

    phone.fill("8 (900) 123-45-67")
    page.get_by_role("button", name="Получить код").click()
    expect(card).to_have_attribute("data-state", "code_ready", timeout=15000)
    expect(page.locator("#phone-error")).to_be_hidden()
    expect(page.locator("#qr-box")).to_be_hidden()
    expect(page.locator("#code-countdown")).to_contain_text("Код действует ещё")
    expect(page.locator("#hint")).to_contain_text("Привязать по номеру телефона")
    code = page.locator("#pairing-code").inner_text()
    assert re.fullmatch(r"[1-9A-HJ-NP-TV-Z]{4}-[1-9A-HJ-NP-TV-Z]{4}", code), code
    screenshot(page, "onboarding-pairing-code")

    # The salon's phone enters the code in WhatsApp.
    entered = requests.post(stack.base_url + "/_local/whatsapp/enter-code",
                            json={"code": code, "phone": "79001234567"}, timeout=10)
    assert entered.status_code == 200, entered.text
    expect(card).to_have_attribute("data-state", "active", timeout=15000)
    expect(page.locator("#code-box")).to_be_hidden()
    assert stack.marketplace_state()["salons"]["101"]["status"] == "active"
    assert errors == []


def test_a_second_number_too_soon_is_refused_with_a_clear_message(stack: RunningStack, browser: Browser) -> None:
    """Pairing codes make WhatsApp notify the phone: the page cannot ask for them in a row."""
    from local.owner import press_connect

    page = _new_page(browser)
    page.goto(press_connect(stack.marketplace, 104))
    card = page.locator("#card")
    expect(card).to_have_attribute("data-state", "qr_ready", timeout=45000)
    page.get_by_role("button", name="Привязать по номеру телефона").click()
    phone = page.get_by_label("Номер WhatsApp салона")
    phone.fill("8 (900) 123-45-67")
    page.get_by_role("button", name="Получить код").click()
    expect(card).to_have_attribute("data-state", "code_ready", timeout=15000)
    first = page.locator("#pairing-code").inner_text()

    page.get_by_role("button", name="Получить код для другого номера").click()
    phone.fill("8 (900) 765-43-21")
    page.get_by_role("button", name="Получить код").click()
    expect(page.locator("#phone-error")).to_contain_text("Новый код можно запросить через")
    expect(card).to_have_attribute("data-state", "code_ready")      # nothing changed
    assert page.locator("#pairing-code").inner_text() == first
    screenshot(page, "onboarding-pairing-limited")


def test_page_without_a_token_tells_the_owner_what_to_do(stack: RunningStack, browser: Browser) -> None:
    page = _new_page(browser)
    page.goto(stack.base_url + "/marketplace/onboarding")
    expect(page.locator("#title")).to_have_text("Ссылка устарела")


def test_bad_redirect_shows_a_friendly_page(stack: RunningStack, browser: Browser) -> None:
    page = _new_page(browser)
    response = page.goto(stack.base_url + "/auth/yclients/redirect?salon_id=101&user_data=e30&user_data_sign=00")
    assert response is not None and response.status == 400
    expect(page.locator("h1")).to_have_text("Ссылка недействительна")


def _scan_shown_code(stack: RunningStack, page: Page, salon_id: str) -> None:
    card = page.locator("#card")
    expect(card).to_have_attribute("data-salon", salon_id, timeout=15000)
    expect(card).to_have_attribute("data-state", "qr_ready", timeout=45000)
    qr = _decode_qr(page)
    response = requests.post(stack.base_url + "/_local/whatsapp/scan", json={"qr": qr}, timeout=10)
    if response.status_code != 200:  # the code turned over between the screenshot and the scan
        expect(card).to_have_attribute("data-state", "qr_ready", timeout=45000)
        qr = _decode_qr(page)
        response = requests.post(stack.base_url + "/_local/whatsapp/scan", json={"qr": qr}, timeout=10)
    assert response.status_code == 200, response.text


def test_owner_links_two_locations_from_one_redirect_and_sees_both_active(stack: RunningStack,
                                                                         browser: Browser) -> None:
    """A network's owner connects both locations at once (`salon_ids[]`): the page lists them,
    walks through linking each one (its own WhatsApp, QR decoded from the screen), activates each
    as it links and ends when both are active. Then one is re-linked, only after a confirmation."""
    page = _new_page(browser)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(stack.marketplace + "/")
    page.locator("li[data-network='7001'] button").click()  # "Подключить все филиалы"
    page.wait_for_url("**/marketplace/onboarding*")
    assert "token=" not in page.url
    locations = page.locator("#locations li")
    expect(locations).to_have_count(2, timeout=15000)
    expect(page.locator("#progress")).to_have_text("Подключено филиалов: 0 из 2", timeout=15000)
    first, second = page.locator("#locations li[data-salon='201']"), page.locator("#locations li[data-salon='202']")
    expect(first).to_have_attribute("aria-current", "true", timeout=15000)
    expect(page.locator("#all-done")).to_be_hidden()

    _scan_shown_code(stack, page, "201")
    expect(first).to_have_attribute("data-state", "active", timeout=15000)
    expect(first.locator(".loc-state")).to_have_text("Готово! AI Admin подключён")
    # The page moves on to the location that still needs its WhatsApp.
    expect(second).to_have_attribute("aria-current", "true", timeout=15000)
    screenshot(page, "locations-second")
    _scan_shown_code(stack, page, "202")
    expect(second).to_have_attribute("data-state", "active", timeout=15000)
    expect(page.locator("#all-done")).to_be_visible()
    expect(page.locator("#progress")).to_have_text("Подключено филиалов: 2 из 2")
    salons = stack.marketplace_state()["salons"]
    assert salons["201"]["status"] == salons["202"]["status"] == "active"
    screenshot(page, "locations-all-active")

    # Re-linking a linked location is an explicit, confirmed owner action.
    page.get_by_role("button", name="Перепривязать WhatsApp").click()
    expect(page.locator("#relink-confirm")).to_be_visible()
    page.get_by_role("button", name="Отмена").click()
    expect(page.locator("#card")).to_have_attribute("data-state", "active")
    page.get_by_role("button", name="Перепривязать WhatsApp").click()
    page.get_by_role("button", name="Да, перепривязать").click()
    _scan_shown_code(stack, page, "202")
    expect(second).to_have_attribute("data-state", "active", timeout=15000)
    expect(page.locator("#all-done")).to_be_visible()
    assert errors == []


def test_past_the_owners_hour_the_page_says_so_and_keeps_going(stack: RunningStack, browser: Browser) -> None:
    """The hour is YClients' advice, not our limit: past it the page tells the owner to hurry,
    and linking goes on."""
    import time

    from aiadmin.db import Store

    page = _new_page(browser)
    page.goto(stack.marketplace + "/")
    requests.post(stack.marketplace + "/_salon/118", json={"name": "Салон 118"}, timeout=5)
    page.goto(stack.marketplace + "/")
    page.locator("li[data-salon='118'] button").click()
    card = page.locator("#card")
    expect(card).to_have_attribute("data-state", "qr_ready", timeout=45000)
    expect(page.locator("#deadline")).to_contain_text("в течение часа")
    Store(stack.table()).salons.update_profile(118, {"activation_deadline": time.time() - 5})
    page.reload()  # the page asks for the current state again
    expect(card).to_have_attribute("data-state", "qr_ready", timeout=45000)
    expect(page.locator("#deadline")).to_contain_text("Час на подключение прошёл", timeout=15000)
    expect(page.locator("#deadline")).to_contain_text("пока YClients его ждёт")
    scanned = requests.post(stack.base_url + "/_local/whatsapp/scan", json={"qr": _decode_qr(page)}, timeout=10)
    assert scanned.status_code == 200
    expect(card).to_have_attribute("data-state", "active", timeout=15000)
