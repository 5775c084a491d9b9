"""JSON from outside (aiadmin.untrusted_json): the depth is measured without recursion and
exactly for valid JSON, deep documents never reach json.loads, lone surrogates never pass."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiadmin.untrusted_json import UntrustedJsonError, is_valid_text, load_json, nesting_depth

_any_char = st.characters() | st.characters(categories=["Cs"])
_tricky_text = st.text(alphabet=_any_char | st.sampled_from('[]{}"\\'), max_size=10)
_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _tricky_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_tricky_text, children, max_size=3),
    max_leaves=25)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@given(_json_value, st.booleans())
def test_the_scan_measures_the_depth_of_any_json_exactly(value: Any, ascii_only: bool) -> None:
    """Brackets, quotes and backslashes inside strings do not count."""
    assert nesting_depth(json.dumps(value, ensure_ascii=ascii_only)) == _depth(value)


@given(_json_value)
def test_load_json_returns_the_value_or_refuses_it_for_depth_or_text(value: Any) -> None:
    text = json.dumps(value)
    try:
        loaded = load_json(text, max_depth=3)
    except UntrustedJsonError:
        assert _depth(value) > 3 or not is_valid_text(value)
    else:
        assert loaded == json.loads(text) and is_valid_text(loaded)


@given(st.text(max_size=200))
def test_any_text_is_a_value_or_untrusted_json_error(text: str) -> None:
    with contextlib.suppress(UntrustedJsonError):  # anything else fails the test
        load_json(text, max_depth=8)


@pytest.mark.parametrize("text", ["[" * 100_000, "{\"a\":" * 50_000, "[" * 5_000 + "]" * 5_000])
def test_deep_documents_are_refused_before_parsing(text: str) -> None:
    with pytest.raises(UntrustedJsonError, match="nested deeper"):
        load_json(text, max_depth=16)


def test_the_recursion_error_is_a_backstop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("aiadmin.untrusted_json.nesting_depth", lambda _text: 0)
    with pytest.raises(UntrustedJsonError, match="too deep"):
        load_json("[" * 100_000 + "]" * 100_000, max_depth=16)


@pytest.mark.parametrize("text", [
    '"\\udfff"', '{"\\ud800": 1}', '[1, {"a": ["\\udc00"]}]', '{"a": "\\ud83d x"}',
])
def test_lone_surrogates_are_refused_anywhere(text: str) -> None:
    with pytest.raises(UntrustedJsonError, match="Unicode"):
        load_json(text, max_depth=8)


def test_a_surrogate_pair_and_other_text_pass() -> None:
    assert load_json('{"name": "\\ud83c\\udf38 Ёлка", "n": [1, 2.5, null]}', max_depth=8) == {
        "name": "\U0001f338 Ёлка", "n": [1, 2.5, None]}


@pytest.mark.parametrize("text", ["", "{", "nope", "1" * 5_000, '{"a": 1} x'])
def test_what_json_loads_refuses_is_untrusted_json_error(text: str) -> None:
    with pytest.raises(UntrustedJsonError, match="not JSON"):
        load_json(text, max_depth=8)
