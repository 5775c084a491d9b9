"""The owner-facing catalogue: both languages complete, English free of Russian, the language
chosen from Accept-Language, and the phone number shown masked."""

from __future__ import annotations

import re
import string

import pytest

from aiadmin.i18n import CATALOGUE, EN, RU, catalogue_json, pick_language, t
from aiadmin.phones import mask_phone, phone_digits, phone_of_jid
from aiadmin.states import OWNER_TEXT, SalonState

CYRILLIC = re.compile("[\u0400-\u04ff]")


def _params(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_both_languages_have_the_same_keys_and_parameters() -> None:
    assert set(RU) == set(EN)
    for key in RU:
        assert _params(RU[key]) == _params(EN[key]), key


def test_english_has_no_cyrillic_and_russian_is_russian() -> None:
    assert [key for key, text in EN.items() if CYRILLIC.search(text)] == []
    assert all(CYRILLIC.search(text) for key, text in RU.items() if key != "page.status_number")


def test_every_state_has_a_title_and_hint_in_both_languages() -> None:
    for state in SalonState:
        for language in CATALOGUE:
            assert t(language, f"state.{state.value}.title") and t(language, f"state.{state.value}.hint")
        assert OWNER_TEXT[state] == (RU[f"state.{state.value}.title"], RU[f"state.{state.value}.hint"])


@pytest.mark.parametrize(("header", "language"), [
    (None, "ru"), ("", "ru"), ("en-US,en;q=0.9", "en"), ("ru-RU,ru;q=0.9,en;q=0.8", "ru"),
    ("de-DE,de;q=0.9,en;q=0.5", "en"), ("de,fr", "ru"), ("en;q=0.3,ru;q=0.7", "ru"), ("en;q=bogus", "ru"),
    ("EN-gb", "en"), (";;;,,,", "ru"), ("en;q=0", "ru"),
])
def test_the_language_comes_from_accept_language(header: str | None, language: str) -> None:
    assert pick_language(header) == language


def test_parameters_are_filled_and_the_catalogue_is_safe_in_a_script() -> None:
    assert t("en", "pairing.interval", seconds=12) == "You can ask for a new code in 12 s."
    assert t("xx", "page.back") == RU["page.back"]
    assert "</" not in catalogue_json()


@pytest.mark.parametrize(("digits", "masked"), [
    ("79001234567", "+7 900 ***-45-67"),
    ("380501234567", "+380 50 1** 4567"),
    ("12025550123", "+1 202-***-0123"),
])
def test_numbers_are_masked_keeping_the_code_and_the_last_four(digits: str, masked: str) -> None:
    assert mask_phone(digits) == masked


def test_the_linked_number_comes_from_the_device_jid() -> None:
    assert phone_of_jid("79001234567.0:12@s.whatsapp.net") == "79001234567"
    assert phone_of_jid("79001234567:3@s.whatsapp.net") == "79001234567"
    assert phone_of_jid("12345678901234@lid") is None
    assert phone_of_jid(None) is None and phone_of_jid("garbage") is None
    assert phone_digits("8 (900) 123-45-67") == "79001234567" and phone_digits("12") is None
    assert phone_digits(None) is None
