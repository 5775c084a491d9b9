"""The redirect handler in-process (moto table from template.yaml, the fake marketplace over
real HTTP): the metric that says which signature form matched, the optional separate signing
key, and the optional (unverified) second check against the salon's YClients users."""

from __future__ import annotations

import base64
import importlib.util
import time
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, urlencode

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiadmin.db import Store, open_store
from aiadmin.models import parse_salon_id
from aiadmin.observability import metrics
from aiadmin.tokens import verify_token
from aiadmin.yclients import sign_user_data
from local.fake_yclients import FakeSalon, FakeYClients, ScriptedAnswer
from local.gateway import LambdaContext
from local.template import ROOT
from tests.helpers import fake_marketplace

TOKEN = "partner-token-for-tests"


@pytest.fixture(scope="module")
def marketplace() -> Iterator[tuple[FakeYClients, str]]:
    with fake_marketplace(TOKEN) as served:
        yield served


@pytest.fixture
def fake(marketplace: tuple[FakeYClients, str]) -> FakeYClients:
    fake = marketplace[0]
    fake.salons.clear()
    fake.salons[101] = FakeSalon(101, "Лотос", "Анна", "79001234567", status="pending", consent_at=time.time())
    fake.salons[102] = FakeSalon(102, "Борода", "Дмитрий", "79007654321", status="pending", consent_at=time.time())
    fake.signature_form, fake.signing_key = "decoded", None
    fake.rate_limit = 1000
    fake.calls.clear()
    fake.scripts.clear()
    return fake


def _load(table: Any, marketplace: tuple[FakeYClients, str], monkeypatch: pytest.MonkeyPatch,
          **env: str) -> ModuleType:
    for key, value in {
        "TABLE_NAME": table.name, "YCLIENTS_BASE_URL": marketplace[1], "YCLIENTS_APP_ID": "4242",
        "YCLIENTS_PARTNER_TOKEN": TOKEN, "JWT_SECRET": "j" * 40, "WEBSOCKET_URL": "wss://ws.example/prod",
        **env,
    }.items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location(f"redirect_under_test_{uuid.uuid4().hex}",
                                                  ROOT / "functions" / "redirect" / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _get(module: ModuleType, query: dict[str, Any] | list[tuple[str, Any]],
         headers: dict[str, str] | None = None) -> dict[str, Any]:
    """A redirect request; `query` as pairs where a key repeats (`salon_ids[]`)."""
    pairs = list(query.items()) if isinstance(query, dict) else query
    raw = urlencode(pairs)
    event = {
        "version": "2.0", "routeKey": "GET /auth/yclients/redirect", "rawPath": "/auth/yclients/redirect",
        "rawQueryString": raw, "headers": headers or {},
        "queryStringParameters": {k: str(v) for k, v in pairs},
        "requestContext": {"http": {"method": "GET", "path": "/auth/yclients/redirect", "sourceIp": "127.0.0.1"},
                           "requestId": "r", "routeKey": "GET /auth/yclients/redirect", "stage": "$default"},
        "isBase64Encoded": False,
    }
    metrics.clear_metrics()
    return dict(module.app.resolve(event, LambdaContext(function_name="RedirectFunction", aws_request_id="r")))


def _query(fake: FakeYClients, salon_id: int, form: str | None = None) -> dict[str, Any]:
    return {"salon_id": salon_id, **fake.signed_user_data(fake.salons[salon_id], form)}


@pytest.mark.parametrize("form", ["decoded", "string"])
def test_both_signature_forms_are_accepted_and_the_metric_names_the_form(
        table: Any, marketplace: tuple[FakeYClients, str], fake: FakeYClients, monkeypatch: pytest.MonkeyPatch,
        form: str) -> None:
    module = _load(table, marketplace, monkeypatch)
    response = _get(module, _query(fake, 101, form))
    assert response["statusCode"] == 302
    assert f"UserDataSigned_{form}" in metrics.metric_set
    assert {name for name in metrics.metric_set if name.startswith("UserDataSigned_")} == {f"UserDataSigned_{form}"}


def test_a_separate_signing_key_replaces_the_partner_token(table: Any, marketplace: tuple[FakeYClients, str],
                                                           fake: FakeYClients, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _load(table, marketplace, monkeypatch, YCLIENTS_SIGNING_KEY="a-separate-signing-key")
    assert _get(module, _query(fake, 101))["statusCode"] == 400  # signed with the partner token
    fake.signing_key = "a-separate-signing-key"
    assert _get(module, _query(fake, 101, "string"))["statusCode"] == 302


def test_the_salon_users_check_is_off_by_default(table: Any, marketplace: tuple[FakeYClients, str],
                                                 fake: FakeYClients, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _load(table, marketplace, monkeypatch)
    assert _get(module, _query(fake, 101))["statusCode"] == 302
    assert not [c for c in fake.calls if c["operation"] == "salon_users"]


def test_the_salon_users_check_refuses_a_user_yclients_does_not_list(
        table: Any, marketplace: tuple[FakeYClients, str], fake: FakeYClients,
        monkeypatch: pytest.MonkeyPatch) -> None:
    module = _load(table, marketplace, monkeypatch, YCLIENTS_CHECK_SALON_USERS="true")
    # The owner of 102 with 101's id: the binding alone cannot tell (101 is new), YClients' list can.
    stranger = {**_query(fake, 102), "salon_id": 101}
    response = _get(module, stranger)
    assert response["statusCode"] == 403 and "ConsentRefused" in metrics.metric_set
    assert Store(table).salons.get(101) is None  # nothing written
    assert _get(module, _query(fake, 101))["statusCode"] == 302  # the salon's own user passes
    # Where YClients does not show the users, the binding alone decides (the check is unverified).
    fake.scripts["salon_users"].append(ScriptedAnswer(status=403))
    assert _get(module, _query(fake, 102))["statusCode"] == 302
    assert "SalonUsersUnavailable" in metrics.metric_set


@pytest.mark.parametrize(("accept", "title", "back"), [
    ("en-GB,en;q=0.9", "Invalid link", "Back to YClients"),
    ("ru-RU,ru;q=0.9,en;q=0.5", "Ссылка недействительна", "Вернуться в YClients"),
    ("", "Ссылка недействительна", "Вернуться в YClients"),
])
def test_refusal_pages_speak_the_browsers_language_and_lead_back_to_yclients(
        table: Any, marketplace: tuple[FakeYClients, str], fake: FakeYClients, monkeypatch: pytest.MonkeyPatch,
        accept: str, title: str, back: str) -> None:
    module = _load(table, marketplace, monkeypatch, YCLIENTS_APP_URL="https://yclients.com/appstore/")
    query = {**_query(fake, 101), "user_data_sign": "00"}
    response = _get(module, query, {"accept-language": accept} if accept else None)
    assert response["statusCode"] == 400
    assert f"<h1>{title}</h1>" in response["body"] and back in response["body"]
    assert 'href="https://yclients.com/appstore/" target="_top"' in response["body"]


def test_the_page_is_served_in_the_browsers_language_with_both_catalogues(
        table: Any, marketplace: tuple[FakeYClients, str], monkeypatch: pytest.MonkeyPatch) -> None:
    module = _load(table, marketplace, monkeypatch)
    event = {
        "version": "2.0", "routeKey": "GET /marketplace/onboarding", "rawPath": "/marketplace/onboarding",
        "rawQueryString": "", "headers": {"accept-language": "en-US"},
        "requestContext": {"http": {"method": "GET", "path": "/marketplace/onboarding", "sourceIp": "127.0.0.1"},
                           "requestId": "r", "routeKey": "GET /marketplace/onboarding", "stage": "$default"},
        "isBase64Encoded": False,
    }
    response = module.app.resolve(event, LambdaContext(function_name="RedirectFunction", aws_request_id="r"))
    body = response["body"]
    assert '<html lang="en">' in body and "Back to YClients</a>" in body and "{{" not in body
    assert "Вернуться в YClients" in body  # the Russian catalogue rides along for the switch
    ancestors = response["headers"]["Content-Security-Policy"].split("frame-ancestors ")[1]
    assert ancestors == "https://yclients.com https://*.yclients.com https://app.alteg.io https://*.alteg.io"


# ---- salon ids: one parser, duplicates dropped after parsing ----------------------------------

def _status_checks(fake: FakeYClients) -> list[int]:
    """The salons whose app status the redirect asked YClients for, in order."""
    return [int(c["path"].split("/salon/")[1].split("/")[0]) for c in fake.calls if c["operation"] == "app_status"]


def _tokens(response: dict[str, Any]) -> list[str]:
    fragment = response["headers"]["Location"].split("#", 1)[1]
    return [value for key, value in parse_qsl(fragment) if key == "token"]


@pytest.mark.parametrize("salon_id", [
    "²",     # a superscript: isdigit() is true, int() raises (was a 503)
    "１０１",  # fullwidth 101: int() reads it
    "١٠١",   # Arabic-Indic 101
    "101²", "-101", "+101", " 101", "101 ", "1e2", "", "0", "00", str(2**53), "9" * 17,
])
def test_a_salon_id_that_is_not_ascii_digits_in_range_gets_the_bad_salon_page(
        table: Any, marketplace: tuple[FakeYClients, str], fake: FakeYClients, monkeypatch: pytest.MonkeyPatch,
        salon_id: str) -> None:
    module = _load(table, marketplace, monkeypatch)
    query = {**fake.signed_user_data(fake.salons[101]), "salon_id": salon_id}
    response = _get(module, query, {"accept-language": "en"})
    assert response["statusCode"] == 400
    assert "<h1>Wrong salon number</h1>" in response["body"]
    assert fake.calls == [] and Store(table).salons.get(101) is None  # nothing asked, nothing written


def test_one_bad_location_among_good_ones_refuses_the_whole_redirect(
        table: Any, marketplace: tuple[FakeYClients, str], fake: FakeYClients,
        monkeypatch: pytest.MonkeyPatch) -> None:
    module = _load(table, marketplace, monkeypatch)
    query = [("salon_ids[]", "101"), ("salon_ids[]", "１０２"), *fake.signed_user_data(fake.salons[101]).items()]
    assert _get(module, query)["statusCode"] == 400
    assert fake.calls == []


@pytest.mark.parametrize("ids", [
    [("salon_ids[]", "101"), ("salon_ids[]", "0101"), ("salon_id", "00101")],
    [("salon_id", "101"), ("salon_id", "101")],
    [("salon_ids[0]", "000000000000101"), ("salon_ids[1]", "101")],
])
def test_leading_zeros_and_repeats_are_one_salon_and_one_token(
        table: Any, marketplace: tuple[FakeYClients, str], fake: FakeYClients, monkeypatch: pytest.MonkeyPatch,
        ids: list[tuple[str, str]]) -> None:
    module = _load(table, marketplace, monkeypatch)
    response = _get(module, [*ids, *fake.signed_user_data(fake.salons[101]).items()])
    assert response["statusCode"] == 302
    [token] = _tokens(response)
    assert verify_token(token, "j" * 40) == 101
    assert _status_checks(fake) == [101]


def test_duplicates_are_dropped_after_parsing_in_order_before_the_locations_limit(
        table: Any, marketplace: tuple[FakeYClients, str], fake: FakeYClients,
        monkeypatch: pytest.MonkeyPatch) -> None:
    module = _load(table, marketplace, monkeypatch)
    # Eleven values but two salons (each under several spellings): within the limit of ten.
    ids = [("salon_ids[]", "0" * n + "102") for n in range(6)] + [("salon_ids[]", "0" * n + "101") for n in range(5)]
    response = _get(module, [*ids, *fake.signed_user_data(fake.salons[101]).items()])
    assert response["statusCode"] == 302
    assert [verify_token(t, "j" * 40) for t in _tokens(response)] == [102, 101]
    assert _status_checks(fake) == [102, 101]
    # Eleven distinct salons are still too many.
    many = [("salon_ids[]", str(200 + n)) for n in range(11)]
    assert _get(module, [*many, *fake.signed_user_data(fake.salons[101]).items()])["statusCode"] == 400


@pytest.fixture
def redirect_module(table: Any, marketplace: tuple[FakeYClients, str], monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return _load(table, marketplace, monkeypatch)


# Fixtures are set up once per test, not per example: `_salon_ids` reads only its argument.
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.one_of(
    st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=6),
    st.integers(min_value=0, max_value=2**54).map(str),
    st.tuples(st.integers(min_value=0, max_value=4), st.integers(min_value=1, max_value=999)).map(
        lambda zeros_id: "0" * zeros_id[0] + str(zeros_id[1])),
    st.text(max_size=20)), max_size=8))
def test_the_query_reads_to_distinct_canonical_ids_or_none(redirect_module: ModuleType, values: list[str]) -> None:
    ids = redirect_module._salon_ids(urlencode([("salon_ids[]", value) for value in values]))
    expected = [parse_salon_id(value) for value in values]
    if None in expected:
        assert ids is None
    else:
        assert ids == list(dict.fromkeys(expected))
        assert all(value.isascii() for value in values)


# ---- user data that is signed but unreadable ------------------------------------------------

def _signed_raw(raw: bytes) -> dict[str, str]:
    return {"user_data": base64.urlsafe_b64encode(raw).decode(), "user_data_sign": sign_user_data(raw, TOKEN)}


@pytest.mark.parametrize("raw", [
    b'{"id":5101,"name":"Lily\\udfff"}',                                 # a lone surrogate (was a 503)
    b'{"id":5101,"x":' + b"[" * 2_000 + b"]" * 2_000 + b"}",              # 2,000 deep (was a 503): too large
    b'{"id":5101,"x":' + b"[" * 1_490 + b"]" * 1_490 + b"}",              # RecursionError deep, within 4 KiB
    b'{"id":5101,"name":"' + b"x" * 3_500 + b'"}',                        # over 4 KiB once in base64
    b"[1,2,3]", b"\xff\xfe",
])
def test_signed_user_data_we_cannot_read_gets_the_bad_user_data_page(
        table: Any, marketplace: tuple[FakeYClients, str], fake: FakeYClients, monkeypatch: pytest.MonkeyPatch,
        raw: bytes) -> None:
    module = _load(table, marketplace, monkeypatch)
    response = _get(module, {"salon_id": 101, **_signed_raw(raw)}, {"accept-language": "ru"})
    assert response["statusCode"] == 400
    assert "<h1>Ссылка повреждена</h1>" in response["body"] and "RedirectRefused" in metrics.metric_set
    assert fake.calls == [] and Store(table).salons.get(101) is None


def test_a_forged_signature_still_gets_the_bad_sign_page(table: Any, marketplace: tuple[FakeYClients, str],
                                                        fake: FakeYClients, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _load(table, marketplace, monkeypatch)
    query = {"salon_id": 101, **_signed_raw(b'{"id":5101,"name":"Lily\\udfff"}'), "user_data_sign": "00"}
    response = _get(module, query, {"accept-language": "en"})
    assert response["statusCode"] == 400 and "<h1>Invalid link</h1>" in response["body"]


def test_a_name_with_an_escaped_surrogate_pair_is_stored_as_utf8(
        table: Any, marketplace: tuple[FakeYClients, str], fake: FakeYClients,
        monkeypatch: pytest.MonkeyPatch) -> None:
    module = _load(table, marketplace, monkeypatch)
    raw = b'{"id":5101,"name":"Lily \\ud83c\\udf38","salon_name":"\\u041b\\u043e\\u0442\\u043e\\u0441"}'
    assert _get(module, {"salon_id": 101, **_signed_raw(raw)})["statusCode"] == 302
    salon = Store(table).salons.get(101)
    assert salon is not None and salon.user_name == "Lily \U0001f338"
    salon.user_name.encode("utf-8")


def test_a_redirect_reads_each_salon_once(table: Any, marketplace: tuple[FakeYClients, str], fake: FakeYClients,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The consent's checks and writes share one read of the salon's state item: a new salon, a
    repeat visit while linking, and a salon bound on its first consent."""
    module = _load(table, marketplace, monkeypatch)
    state_reads: list[str] = []

    def count(params: dict[str, Any], **_: Any) -> None:
        if params.get("Key", {}).get("sk") == "STATE":
            state_reads.append(params["Key"]["pk"])

    open_store.cache_clear()  # the handler's store is made again, with the counting hook on its client
    boto3.DEFAULT_SESSION._session.get_component("event_emitter").register(  # type: ignore[union-attr]
        "provide-client-params.dynamodb.GetItem", count, unique_id="count-state-reads")
    try:
        for _visit in range(2):
            state_reads.clear()
            assert _get(module, _query(fake, 101))["statusCode"] == 302
            assert state_reads == ["SALON#101"]
    finally:
        boto3.DEFAULT_SESSION._session.get_component("event_emitter").unregister(  # type: ignore[union-attr]
            "provide-client-params.dynamodb.GetItem", unique_id="count-state-reads")
        open_store.cache_clear()
