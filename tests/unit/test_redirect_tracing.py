"""X-Ray never records the redirect's response: its `Location` carries the onboarding token.
The handler runs for real (moto table, the fake marketplace over HTTP) under a recording
tracing provider in place of X-Ray's."""

from __future__ import annotations

import contextlib
import importlib.util
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from aiadmin.observability import tracer
from local.fake_yclients import FakeSalon
from local.gateway import LambdaContext
from local.template import ROOT
from tests.helpers import fake_marketplace

TOKEN = "partner-token-for-tracing-test"


class RecordingSubsegment:
    def __init__(self, recorded: list[tuple[str, Any]]) -> None:
        self._recorded = recorded

    def put_metadata(self, key: str, value: Any, namespace: str = "") -> None:
        self._recorded.append((key, value))

    def put_annotation(self, key: str, value: Any) -> None:
        self._recorded.append((key, value))

    def add_exception(self, *args: Any, **kwargs: Any) -> None:
        self._recorded.append(("exception", args))


class RecordingProvider:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, Any]] = []

    @contextlib.contextmanager
    def in_subsegment(self, name: str) -> Iterator[RecordingSubsegment]:
        yield RecordingSubsegment(self.recorded)


@pytest.fixture
def redirect_call(table: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with fake_marketplace(TOKEN) as (fake, base_url):
        for name, value in {
            "TABLE_NAME": table.name, "YCLIENTS_BASE_URL": base_url, "YCLIENTS_APP_ID": "4242",
            "YCLIENTS_PARTNER_TOKEN": TOKEN, "JWT_SECRET": "j" * 40, "WEBSOCKET_URL": "wss://ws.example/prod",
        }.items():
            monkeypatch.setenv(name, value)
        # The decorators decide themselves, whatever the environment says.
        monkeypatch.delenv("POWERTOOLS_TRACER_CAPTURE_RESPONSE", raising=False)
        spec = importlib.util.spec_from_file_location("redirect_under_test", ROOT / "functions" / "redirect" / "app.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        salon = FakeSalon(77, "Салон", "Анна", "79001234567", status="pending")
        fake.salons[77] = salon
        fake.redirect_url = "https://api.example/auth/yclients/redirect"

        def call() -> dict[str, Any]:
            query = urlsplit(fake.signed_redirect(salon)).query
            event = {
                "version": "2.0", "routeKey": "GET /auth/yclients/redirect", "rawPath": "/auth/yclients/redirect",
                "rawQueryString": query, "headers": {}, "isBase64Encoded": False,
                "requestContext": {"http": {"method": "GET", "path": "/auth/yclients/redirect",
                                            "sourceIp": "1.2.3.4"}, "stage": "$default",
                                   "routeKey": "GET /auth/yclients/redirect", "requestId": "r"},
            }
            response: dict[str, Any] = module.lambda_handler(
                event, LambdaContext(function_name="RedirectFunction", aws_request_id=str(uuid.uuid4())))
            return response

        yield call


def test_the_redirect_response_with_its_token_is_not_recorded(redirect_call: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    provider = RecordingProvider()
    monkeypatch.setattr(tracer, "provider", provider)
    response = redirect_call()
    assert response["statusCode"] == 302
    token = response["headers"]["Location"].split("#token=", 1)[1]
    assert len(token) > 40
    assert provider.recorded, "the tracer was not called at all: the test would prove nothing"
    assert not [key for key, _ in provider.recorded if key.endswith("response")]
    assert token not in repr(provider.recorded)
