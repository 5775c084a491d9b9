"""The stream consumer pushes state changes made outside the runner, but never one that is
already outdated: the stream lags, and the runner may have moved the salon on (and pushed
that) before the record of the older change is read. A record that fails is reported alone
(ReportBatchItemFailures): the others of its batch are pushed."""

from __future__ import annotations

import importlib.util
import time
import uuid
from types import ModuleType
from typing import Any

import pytest
from boto3.dynamodb.types import TypeSerializer
from moto.apigatewaymanagementapi.models import apigatewaymanagementapi_backends
from moto.core import DEFAULT_ACCOUNT_ID

from aiadmin.db import Store
from aiadmin.db.transitions import Transition
from aiadmin.lifecycle import apply_lifecycle_event
from aiadmin.push import Pusher
from aiadmin.states import SalonState
from local.gateway import LambdaContext
from local.template import ROOT

REGION = "eu-central-1"


@pytest.fixture
def state_stream(table: Any, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("TABLE_NAME", table.name)
    monkeypatch.setenv("WEBSOCKET_MANAGEMENT_URL", f"https://abc123.execute-api.{REGION}.amazonaws.com/prod")
    # The stream function has no onboarding-token secret (nor the right to read it).
    monkeypatch.delenv("JWT_SECRET", raising=False)
    spec = importlib.util.spec_from_file_location("state_stream_under_test",
                                                  ROOT / "functions" / "state_stream" / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(table: Any, salon_id: int, sequence: str = "1") -> dict[str, Any]:
    """The stream record of the salon's STATE item as it is now."""
    item = table.get_item(Key={"pk": f"SALON#{salon_id}", "sk": "STATE"})["Item"]
    image = {key: TypeSerializer().serialize(value) for key, value in item.items()}
    return {"eventName": "MODIFY", "eventSource": "aws:dynamodb",
            "dynamodb": {"NewImage": image, "SequenceNumber": sequence}}


def _pushed(connection_id: str) -> bytes:
    return apigatewaymanagementapi_backends[DEFAULT_ACCOUNT_ID][REGION].connections[connection_id].data


def test_an_outdated_change_is_not_pushed_over_a_newer_one(state_stream: ModuleType, store: Store, table: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[str] = []  # moto forgets what a closed connection received: recorded instead
    monkeypatch.setattr(Pusher, "close", lambda _self, connection_id: closed.append(connection_id))
    context = LambdaContext(function_name="StateStreamFunction", aws_request_id=str(uuid.uuid4()))
    store.connections.add("page-1", 7, token_exp=time.time() + 1800)
    store.transitions.apply(Transition(7, SalonState.PENDING_WHATSAPP, actor="redirect"))
    consent = _record(table, 7)
    store.transitions.apply(Transition(
        7, SalonState.QR_READY, actor="runner", attrs={"qr": "code"}))  # pushed by the runner
    assert state_stream.lambda_handler({"Records": [consent]}, context) == {"batchItemFailures": []}
    assert _pushed("page-1") == b""
    assert apply_lifecycle_event(store, 7, "uninstall") == "uninstalled"
    state_stream.lambda_handler({"Records": [consent, _record(table, 7, "2")]}, context)
    assert b'"state":"uninstalled"' in _pushed("page-1") and b"pending_whatsapp" not in _pushed("page-1")
    # The uninstall ended the consent: its page got that state last, and was closed and forgotten.
    assert closed == ["page-1"] and store.connections.ids_of(7) == []


def test_a_record_that_fails_is_reported_alone_and_the_others_are_pushed(
        state_stream: ModuleType, store: Store, table: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Pusher, "close", lambda _self, connection_id: None)
    for salon_id, page in ((7, "page-7"), (8, "page-8")):
        store.connections.add(page, salon_id, token_exp=time.time() + 1800)
        store.transitions.apply(Transition(salon_id, SalonState.PENDING_WHATSAPP, actor="redirect"))
        store.transitions.apply(Transition(salon_id, SalonState.UNINSTALLED, actor="yclients"))
    broken = {"eventName": "MODIFY", "eventSource": "aws:dynamodb",
              "dynamodb": {"NewImage": {"pk": {"S": "SALON#not-a-number"}, "sk": {"S": "STATE"}},
                           "SequenceNumber": "2"}}
    context = LambdaContext(function_name="StateStreamFunction", aws_request_id=str(uuid.uuid4()))
    answer = state_stream.lambda_handler({"Records": [_record(table, 7, "1"), broken, _record(table, 8, "3")]},
                                         context)
    assert answer == {"batchItemFailures": [{"itemIdentifier": "2"}]}
    assert b'"state":"uninstalled"' in _pushed("page-7") and b'"state":"uninstalled"' in _pushed("page-8")
