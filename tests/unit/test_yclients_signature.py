import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiadmin.yclients import BadUserData, sign_user_data, verify_user_data

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


def test_signature_over_the_base64_text_is_refused() -> None:
    encoded = base64.urlsafe_b64encode(RAW).decode()
    with pytest.raises(BadUserData):
        verify_user_data(encoded, sign_user_data(encoded.encode(), TOKEN), TOKEN)


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
    else:  # only a correct signature may pass
        raw = base64.b64decode(user_data.replace("-", "+").replace("_", "/") + "=" * (-len(user_data) % 4))
        assert sign.strip().lower() == sign_user_data(raw, TOKEN)
