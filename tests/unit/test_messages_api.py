"""The messages API handler in-process (moto table from template.yaml): 202 and the same answer for
a replay, the status read, and every refusal a 4xx with an error code that writes nothing."""

from __future__ import annotations

import base64
import importlib.util
import json
import time
import uuid
from types import ModuleType
from typing import Any

import pytest
from boto3.dynamodb.conditions import Key

from aiadmin.config import LOCAL_MESSAGES_API_KEY, SettingsError
from aiadmin.db import Store
from aiadmin.models import Salon
from aiadmin.settings import MessagesSettings
from aiadmin.states import SalonState
from local.gateway import LambdaContext
from local.template import ROOT

SALON = 1711
OUTBOX_MAX = 3
BODY = {"id": "reply-1", "to": "+79001112233", "text": "Здравствуйте! Ждём вас завтра в 12:00."}


@pytest.fixture
def api(table: Any, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("TABLE_NAME", table.name)
    monkeypatch.setenv("MESSAGES_OUTBOX_MAX", str(OUTBOX_MAX))
    spec = importlib.util.spec_from_file_location(f"messages_under_test_{uuid.uuid4().hex}",
                                                  ROOT / "functions" / "messages" / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _active(store: Store, salon_id: int = SALON, state: SalonState = SalonState.ACTIVE, linked: bool = True) -> None:
    store.salons.put(Salon(salon_id=salon_id, state=state, version=6, updated_at=time.time()))
    if linked:
        store.sessions.request(salon_id, "run")


def _call(module: ModuleType, method: str, path: str, body: str | bytes | dict[str, Any] | None = None,
          ) -> tuple[int, dict[str, Any], dict[str, str]]:
    if isinstance(body, dict):
        body = json.dumps(body)
    encoded = isinstance(body, bytes)
    event: dict[str, Any] = {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
        "headers": {"content-type": "application/json"},
        "requestContext": {"http": {"method": method, "path": path, "sourceIp": "127.0.0.1"},
                           "requestId": "r", "routeKey": "$default", "stage": "$default"},
        "isBase64Encoded": encoded,
    }
    if body is not None:
        event["body"] = base64.b64encode(body).decode() if encoded else body  # type: ignore[arg-type]
    result = module.lambda_handler(event, LambdaContext(function_name="MessagesFunction",
                                                         aws_request_id=str(uuid.uuid4())))
    return int(result["statusCode"]), json.loads(result["body"]), result.get("headers") or {}


def _salon_items(table: Any, salon_id: int = SALON) -> list[dict[str, Any]]:
    return table.query(KeyConditionExpression=Key("pk").eq(f"SALON#{salon_id}"), ConsistentRead=True)["Items"]


def _post(module: ModuleType, body: Any, salon: int | str = SALON) -> tuple[int, dict[str, Any], dict[str, str]]:
    return _call(module, "POST", f"/salons/{salon}/messages", body)


def test_a_message_is_accepted_and_its_status_read(api: ModuleType, store: Store) -> None:
    _active(store)
    status, body, _ = _post(api, BODY)
    assert status == 202
    assert body["id"] == "reply-1" and body["status"] == "queued" and body["salon_id"] == SALON
    assert body["to"] == "+79001112233" and body["status_url"] == f"/salons/{SALON}/messages/reply-1"
    assert "text" not in body  # the status never echoes the text
    got_status, got, _ = _call(api, "GET", body["status_url"])
    assert got_status == 200 and got == body
    lease = store.sessions.get(SALON)
    assert lease is not None and lease.queued == 1


def test_a_replay_gets_the_same_answer_and_writes_nothing(api: ModuleType, store: Store, table: Any) -> None:
    _active(store)
    first = _post(api, BODY)
    before = _salon_items(table)
    assert _post(api, BODY)[:2] == first[:2]
    assert _salon_items(table) == before


def test_the_same_id_with_another_text_is_refused(api: ModuleType, store: Store, table: Any) -> None:
    _active(store)
    _post(api, BODY)
    before = _salon_items(table)
    assert _post(api, {**BODY, "text": "другое"})[:2] == (409, {"error": "id_reused"})
    assert _salon_items(table) == before


@pytest.mark.parametrize(("body", "field"), [
    ({**BODY, "to": "89001112233"}, "to"),
    ({**BODY, "to": "+7 900 111-22-33"}, "to"),
    ({**BODY, "text": ""}, "text"),
    ({**BODY, "text": "   "}, "text"),
    ({**BODY, "text": "x" * 4097}, "text"),
    ({**BODY, "id": "bad id with spaces"}, "id"),
    ({**BODY, "id": "x" * 65}, "id"),
    ({"to": BODY["to"], "text": BODY["text"]}, "id"),
    ({"id": "a", "text": "b"}, "to"),
    ({**BODY, "priority": "high"}, "priority"),
    ({**BODY, "to": 79001112233}, "to"),
])
def test_an_invalid_field_is_a_400_naming_it(api: ModuleType, store: Store, table: Any, body: dict[str, Any],
                                             field: str) -> None:
    _active(store)
    before = _salon_items(table)
    status, answer, _ = _post(api, body)
    assert status == 400 and answer["error"] == "invalid_request", answer
    assert field in [problem["field"] for problem in answer["fields"]] and field in answer["message"]
    assert "79001112233" not in json.dumps(answer) or field != "to"  # the input is not echoed
    assert _salon_items(table) == before


@pytest.mark.parametrize("body", ["", "not json", "[1, 2]", "null", "[" * 10_000, b"\xff\xfe{", '{"id": "\\ud800"}'])
def test_a_body_that_is_not_a_json_object_is_a_400(api: ModuleType, store: Store, body: str | bytes) -> None:
    _active(store)
    status, answer, _ = _post(api, body)
    assert status == 400 and answer["error"] == "invalid_request"


def test_a_body_past_the_bound_is_a_413(api: ModuleType, store: Store, table: Any) -> None:
    _active(store)
    before = _salon_items(table)
    status, answer, _ = _post(api, json.dumps({**BODY, "text": "я" * 40_000}))
    assert status == 413 and answer["error"] == "body_too_large"
    assert _salon_items(table) == before
    # The longest text, every character escaped, is still within it.
    escaped = json.dumps({**BODY, "text": "😀" * 4096}, ensure_ascii=True)
    assert _post(api, escaped)[0] == 202


@pytest.mark.parametrize("salon", ["987654", "0", "abc", "١٢", "9" * 17])
def test_an_unknown_salon_is_a_404(api: ModuleType, store: Store, salon: str) -> None:
    status, answer, _ = _post(api, BODY, salon)
    assert (status, answer) == (404, {"error": "salon_not_found"})


@pytest.mark.parametrize("state", [SalonState.QR_READY, SalonState.FROZEN, SalonState.UNINSTALLED,
                                   SalonState.WHATSAPP_LOGGED_OUT])
def test_a_salon_that_is_not_active_is_a_409_and_nothing_is_written(api: ModuleType, store: Store, table: Any,
                                                                   state: SalonState) -> None:
    _active(store, state=state)
    before = _salon_items(table)
    status, answer, _ = _post(api, BODY)
    assert (status, answer) == (409, {"error": "salon_not_active", "state": state.value})
    assert _salon_items(table) == before


def test_an_active_salon_without_a_linked_session_is_a_409(api: ModuleType, store: Store, table: Any) -> None:
    _active(store, linked=False)
    before = _salon_items(table)
    assert _post(api, BODY)[:2] == (409, {"error": "salon_not_linked"})
    assert _salon_items(table) == before


def test_a_full_outbox_is_a_429_with_retry_after(api: ModuleType, store: Store, table: Any) -> None:
    _active(store)
    for index in range(OUTBOX_MAX):
        assert _post(api, {**BODY, "id": f"m-{index}"})[0] == 202
    before = _salon_items(table)
    status, answer, headers = _post(api, {**BODY, "id": "one-too-many"})
    assert status == 429 and answer == {"error": "backlog_full", "max_queued": OUTBOX_MAX}
    assert int(headers["Retry-After"]) > 0
    assert _salon_items(table) == before
    assert _post(api, {**BODY, "id": "m-0"})[0] == 202  # a replay is still answered


def test_a_replay_after_the_salon_stopped_being_active_gets_its_status(api: ModuleType, store: Store) -> None:
    _active(store)
    assert _post(api, BODY)[0] == 202
    _active(store, state=SalonState.FROZEN, linked=False)
    assert _post(api, BODY)[0] == 202
    assert _post(api, {**BODY, "id": "new"})[:2] == (409, {"error": "salon_not_active", "state": "frozen"})


@pytest.mark.parametrize("path", [f"/salons/{SALON}/messages/unknown", f"/salons/{SALON}/messages/bad%20id",
                                  "/salons/x/messages/reply-1", f"/salons/{SALON}/messages/" + "x" * 65])
def test_an_unknown_message_is_a_404(api: ModuleType, store: Store, path: str) -> None:
    _active(store)
    _post(api, BODY)
    assert _call(api, "GET", path)[:2] == (404, {"error": "message_not_found"})


def test_another_salons_message_is_not_found(api: ModuleType, store: Store) -> None:
    _active(store)
    _active(store, SALON + 1)
    _post(api, BODY)
    assert _call(api, "GET", f"/salons/{SALON + 1}/messages/reply-1")[0] == 404


def test_the_local_api_key_is_refused_in_aws() -> None:
    local = {"TABLE_NAME": "t", "MESSAGES_API_KEY": LOCAL_MESSAGES_API_KEY}
    assert MessagesSettings.load(local).messages_api_key == LOCAL_MESSAGES_API_KEY
    assert MessagesSettings.load({"TABLE_NAME": "t"}).messages_api_key is None
    with pytest.raises(SettingsError, match="MESSAGES_API_KEY"):
        MessagesSettings.load({**local, "AWS_LAMBDA_FUNCTION_NAME": "MessagesFunction"})
    assert MessagesSettings.load({"TABLE_NAME": "t", "AWS_LAMBDA_FUNCTION_NAME": "f"}).messages_outbox_max == 500


def test_importing_the_handler_leaves_settings_store_and_models_to_first_use() -> None:
    """As tests/unit/test_cold_start.py checks the other handlers."""
    from tests.unit.test_cold_start import HEAVY, _import

    result = _import("messages", tracing=False)
    assert result["xray"] is False and result["botocore_clients"] is False
    assert result["clients"] and not any(result["clients"].values())  # type: ignore[union-attr]
    modules, first_use = set(result["modules"]), set(result["first_use"])  # type: ignore[call-overload]
    roots = {name if name.startswith("aiadmin.") else name.split(".")[0] for name in (*HEAVY, *first_use)}
    assert not roots & modules, sorted(roots & modules)
    assert "pydantic_settings" not in modules and result["built_models"] == []
