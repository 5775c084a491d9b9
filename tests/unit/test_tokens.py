import time

import jwt
import pytest

from aiadmin.tokens import InvalidToken, issue_token, verify_token

SECRET = "s" * 40


def test_round_trip_binds_the_salon() -> None:
    assert verify_token(issue_token(101, SECRET, 600), SECRET) == 101


def test_expired_token_is_refused() -> None:
    token = issue_token(101, SECRET, 60, now=time.time() - 3600)
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(token, SECRET)


@pytest.mark.parametrize("token", [None, "", "garbage", "a.b.c"])
def test_malformed_tokens_are_refused(token: str | None) -> None:
    with pytest.raises(InvalidToken):
        verify_token(token, SECRET)


def test_forged_and_foreign_tokens_are_refused() -> None:
    with pytest.raises(InvalidToken):
        verify_token(issue_token(101, "other" * 10, 600), SECRET)
    wrong_audience = jwt.encode({"sub": "101", "aud": "else", "iat": int(time.time()), "exp": int(time.time()) + 60},
                                SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken):
        verify_token(wrong_audience, SECRET)
    unsigned = jwt.encode({"sub": "101", "aud": "aiadmin-onboarding", "iat": 1, "exp": 2**40}, None, algorithm="none")
    with pytest.raises(InvalidToken):
        verify_token(unsigned, SECRET)
