"""The salon's WhatsApp number typed by the owner on the onboarding page, for pairing by code.

Validated and normalised with `phonenumbers` (Google's libphonenumber metadata): a Russian
owner types "8 (900) 123-45-67" or "+7 900 1234567", WhatsApp's `PairPhone` wants the
international number as digits without "+" ("79001234567")."""

from __future__ import annotations

import re

from aiadmin.i18n import DEFAULT_LANGUAGE, t

DEFAULT_REGION = "RU"
# Longer input is not a phone number; refusing it early keeps the parser's work bounded.
MAX_INPUT_LENGTH = 40


class InvalidPhone(ValueError):
    """The text is not a valid phone number; the message is for the owner (Russian), `key`
    names it in `aiadmin.i18n` so the page can show it in the owner's language."""

    def __init__(self, key: str) -> None:
        super().__init__(t(DEFAULT_LANGUAGE, key))
        self.key = key


def normalise_phone(raw: object, default_region: str = DEFAULT_REGION) -> str:
    """The number in international format as digits only (E.164 without "+").

    Raises InvalidPhone with an owner-facing message for anything that is not a valid
    number (a number without a country code is read as Russian)."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidPhone("phone.empty")
    import phonenumbers  # here, not at import: only the pairing-code request needs it (cold start)

    text = raw.strip()
    if len(text) > MAX_INPUT_LENGTH:
        raise InvalidPhone("phone.too_long")
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException:
        raise InvalidPhone("phone.not_a_number") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone("phone.invalid")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164).removeprefix("+")


# A WhatsApp user JID: the account's international number, then an agent, a device and the server
# ("79001234567.0:12@s.whatsapp.net", "79001234567:12@s.whatsapp.net").
_JID_NUMBER = re.compile(r"(\d{6,15})(?:[.:@]|$)")


def phone_of_jid(jid: str | None) -> str | None:
    """The phone number (digits) a linked device's JID carries; None for any other JID (e.g. a
    `@lid` one, which names no number)."""
    if not jid or not jid.endswith("@s.whatsapp.net"):
        return None
    match = _JID_NUMBER.match(jid)
    return match.group(1) if match else None


def phone_digits(raw: object) -> str | None:
    """A number from YClients' `user_data.phone` (any format) as international digits; None when
    it is not a valid number. Never raises: the owner's profile is untrusted and optional."""
    try:
        return normalise_phone(raw)
    except InvalidPhone:
        return None


def mask_phone(digits: str) -> str:
    """The number as the owner recognises it, with the middle hidden: `+7 900 ***-45-67`. The
    country code, the first three digits after it and the last four stay visible."""
    import phonenumbers  # here, not at import (cold start)

    try:
        number = phonenumbers.parse("+" + digits)
        text = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
        keep_head = len(str(number.country_code)) + 3
    except phonenumbers.NumberParseException:
        text, keep_head = "+" + digits, 4
    total = sum(ch.isdigit() for ch in text)
    out, seen = [], 0
    for ch in text:
        if ch.isdigit():
            seen += 1
            out.append(ch if seen <= keep_head or seen > total - 4 else "*")
        else:
            out.append(ch)
    return "".join(out)
