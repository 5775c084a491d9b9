import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiadmin.config import ComponentSettings, SigningKey
from aiadmin.untrusted_json import is_valid_text, nesting_depth
from aiadmin.yclients import (
    MAX_USER_DATA_CHARS,
    MAX_USER_DATA_DEPTH,
    BadUserData,
    SignatureForm,
    UserDataSignatureMismatch,
    check_user_data,
    sign_user_data,
    verify_user_data,
)

TOKEN = "partner-token-123456"
USER = {"id": 5101, "name": "Анна Петрова", "phone": "79001234567", "salon_name": "Салон «Лотос»", "is_approved": True}
RAW = json.dumps(USER, ensure_ascii=False, separators=(",", ":")).encode()


@pytest.mark.parametrize("encoded", [
    base64.urlsafe_b64encode(RAW).decode(),                  # what YClients sent: URL-safe, padded
    base64.urlsafe_b64encode(RAW).decode().rstrip("="),      # unpadded
    base64.b64encode(RAW).decode(),                          # standard alphabet
])
def test_signature_over_decoded_bytes_in_any_alphabet(encoded: str) -> None:
    user = verify_user_data(encoded, sign_user_data(RAW, TOKEN), TOKEN)
    assert user.name == "Анна Петрова"
    assert user.salon_name == "Салон «Лотос»"
    assert user.id == "5101"


def test_signature_over_decoded_bytes_reports_its_form() -> None:
    encoded = base64.urlsafe_b64encode(RAW).decode()
    assert check_user_data(encoded, sign_user_data(RAW, TOKEN), TOKEN).form == SignatureForm.DECODED


@pytest.mark.parametrize("encoded", [
    base64.urlsafe_b64encode(RAW).decode(),
    base64.urlsafe_b64encode(RAW).decode().rstrip("="),
    base64.b64encode(RAW).decode(),
])
def test_signature_over_the_string_as_received_is_accepted_and_reported(encoded: str) -> None:
    verified = check_user_data(encoded, sign_user_data(encoded.encode(), TOKEN).upper(), TOKEN)
    assert verified.form == SignatureForm.STRING
    assert verified.user.name == "Анна Петрова"  # parsed from the signed bytes, never re-serialised


def test_a_plus_turned_into_a_space_by_the_query_decoder_still_verifies() -> None:
    raw = json.dumps({"id": 1, "name": "~~~>>>"}, separators=(",", ":")).encode()
    encoded = base64.b64encode(raw).decode()
    assert "+" in encoded
    mangled = encoded.replace("+", " ")
    assert check_user_data(mangled, sign_user_data(raw, TOKEN), TOKEN).form == SignatureForm.DECODED
    assert check_user_data(mangled, sign_user_data(encoded.encode(), TOKEN), TOKEN).form == SignatureForm.STRING


def test_a_separate_signing_key_and_the_partner_token_are_not_interchangeable() -> None:
    encoded = base64.urlsafe_b64encode(RAW).decode()
    signing_key = "separate-signing-key"
    assert verify_user_data(encoded, sign_user_data(RAW, signing_key), signing_key).id == "5101"
    with pytest.raises(BadUserData):
        verify_user_data(encoded, sign_user_data(RAW, signing_key), TOKEN)


class SigningKeySettings(ComponentSettings):
    yclients_signing_key: SigningKey


def test_the_signing_key_setting_is_optional_and_defaults_to_none(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"YCLIENTS_PARTNER_TOKEN": TOKEN}
    assert SigningKeySettings.load(env).yclients_signing_key is None
    key = SigningKeySettings.load({**env, "YCLIENTS_SIGNING_KEY": "k" * 20}).yclients_signing_key
    assert key is not None and key.reveal() == "k" * 20
    monkeypatch.setattr("aiadmin.config.read_secret_parameter", lambda _name: "from-ssm")
    from_ssm = SigningKeySettings.load({"YCLIENTS_SIGNING_KEY_PARAM": "/aiadmin/signing-key"}).yclients_signing_key
    assert from_ssm is not None and from_ssm.reveal() == "from-ssm"


def test_forged_signature_is_refused() -> None:
    encoded = base64.urlsafe_b64encode(RAW).decode()
    with pytest.raises(BadUserData):
        verify_user_data(encoded, sign_user_data(RAW, "another-token"), TOKEN)


def test_signed_non_object_is_refused() -> None:
    raw = b"[1,2,3]"
    with pytest.raises(BadUserData):
        verify_user_data(base64.b64encode(raw).decode(), sign_user_data(raw, TOKEN), TOKEN)


@given(st.text(max_size=300), st.text(max_size=80))
def test_arbitrary_input_is_refused_cleanly(user_data: str, sign: str) -> None:
    try:
        verify_user_data(user_data, sign, TOKEN)
    except BadUserData:
        pass
    else:  # only a correct signature (of either form) may pass
        cleaned = user_data.strip().replace(" ", "+").replace("-", "+").replace("_", "/")
        raw = base64.b64decode(cleaned + "=" * (-len(cleaned) % 4))
        forms = {sign_user_data(raw, TOKEN), sign_user_data(user_data.encode("utf-8", "surrogatepass"), TOKEN),
                 sign_user_data(user_data.replace(" ", "+").encode("utf-8", "surrogatepass"), TOKEN)}
        assert sign.strip().lower() in forms


# ---- what a signed user_data may hold -------------------------------------------------------

def _signed(raw: bytes) -> tuple[str, str]:
    """`user_data` and `user_data_sign` over the decoded bytes, as YClients signs."""
    return base64.urlsafe_b64encode(raw).decode(), sign_user_data(raw, TOKEN)


def _nested(depth: int) -> bytes:
    return b'{"id":1,"x":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


# As deep as fits under the size bound (4,016 characters of base64): deep enough that json.loads
# raises RecursionError (from about 1,500 levels at the top of a stack, fewer under pytest).
DEEPEST = 1_500


def test_a_name_with_a_lone_surrogate_is_refused_though_signed() -> None:
    raw = b'{"id":1,"name":"Lily\\udfff"}'
    with pytest.raises(BadUserData, match="Unicode"):
        check_user_data(*_signed(raw), TOKEN)


@pytest.mark.parametrize("raw", [
    b'{"id":1,"\\ud800":"key"}',                          # in a key
    b'{"id":1,"extra":{"deep":["ok","\\udc00"]}}',        # in an ignored, nested field
    b'{"id":1,"salon_name":"\\ud83d"}',                   # a high surrogate with no pair
    b'{"id":1,"name":"\\ude00\\ud83d"}',                  # a pair in the wrong order
])
def test_a_lone_surrogate_anywhere_is_refused(raw: bytes) -> None:
    with pytest.raises(BadUserData):
        check_user_data(*_signed(raw), TOKEN)


def test_an_escaped_surrogate_pair_is_one_character_and_passes() -> None:
    user = verify_user_data(*_signed(b'{"id":1,"name":"Lily \\ud83c\\udf38"}'), TOKEN)
    assert user.name == "Lily \U0001f338"
    assert user.name.encode("utf-8")  # stored as valid UTF-8


def test_deep_nesting_is_refused_before_json_loads_recurses(monkeypatch: pytest.MonkeyPatch) -> None:
    loads = []
    monkeypatch.setattr(json, "loads", lambda *a, **k: loads.append(a) or {})
    for depth in (MAX_USER_DATA_DEPTH + 1, 50, DEEPEST):
        with pytest.raises(BadUserData, match="nested"):
            check_user_data(*_signed(_nested(depth)), TOKEN)
    assert loads == []


def test_nesting_up_to_the_limit_passes() -> None:
    assert verify_user_data(*_signed(_nested(MAX_USER_DATA_DEPTH)), TOKEN).id == "1"


def test_nesting_json_loads_cannot_read_is_bad_user_data() -> None:
    raw = _nested(DEEPEST)
    assert len(_signed(raw)[0]) <= MAX_USER_DATA_CHARS
    with pytest.raises(RecursionError):
        json.loads(raw)
    with pytest.raises(BadUserData, match="nested"):
        check_user_data(*_signed(raw), TOKEN)
    # 2,000 levels (a 503 before) no longer fit in the size bound.
    with pytest.raises(BadUserData, match="too large"):
        check_user_data(*_signed(_nested(2_000)), TOKEN)


def test_a_recursion_error_is_still_caught_if_the_scan_lets_one_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("aiadmin.untrusted_json.nesting_depth", lambda _text: 0)
    with pytest.raises(BadUserData, match="nested"):
        check_user_data(*_signed(_nested(DEEPEST)), TOKEN)


def test_oversized_user_data_is_refused_before_the_signature_is_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = json.dumps({"id": 1, "name": "x" * MAX_USER_DATA_CHARS}).encode()
    signed = _signed(raw)
    hashed = []
    monkeypatch.setattr("aiadmin.yclients.sign_user_data", lambda *a: hashed.append(a) or "")
    with pytest.raises(BadUserData, match="too large") as refused:
        check_user_data(*signed, TOKEN)
    assert hashed == [] and not isinstance(refused.value, UserDataSignatureMismatch)


def test_user_data_up_to_the_size_limit_passes() -> None:
    head = b'{"id":1,"name":"'
    # Base64 of n bytes is 4 * ceil(n / 3) characters: fill the limit exactly.
    raw = head + b"x" * (MAX_USER_DATA_CHARS * 3 // 4 - len(head) - 2) + b'"}'
    encoded, sign = _signed(raw)
    assert len(encoded) == MAX_USER_DATA_CHARS
    assert verify_user_data(encoded, sign, TOKEN).id == "1"


def test_only_a_signature_mismatch_is_reported_as_one() -> None:
    encoded = base64.urlsafe_b64encode(RAW).decode()
    with pytest.raises(UserDataSignatureMismatch):
        check_user_data(encoded, sign_user_data(RAW, "another-token"), TOKEN)
    for raw in (b"[1]", b"not json", b'{"id":{"a":1}}', _nested(20)):
        with pytest.raises(BadUserData) as refused:
            check_user_data(*_signed(raw), TOKEN)
        assert not isinstance(refused.value, UserDataSignatureMismatch)


def test_unsigned_junk_is_refused_without_being_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = []
    monkeypatch.setattr("aiadmin.yclients.load_json", lambda *a: parsed.append(a) or {})
    for raw in (_nested(DEEPEST), b'{"name":"\\udfff"}'):
        with pytest.raises(UserDataSignatureMismatch):
            check_user_data(base64.b64encode(raw).decode(), "00", TOKEN)
    assert parsed == []


# Any code point, surrogates often (st.characters() alone draws them rarely); json.dumps escapes them.
_any_char = st.characters() | st.characters(categories=["Cs"])
_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.text(alphabet=_any_char, max_size=12))


@given(value=st.recursive(_json_leaf, lambda children: st.lists(children, max_size=3)
                          | st.dictionaries(st.text(alphabet=_any_char, max_size=6), children, max_size=3),
                          max_leaves=20))
def test_any_signed_object_is_a_user_with_valid_text_or_bad_user_data(value: object) -> None:
    raw = json.dumps({"id": 1, "name": "n", "extra": value}).encode()
    try:
        user = verify_user_data(*_signed(raw), TOKEN)
    except BadUserData:
        assert nesting_depth(raw.decode()) > MAX_USER_DATA_DEPTH or not is_valid_text(value)
    else:
        assert user.id == "1" and is_valid_text(value)
