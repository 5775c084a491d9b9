"""The salon's WhatsApp number typed by the owner on the onboarding page, for pairing by code.

Validated and normalised with `phonenumbers` (Google's libphonenumber metadata): a Russian
owner types "8 (900) 123-45-67" or "+7 900 1234567", WhatsApp's `PairPhone` wants the
international number as digits without "+" ("79001234567")."""

from __future__ import annotations

DEFAULT_REGION = "RU"
# Longer input is not a phone number; refusing it early keeps the parser's work bounded.
MAX_INPUT_LENGTH = 40


class InvalidPhone(ValueError):
    """The text is not a valid phone number; the message is for the owner (Russian)."""


def normalise_phone(raw: object, default_region: str = DEFAULT_REGION) -> str:
    """The number in international format as digits only (E.164 without "+").

    Raises InvalidPhone with an owner-facing message for anything that is not a valid
    number (a number without a country code is read as Russian)."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidPhone("Введите номер телефона, к которому привязан WhatsApp салона.")
    import phonenumbers  # here, not at import: only the pairing-code request needs it (cold start)

    text = raw.strip()
    if len(text) > MAX_INPUT_LENGTH:
        raise InvalidPhone("Слишком длинный номер. Введите номер в формате +7 900 123-45-67.")
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException:
        raise InvalidPhone("Это не похоже на номер телефона. Введите номер в формате +7 900 123-45-67.") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone("Такого номера не существует. Проверьте цифры и код страны, например +7 900 123-45-67.")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164).removeprefix("+")
