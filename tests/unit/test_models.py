"""The one salon id parser (aiadmin.models.parse_salon_id): ASCII digits only, bounded, in range,
never an exception, one value per salon whatever its leading zeros."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiadmin.models import SALON_ID_LIMIT, SALON_ID_MAX_CHARS, parse_salon_id


@pytest.mark.parametrize(("text", "salon_id"), [
    ("1", 1), ("9203", 9203), ("009203", 9203), ("0000000000000001", 1),
    (str(SALON_ID_LIMIT - 1), SALON_ID_LIMIT - 1),
])
def test_ascii_digits_in_range_are_a_salon_id(text: str, salon_id: int) -> None:
    assert parse_salon_id(text) == salon_id


@pytest.mark.parametrize("text", [
    "", "0", "000", "-1", "+1", " 1", "1 ", "1\n", "1_000", "1e3", "0x10", "1.0",
    "²", "9²", "¹²³",             # superscripts: isdigit() is true, int() raises
    "１２３",                      # fullwidth: int() reads them
    "٣", "۳",                     # Arabic-Indic and extended Arabic-Indic
    "߃", "३", "𝟑",               # NKo, Devanagari, mathematical bold
    str(SALON_ID_LIMIT), str(2**64), "9" * 17, "0" * 16 + "1",
])
def test_anything_else_is_not_a_salon_id(text: str) -> None:
    assert parse_salon_id(text) is None


def test_the_length_is_bounded_before_the_value_is_read() -> None:
    assert parse_salon_id("9" * SALON_ID_MAX_CHARS) is None  # 16 digits, but not below 2**53
    assert parse_salon_id("0" * (SALON_ID_MAX_CHARS - 1) + "7") == 7
    assert parse_salon_id("0" * SALON_ID_MAX_CHARS + "7") is None
    assert parse_salon_id("1" * 100_000) is None


@given(st.text())
def test_any_text_is_a_canonical_salon_id_or_none(text: str) -> None:
    parsed = parse_salon_id(text)
    if parsed is None:
        return
    assert type(parsed) is int and 0 < parsed < SALON_ID_LIMIT
    # The text is that id's canonical ASCII form, perhaps behind leading zeros.
    assert text.lstrip("0") == str(parsed)
    assert parse_salon_id(str(parsed)) == parsed


@given(st.text(alphabet=st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=20))
def test_non_ascii_digits_never_parse(text: str) -> None:
    if not text.isascii():
        assert parse_salon_id(text) is None


@given(st.integers(min_value=1, max_value=SALON_ID_LIMIT - 1), st.integers(min_value=0, max_value=15))
def test_leading_zeros_read_to_the_same_salon(salon_id: int, zeros: int) -> None:
    text = "0" * zeros + str(salon_id)
    assert parse_salon_id(text) == (salon_id if len(text) <= SALON_ID_MAX_CHARS else None)
