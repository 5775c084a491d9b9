"""The webhook handlers in-process (moto DynamoDB and SQS): bad input is a 4xx, never a 503.
The entity webhook's salon id goes through the one parser (404 like an unknown salon); a
lifecycle or entity body nested deep enough to exhaust json.loads' recursion is a 400."""

from __future__ import annotations

import base64
import importlib.util
import json
import uuid
from types import ModuleType
from typing import Any

import boto3
import pytest

from aiadmin.db import Store
from local.gateway import LambdaContext
from local.template import ROOT

TOKEN = "partner-token-for-callback-tests"
SALON = 9203
SECRET = "webhook-secret-for-9203"


@pytest.fixture
def callback(table: Any, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    queue_url = boto3.client("sqs").create_queue(QueueName="EntityQueue")["QueueUrl"]
    for key, value in {"TABLE_NAME": table.name, "YCLIENTS_PARTNER_TOKEN": TOKEN, "YCLIENTS_APP_ID": "4242",
                       "ENTITY_QUEUE_URL": queue_url}.items():
        monkeypatch.setenv(key, value)
    Store(table).secrets.put(SALON, {"webhook_secret": SECRET, "api_key": "k"})
    spec = importlib.util.spec_from_file_location(f"callback_under_test_{uuid.uuid4().hex}",
                                                  ROOT / "functions" / "callback" / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _post(module: ModuleType, path: str, body: str | bytes) -> tuple[int, dict[str, Any]]:
    encoded = isinstance(body, bytes)
    event = {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
        "headers": {"content-type": "application/json"},
        "requestContext": {"http": {"method": "POST", "path": path, "sourceIp": "127.0.0.1"},
                           "requestId": "r", "routeKey": "$default", "stage": "$default"},
        "body": base64.b64encode(body).decode() if encoded else body, "isBase64Encoded": encoded,
    }
    result = module.lambda_handler(event, LambdaContext(function_name="CallbackFunction",
                                                         aws_request_id=str(uuid.uuid4())))
    return int(result["statusCode"]), json.loads(result["body"])


def _queued() -> int:
    sqs = boto3.client("sqs")
    url = sqs.get_queue_url(QueueName="EntityQueue")["QueueUrl"]
    return int(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
               ["Attributes"]["ApproximateNumberOfMessages"])


def _entity(company_id: int = SALON, data: Any = None) -> str:
    return json.dumps({"company_id": company_id, "resource": "record", "resource_id": 1, "status": "create",
                       "data": data})


def test_a_valid_entity_webhook_is_queued(callback: ModuleType) -> None:
    assert _post(callback, f"/webhook/yclients/{SALON}/{SECRET}", _entity()) == (200, {"success": True})
    assert _queued() == 1


@pytest.mark.parametrize("salon_id", [
    "²", "%C2%B2",             # a superscript (was a 503), as the gateway decodes it or not
    "９２０３", "٩٢٠٣",        # fullwidth and Arabic-Indic 9203: not read as the salon
    "09203", "0", "-9203", " 9203", "9" * 17, str(2**53),
])
def test_an_entity_webhook_path_without_a_salon_id_is_not_found(callback: ModuleType, salon_id: str) -> None:
    status, body = _post(callback, f"/webhook/yclients/{salon_id}/{SECRET}", _entity())
    if salon_id == "09203":  # the same salon (leading zeros read away): its secret still decides
        assert status == 200
        return
    assert (status, body) == (404, {"success": False, "message": "not found"})
    assert _queued() == 0


@pytest.mark.parametrize("depth", [300, 2_000, 50_000])
def test_a_deeply_nested_entity_body_is_a_400(callback: ModuleType, depth: int) -> None:
    """pydantic's own JSON parser (model_validate_json) stops at about 200 levels, without recursing
    in Python: a ValidationError, which the handler answers with a 400."""
    body = _entity(data=None).replace('"data": null', '"data": ' + "[" * depth + "]" * depth)
    status, answer = _post(callback, f"/webhook/yclients/{SALON}/{SECRET}", body)
    assert status == 400 and answer["success"] is False
    assert _queued() == 0


def test_an_entity_body_with_a_lone_surrogate_is_a_400(callback: ModuleType) -> None:
    body = _entity().replace('"record"', '"rec\\udfff"')
    assert _post(callback, f"/webhook/yclients/{SALON}/{SECRET}", body)[0] == 400
    assert _queued() == 0


def _lifecycle(**fields: Any) -> dict[str, Any]:
    return {"salon_id": SALON, "application_id": 4242, "event": "freeze", "partner_token": TOKEN, **fields}


@pytest.mark.parametrize("body", [
    "[" * 2_000 + "]" * 2_000,                                        # was a RecursionError, a 503
    '{"x":' * 5_000 + "1" + "}" * 5_000,
    json.dumps(_lifecycle())[:-1] + ', "x": ' + "[" * 17 + "]" * 17 + "}",  # a valid token, too deep
    json.dumps(_lifecycle(event="\udfff")),                          # a lone surrogate, escaped
    json.dumps(_lifecycle(salon_id=0)).replace('"salon_id": 0', '"salon_id": ' + "7" * 5_000),  # int() refuses
    b"\xff\xfe{}",                                                   # not UTF-8
    "", "nope",
])
def test_a_lifecycle_body_we_cannot_read_is_a_400(callback: ModuleType, table: Any, body: str | bytes) -> None:
    status, answer = _post(callback, "/callback/yclients", body)
    assert (status, answer) == (400, {"success": False, "message": "body is not JSON"})
    assert table.scan()["Count"] == 1  # the salon's secrets only: nothing written


def test_a_lifecycle_body_over_the_bound_is_a_413(callback: ModuleType) -> None:
    body = json.dumps(_lifecycle(note="x" * callback.MAX_LIFECYCLE_WEBHOOK_CHARS))
    assert _post(callback, "/callback/yclients", body)[0] == 413


def test_a_lifecycle_body_nested_within_the_bound_is_read(callback: ModuleType) -> None:
    body = json.dumps(_lifecycle(partner_token="wrong"))[:-1] + ', "x": ' + "[" * 15 + "]" * 15 + "}"
    assert _post(callback, "/callback/yclients", body)[0] == 401  # read, then refused for its token
