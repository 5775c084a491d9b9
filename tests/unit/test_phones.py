import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiadmin.phones import MAX_INPUT_LENGTH, InvalidPhone, normalise_phone


@pytest.mark.parametrize(("typed", "digits"), [
    ("+7 900 123-45-67", "79001234567"),
    ("8 (900) 123-45-67", "79001234567"),       # the Russian trunk prefix
    ("9001234567", "79001234567"),              # no country code: read as Russian
    ("  +7(495)123 45 67 ", "74951234567"),
    ("８９００１２３４５６７", "79001234567"),     # full-width digits from a phone keyboard
    ("+44 20 7946 0958", "442079460958"),
    ("+1 650 253 0000", "16502530000"),
])
def test_numbers_are_normalised_to_international_digits(typed: str, digits: str) -> None:
    assert normalise_phone(typed) == digits


@pytest.mark.parametrize("typed", [
    None, 79001234567, "", "   ", "123", "+7 000 000-00-00", "abc", "+999 123 456 789",
    "8 900 123-45-67-89-01-23", "+7 900 123 45 67" + " 0" * MAX_INPUT_LENGTH,
])
def test_bad_numbers_are_refused_with_an_owner_message(typed: object) -> None:
    with pytest.raises(InvalidPhone) as refused:
        normalise_phone(typed)
    assert any("а" <= ch <= "я" for ch in str(refused.value).lower())  # Russian, for the owner


@pytest.mark.parametrize("region", ["RU", "KZ", "BY", "UZ", "DE", "US", "AE"])
def test_every_regions_example_number_is_accepted_in_international_form(region: str) -> None:
    example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
    typed = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    assert normalise_phone(typed) == f"{example.country_code}{example.national_number}"


# Garbage of every kind, and phone-keyboard soup, which often is a valid number.
@given(st.one_of(st.text(max_size=60), st.text(alphabet="0123456789 +-()", min_size=1, max_size=30)))
def test_any_text_is_either_a_clean_number_or_refused(text: str) -> None:
    try:
        digits = normalise_phone(text)
    except InvalidPhone:
        return
    # WhatsApp's PairPhone wants international digits: no "+", no trunk 0, at most 15 digits.
    assert digits.isascii() and digits.isdigit() and 8 <= len(digits) <= 15 and not digits.startswith("0")
    assert normalise_phone("+" + digits) == digits

