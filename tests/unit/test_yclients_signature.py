import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiadmin.config import load_settings
from aiadmin.yclients import BadUserData, SignatureForm, check_user_data, sign_user_data, verify_user_data

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


def test_the_signing_key_setting_is_optional_and_defaults_to_none() -> None:
    env = {"YCLIENTS_PARTNER_TOKEN": TOKEN}
    assert load_settings(["yclients_signing_key"], env).yclients_signing_key is None
    settings = load_settings(["yclients_signing_key"], {**env, "YCLIENTS_SIGNING_KEY": "k" * 20})
    assert settings.yclients_signing_key.reveal() == "k" * 20
    from_ssm = load_settings(["yclients_signing_key"], {"YCLIENTS_SIGNING_KEY_PARAM": "/aiadmin/signing-key"},
                             read_parameter=lambda _name: "from-ssm")
    assert from_ssm.yclients_signing_key.reveal() == "from-ssm"


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
