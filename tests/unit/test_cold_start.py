"""Cold start: a handler's import builds no AWS client and, with tracing off, never imports the
X-Ray SDK. (The import-time figures themselves come from bench/cold_start.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from aiadmin.lazy import built, lazy
from aiadmin.observability import tracer, tracing_enabled
from local.template import ROOT

ENV = {
    "TABLE_NAME": "t", "YCLIENTS_APP_ID": "4242", "YCLIENTS_PARTNER_TOKEN": "p" * 12, "JWT_SECRET": "j" * 40,
    "WEBSOCKET_URL": "wss://x.example/prod", "WEBSOCKET_MANAGEMENT_URL": "https://x.example/prod",
    "ENTITY_QUEUE_URL": "https://sqs.example/1/q", "AWS_LAMBDA_FUNCTION_NAME": "f",
}
PROBE = """
import json, sys
import app
from aiadmin.lazy import built
names = ("store", "yclients", "pusher", "entity_queue", "idempotency_store")
clients = {n: built(getattr(app, n)) for n in names if hasattr(app, n)}
print(json.dumps({"xray": "aws_xray_sdk" in sys.modules, "clients": clients,
                  "botocore_clients": "botocore.client" in sys.modules and bool(
                      [o for o in __import__("gc").get_objects() if type(o).__name__ == "DynamoDB"])}))
"""


def _import(function: str, tracing: bool) -> dict[str, object]:
    env = {**os.environ, **ENV}
    env.pop("POWERTOOLS_TRACE_DISABLED", None)
    if not tracing:
        env["POWERTOOLS_TRACE_DISABLED"] = "true"
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT / "functions" / function, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.mark.parametrize("function", ["redirect", "callback", "ws_connect", "ws_notify"])
def test_importing_a_handler_builds_no_client_and_no_xray_when_tracing_is_off(function: str) -> None:
    result = _import(function, tracing=False)
    assert result["xray"] is False
    assert result["clients"] and not any(result["clients"].values())  # type: ignore[union-attr]
    assert result["botocore_clients"] is False


def test_tracing_on_uses_powertools_tracer() -> None:
    assert _import("ws_connect", tracing=True)["xray"] is True


def test_tracing_switch_follows_powertools_rules() -> None:
    assert tracing_enabled({"AWS_LAMBDA_FUNCTION_NAME": "f"})
    assert not tracing_enabled({"AWS_LAMBDA_FUNCTION_NAME": "f", "POWERTOOLS_TRACE_DISABLED": "true"})
    assert not tracing_enabled({})  # not in Lambda (the runner, the local stack)
    assert not tracing_enabled({"AWS_LAMBDA_FUNCTION_NAME": "f", "AWS_SAM_LOCAL": "true"})


def test_with_tracing_off_the_tracer_decorates_as_usual_without_xray() -> None:
    assert "aws_xray_sdk" not in type(tracer.provider).__module__

    @tracer.capture_method(capture_response=False)
    def handler(event: object) -> str:
        return f"done {event}"

    assert handler(1) == "done 1"


def test_lazy_builds_once_on_first_use() -> None:
    calls: list[int] = []

    class Client:
        def ping(self) -> str:
            return "pong"

    def factory() -> Client:
        calls.append(1)
        return Client()

    client = lazy(factory)
    assert not built(client) and calls == []
    assert client.ping() == "pong" and client.ping() == "pong"
    assert built(client) and calls == [1]
