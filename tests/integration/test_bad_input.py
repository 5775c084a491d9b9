"""Property-based bad input against the running stack over real HTTP and a real WebSocket:
arbitrary query strings to the redirect, arbitrary bodies and headers to both webhook
endpoints, arbitrary messages on the page's socket. Never a 5xx, never a
write for a refused request, never a secret in a response or a log line."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import string
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import boto3
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiadmin.models import parse_salon_id
from aiadmin.tokens import issue_token, verify_token
from aiadmin.yclients import MAX_USER_DATA_CHARS, MAX_USER_DATA_DEPTH, sign_user_data
from local.owner import link_whatsapp, page_tokens, press_connect
from local.process import RunningStack, local_stack
from local.stack import DEFAULT_JWT_SECRET, DEFAULT_PARTNER_TOKEN
from tests.helpers import report_stack_output_on_failure

pytestmark = pytest.mark.integration
SALON = 401
PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Probe:
    """The stack plus what must never change or leak."""

    def __init__(self, stack: RunningStack) -> None:
        self.stack = stack
        self.dynamodb = boto3.client("dynamodb", endpoint_url=stack.moto_url, region_name="eu-central-1")
        self.sqs = boto3.client("sqs", endpoint_url=stack.moto_url, region_name="eu-central-1")
        self.queue_url = self.sqs.get_queue_url(QueueName="EntityQueue")["QueueUrl"]
        [activation] = [a for a in stack.marketplace_state()["activations"] if a["salon_id"] == SALON]
        self.webhook_url: str = activation["webhook_urls"][0]
        self.secrets = [DEFAULT_PARTNER_TOKEN, DEFAULT_JWT_SECRET, activation["api_key"],
                        self.webhook_url.rsplit("/", 1)[1]]

    def snapshot(self) -> tuple[int, int]:
        items = self.dynamodb.scan(TableName="AppTable", Select="COUNT")["Count"]
        attributes = self.sqs.get_queue_attributes(QueueUrl=self.queue_url,
                                                   AttributeNames=["ApproximateNumberOfMessages"])
        return items, int(attributes["Attributes"]["ApproximateNumberOfMessages"])

    def check(self, response: requests.Response, before: tuple[int, int]) -> None:
        assert response.status_code < 500, response.text[:300]
        if response.status_code >= 400:
            assert self.snapshot() == before, "a refused request wrote something"
        for secret in self.secrets:
            assert secret not in response.text
            assert not any(secret in value for value in response.headers.values())


@pytest.fixture(scope="module")
def probe(request: pytest.FixtureRequest) -> Iterator[Probe]:
    with local_stack(time_scale=0.1, extra_env={"LOG_LEVEL": "INFO"}) as stack:
        asyncio.run(link_whatsapp(stack.base_url, stack.marketplace, SALON, {"active"}))
        yield Probe(stack)
        # Every log line the stack printed during the whole module: no secret in any of them.
        output = "".join(stack.output)
        report_stack_output_on_failure(request, stack)
        for secret in Probe(stack).secrets:
            assert secret not in output, "a secret reached the logs"


_text = st.text(max_size=80)
# Header values a client can send at all (no control characters; an HTTP server refuses those first).
_ascii_value = st.text(alphabet=string.ascii_letters + string.digits + string.punctuation + " ",
                       max_size=60).map(str.strip)
_headers = st.dictionaries(
    st.sampled_from(["X-Forwarded-For", "Content-Type", "Authorization", "X-Request-Id", "Accept", "Cookie",
                     "Content-Encoding", "X-Yclients-Signature"]),
    _ascii_value, max_size=4)
_query_key = st.one_of(st.sampled_from(["salon_id", "salon_ids[]", "salon_ids[0]", "salon_ids[1]", "user_data",
                                        "user_data_sign", "application_id"]), _text)
# Digits str.isdigit() takes but a salon id must not: superscripts, fullwidth, Arabic-Indic, ...
_unicode_digits = st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=8)
# One salon spelt with leading zeros: the same salon, never a second token.
_leading_zeros = st.tuples(st.integers(min_value=1, max_value=6), st.sampled_from([SALON, 101, 9203])).map(
    lambda zeros_id: "0" * zeros_id[0] + str(zeros_id[1]))
_query_value = st.one_of(_text, st.integers().map(str), _unicode_digits, _leading_zeros,
                         st.sampled_from(["", "101", "-1", "1e9", "0x10", "٣", "²", "１２３", "٣٠١"]))
_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=12,
)


def _raw_query(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{quote(k, safe='[]')}={quote(v, safe='')}" for k, v in pairs)


@PROPERTY
@given(pairs=st.lists(st.tuples(_query_key, _query_value), max_size=6), headers=_headers)
def test_redirect_never_fails_on_any_query(probe: Probe, pairs: list[tuple[str, str]],
                                           headers: dict[str, str]) -> None:
    before = probe.snapshot()
    response = requests.get(f"{probe.stack.base_url}/auth/yclients/redirect?{_raw_query(pairs)}",
                            headers=headers, allow_redirects=False, timeout=10)
    assert response.status_code in (400, 403), response.text[:200]
    assert "text/html" in response.headers["Content-Type"]
    probe.check(response, before)


@PROPERTY
@given(raw=st.text(alphabet=string.printable, max_size=300), headers=_headers)
def test_redirect_never_fails_on_a_raw_query_string(probe: Probe, raw: str, headers: dict[str, str]) -> None:
    before = probe.snapshot()
    response = requests.get(f"{probe.stack.base_url}/auth/yclients/redirect?{quote(raw, safe='=&[]%')}",
                            headers=headers, allow_redirects=False, timeout=10)
    probe.check(response, before)


def _signed(raw: bytes) -> dict[str, str]:
    """`user_data` and `user_data_sign` as YClients puts them in the URL: signed over the decoded bytes."""
    return {"user_data": base64.urlsafe_b64encode(raw).decode(),
            "user_data_sign": sign_user_data(raw, DEFAULT_PARTNER_TOKEN)}


def _profile_with(bad: str, where: str, ensure_ascii: bool) -> bytes:
    """An owner's profile with `bad` (holding a lone surrogate) in a field, a key or deeper: escaped
    (`\\udfff`, valid UTF-8 bytes) or raw (bytes no UTF-8 decoder takes)."""
    profile: dict[str, Any] = {"id": 5401, "name": "Лилия", "phone": "79001234567", "salon_name": "Салон"}
    if where == "key":
        profile[bad] = "x"
    elif where == "nested":
        profile["extra"] = {"list": [1, bad]}
    else:
        profile[where] = bad
    return json.dumps(profile, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


_lone_surrogate_text = st.builds(lambda before, lone, after: before + lone + after, st.text(max_size=10),
                                 st.characters(categories=["Cs"]), st.text(max_size=10))
# Signed by YClients' key, and still unreadable: each holds a lone surrogate, nests deeper than we
# read (up to what still fits in the size bound), or is over the size bound (but within a URL).
_unreadable_user_data = st.one_of(
    st.builds(_profile_with, _lone_surrogate_text, st.sampled_from(["name", "salon_name", "email", "key", "nested"]),
              st.booleans()),
    st.integers(min_value=MAX_USER_DATA_DEPTH + 1, max_value=1_490).map(
        lambda depth: b'{"id":5401,"x":' + b"[" * depth + b"]" * depth + b"}"),
    st.integers(min_value=MAX_USER_DATA_CHARS * 3 // 4, max_value=5_500).map(
        lambda size: b'{"id":5401,"name":"' + b"x" * size + b'"}'),
)


@PROPERTY
@given(raw=_unreadable_user_data, salon=st.one_of(st.just(str(SALON)), _leading_zeros, _unicode_digits),
       headers=_headers)
def test_redirect_refuses_signed_user_data_it_cannot_read(probe: Probe, raw: bytes, salon: str,
                                                          headers: dict[str, str]) -> None:
    before = probe.snapshot()
    query = _raw_query([("salon_id", salon), *_signed(raw).items()])
    response = requests.get(f"{probe.stack.base_url}/auth/yclients/redirect?{query}", headers=headers,
                            allow_redirects=False, timeout=10)
    assert response.status_code == 400, response.text[:200]
    # The salon id is read first; the user data only with one.
    title = "Неверный номер салона" if parse_salon_id(salon) is None else "Ссылка повреждена"
    assert f"<h1>{title}</h1>" in response.text
    probe.check(response, before)


_lifecycle_body = st.one_of(
    st.binary(max_size=300),
    _json_value.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({}, optional={
        "salon_id": st.one_of(st.just(SALON), st.integers(), _text),
        "application_id": st.one_of(st.just(4242), st.integers(), _text),
        "event": st.one_of(st.sampled_from(["uninstall", "freeze", "payment"]), _text, st.integers()),
        "partner_token": st.one_of(_text, st.none(), st.just(DEFAULT_PARTNER_TOKEN[:-1])),
        "sign": _text,
    }).map(lambda v: json.dumps(v).encode()),
)


@PROPERTY
@given(body=_lifecycle_body, headers=_headers)
def test_lifecycle_webhook_never_fails_and_refusals_write_nothing(probe: Probe, body: bytes,
                                                                 headers: dict[str, str]) -> None:
    before = probe.snapshot()
    response = requests.post(f"{probe.stack.base_url}/callback/yclients", data=body, headers=headers, timeout=10)
    assert response.status_code in (400, 401), response.text[:200]
    probe.check(response, before)


_entity_body = st.one_of(
    st.binary(max_size=300),
    _json_value.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({}, optional={
        "company_id": st.one_of(st.integers(), _text, st.none()),
        "resource": st.one_of(_text, st.integers()),
        "resource_id": _json_value,
        "status": st.one_of(st.sampled_from(["create", "update", "delete"]), _text),
        "data": _json_value,
    }).map(lambda v: json.dumps(v).encode()),
)


@PROPERTY
@given(body=_entity_body, headers=_headers, path=st.sampled_from(["right", "wrong secret", "other salon", "junk"]),
       junk=st.text(alphabet=string.ascii_letters + string.digits + "-_.~%", min_size=1, max_size=40))
def test_entity_webhook_never_fails_and_refusals_write_nothing(probe: Probe, body: bytes, headers: dict[str, str],
                                                               path: str, junk: str) -> None:
    base, secret = probe.webhook_url.rsplit("/", 1)
    url = {
        "right": probe.webhook_url,
        "wrong secret": f"{base}/{junk}",
        "other salon": f"{base.rsplit('/', 1)[0]}/{junk}/{secret}",
        "junk": f"{probe.stack.base_url}/webhook/yclients/{junk}/{junk}",
    }[path]
    before = probe.snapshot()
    response = requests.post(url, data=body, headers=headers, timeout=10)
    probe.check(response, before)
    if path != "right":
        assert response.status_code == 404
    if response.status_code == 200:
        # Only a valid webhook for this very salon is queued.
        parsed: Any = json.loads(body)
        assert parsed["company_id"] == SALON and parsed["status"] in ("create", "update", "delete")


# ---- socket messages (a real WebSocket to the stack) ------------------------------------------

_socket_message = st.one_of(
    st.text(max_size=200),
    _json_value.map(json.dumps),
    st.fixed_dictionaries({}, optional={
        "action": st.one_of(st.sampled_from(["sync", "new_qr", "pairing_code", "$connect", "$default", ""]),
                            _text, st.integers(), st.none(), _json_value),
        "phone": st.one_of(_text, st.integers(), st.none(),
                           st.sampled_from(["79001234567", "+7 900 123-45-67", "8 (900) 1", "+" + "9" * 30])),
    }).map(json.dumps),
)


def _domain_snapshot(probe: Probe) -> tuple[int, int]:
    """Everything but the sockets' own items (each example opens and closes a socket, and its token's
    messages are counted): item count, and the salon's state version."""
    items = probe.dynamodb.scan(TableName="AppTable")["Items"]
    domain = [i for i in items if not i["pk"]["S"].startswith(("CONN#", "TOKEN#"))
              and not i["sk"]["S"].startswith("CONN#")]
    [state] = [i for i in items if i["pk"]["S"] == f"SALON#{SALON}" and i["sk"]["S"] == "STATE"]
    return len(domain), int(state["version"]["N"])


def _open_slots(probe: Probe) -> int:
    response = probe.dynamodb.query(TableName="AppTable", KeyConditionExpression="pk = :p AND begins_with(sk, :c)",
                                    ExpressionAttributeValues={":p": {"S": f"SALON#{SALON}"}, ":c": {"S": "CONN#"}})
    return int(response["Count"])


async def _exchange(probe: Probe, token: str, messages: list[str]) -> list[str]:
    """Send the messages on a fresh socket and read one answer per message."""
    import websockets

    deadline = time.monotonic() + 10
    while True:  # the last example's $disconnect may still be freeing its slot
        try:
            ws = await websockets.connect(f"{probe.stack.ws_url}?token={token}")
            break
        except websockets.InvalidStatus as exc:
            assert exc.response.status_code == 429 and time.monotonic() < deadline
            await asyncio.sleep(0.2)
    replies: list[str] = []
    try:
        for message in messages:
            await ws.send(message)
        while len(replies) < len(messages):
            replies.append(str(await asyncio.wait_for(ws.recv(), 10)))
        # Nothing more than one answer per message.
        with contextlib.suppress(TimeoutError):
            replies.append(str(await asyncio.wait_for(ws.recv(), 0.3)))
    finally:
        await ws.close()
    return replies


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(_socket_message, min_size=1, max_size=4))
def test_socket_messages_never_fail_and_refusals_write_nothing(probe: Probe, messages: list[str]) -> None:
    """The salon is active: no message from its page may change anything; each one gets exactly
    one answer, its state or a refusal in Russian."""
    before = _domain_snapshot(probe)
    [consent] = [i["consent_id"]["S"] for i in probe.dynamodb.scan(TableName="AppTable")["Items"]
                 if i["pk"]["S"] == f"SALON#{SALON}" and i["sk"]["S"] == "STATE"]
    token = issue_token(SALON, DEFAULT_JWT_SECRET, 600, consent_id=consent)
    replies = asyncio.run(_exchange(probe, token, messages))
    assert len(replies) == len(messages), replies
    for raw in replies:
        reply = json.loads(raw)
        assert reply["type"] in ("state", "error")
        if reply["type"] == "error":
            assert reply["code"] in ("bad_request", "invalid_phone") and re.search("[а-я]", reply["message"])
        else:
            assert reply["state"] == "active" and reply["salon_id"] == SALON
        for secret in probe.secrets:
            assert secret not in raw
    deadline = time.monotonic() + 10
    while _open_slots(probe):  # the socket's own items go with its $disconnect
        assert time.monotonic() < deadline, "a closed socket kept its slot"
        time.sleep(0.1)
    assert _domain_snapshot(probe) == before


# ---- the cases of issue 15 over real HTTP ------------------------------------------------------

def _redirect(probe: Probe, query: str) -> requests.Response:
    return requests.get(f"{probe.stack.base_url}/auth/yclients/redirect?{query}", allow_redirects=False, timeout=10)


@pytest.mark.parametrize("query", [
    "salon_id=%C2%B2",                                         # "²": isdigit() true, int() raises (was a 503)
    "salon_ids[]=%C2%B2",
    "salon_id=%EF%BC%91%EF%BC%92%EF%BC%93",                    # fullwidth 123
    "salon_id=%D9%A3",                                         # Arabic-Indic 3
    f"salon_id={SALON}&salon_ids[]=%C2%B2",
])
def test_a_salon_id_that_is_no_ascii_number_is_a_400_page(probe: Probe, query: str) -> None:
    before = probe.snapshot()
    for signed in ("", "&" + _raw_query(list(_signed(b'{"id":5401,"name":"Lily"}').items()))):
        response = _redirect(probe, query + signed)
        assert response.status_code == 400 and "<h1>Неверный номер салона</h1>" in response.text
        probe.check(response, before)


@pytest.mark.parametrize("raw", [
    b'{"id":5401,"name":"Lily\\udfff"}',                                  # a lone surrogate (was a 503)
    b'{"id":5401,"name":"Lily","x":' + b"[" * 1_490 + b"]" * 1_490 + b"}",  # json.loads' RecursionError depth
    b'{"id":5401,"name":"Lily","x":' + b"[" * 2_000 + b"]" * 2_000 + b"}",  # 2,000 deep (was a 503): too large
    b'{"id":5401,"name":"' + b"x" * 4_000 + b'"}',                         # over the size bound
])
def test_signed_user_data_we_cannot_read_is_a_400_page(probe: Probe, raw: bytes) -> None:
    before = probe.snapshot()
    response = _redirect(probe, _raw_query([("salon_id", str(SALON)), *_signed(raw).items()]))
    assert response.status_code == 400 and "<h1>Ссылка повреждена</h1>" in response.text
    probe.check(response, before)


def test_an_entity_webhook_for_a_superscript_salon_is_not_found(probe: Probe) -> None:
    before = probe.snapshot()
    response = requests.post(f"{probe.stack.base_url}/webhook/yclients/%C2%B2/x",
                             json={"company_id": 2, "resource": "record", "resource_id": 1, "status": "create"},
                             timeout=10)
    assert response.status_code == 404  # as for an unknown salon (it was a 503)
    probe.check(response, before)


def test_a_deeply_nested_lifecycle_body_is_a_400(probe: Probe) -> None:
    before = probe.snapshot()
    response = requests.post(f"{probe.stack.base_url}/callback/yclients", data="[" * 5_000 + "]" * 5_000,
                             timeout=10)
    assert response.status_code == 400  # json.loads' RecursionError was a 503
    probe.check(response, before)


def test_one_salon_spelt_three_ways_gets_one_token(probe: Probe) -> None:
    """Last in the module: it onboards a new salon (the runner starts linking it), which the
    refusal tests' "nothing written" snapshots must not see."""
    salon = 9203
    pressed = urlsplit(press_connect(probe.stack.marketplace, salon))  # pending in the fake marketplace
    signed = [(key, value) for key, value in parse_qsl(pressed.query) if key.startswith("user_data")]
    query = _raw_query([("salon_ids[]", "9203"), ("salon_ids[]", "09203"), ("salon_id", "009203"), *signed])
    response = _redirect(probe, query)
    assert response.status_code == 302, response.text[:300]
    [token] = page_tokens(response)
    assert verify_token(token, DEFAULT_JWT_SECRET) == salon
    checks = requests.get(f"{probe.stack.marketplace}/_calls", params={"operation": "app_status"}, timeout=10).json()
    assert len([c for c in checks if f"/salon/{salon}/application/" in c["path"]]) == 1  # asked once
