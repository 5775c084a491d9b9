"""JSON from outside (a signed `user_data`, a webhook body), read so that bad input is a clear
refusal rather than an error far from it.

- Nesting: `json.loads` recurses once per level, so a document a few thousand levels deep ends in
  a RecursionError (a 5xx) whatever its size. The depth is measured first, by a flat scan that
  cannot recurse; the RecursionError is still caught, as a backstop.
- Text: a string escape such as `"\\udfff"` decodes to a lone surrogate, which no UTF-8 encoder
  accepts: DynamoDB, the logs and the page's messages would each fail on it later. Every string,
  keys included, must be valid Unicode text."""

from __future__ import annotations

import json
from typing import Any

_OPENING = frozenset("[{")
_CLOSING = frozenset("]}")


class UntrustedJsonError(ValueError):
    """Not JSON, nested too deep, or holding a string that is not valid Unicode text."""


def nesting_depth(text: str) -> int:
    """How deep the brackets of JSON text nest, outside strings. Exact for valid JSON; for
    anything else only a cheap guess, which json.loads then refuses anyway."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in _OPENING:
            depth += 1
            deepest = max(deepest, depth)
        elif char in _CLOSING:
            depth -= 1
    return deepest


def is_valid_text(value: Any) -> bool:
    """Whether every string in a parsed JSON value (keys too) is valid Unicode text, that is,
    encodable as UTF-8: no lone surrogate. Recurses per level: call it on a value of bounded depth."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(is_valid_text(key) and is_valid_text(item) for key, item in value.items())
    if isinstance(value, list):
        return all(is_valid_text(item) for item in value)
    return True


def load_json(text: str, max_depth: int) -> Any:
    """`json.loads` for input from outside: refuses nesting deeper than `max_depth` before parsing,
    and any string that is not valid Unicode text after it."""
    if nesting_depth(text) > max_depth:
        raise UntrustedJsonError(f"JSON nested deeper than {max_depth} levels")
    try:
        value = json.loads(text)
    except RecursionError as exc:  # the scan above should have refused it already
        raise UntrustedJsonError("JSON nested too deep") from exc
    except ValueError as exc:  # not JSON; also an integer too long for int() (4300 digits)
        raise UntrustedJsonError("not JSON") from exc
    if not is_valid_text(value):
        raise UntrustedJsonError("JSON holds a string that is not valid Unicode text")
    return value
