"""The local Lambda host runs invocations as Lambda does: never two at once in one interpreter.

Powertools' resolver keeps the current request on a class shared by every resolver
(`BaseRouter.current_event`); two concurrent requests in one interpreter read each other's.
The handler below reads the event before and after a pause: in isolated invocations both reads
are its own request."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from local.gateway import HandlerFailed, LambdaHost
from local.template import FunctionSpec, Template

HANDLER = '''
import time
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver

app = APIGatewayHttpResolver()


@app.get("/probe")
def probe():
    before = app.current_event.query_string_parameters["n"]
    time.sleep(0.3)
    return {"before": before, "after": app.current_event.query_string_parameters["n"]}


@app.get("/crash")
def crash():
    raise ValueError("boom")


def lambda_handler(event, context):
    return app.resolve(event, context)
'''


def _event(path: str, n: int) -> dict[str, object]:
    return {
        "version": "2.0", "routeKey": f"GET {path}", "rawPath": path, "rawQueryString": f"n={n}",
        "queryStringParameters": {"n": str(n)}, "headers": {}, "isBase64Encoded": False,
        "requestContext": {"http": {"method": "GET", "path": path, "sourceIp": "127.0.0.1"},
                           "stage": "$default", "requestId": str(n)},
    }


@pytest.fixture
def host(tmp_path: Path) -> Iterator[LambdaHost]:
    (tmp_path / "app.py").write_text(HANDLER)
    template = Template(resources={}, globals_env={}, http_routes=[], ws_routes={}, ws_route_selection="",
                        streams=[], functions={"Probe": FunctionSpec("Probe", tmp_path, "app", "lambda_handler")})
    host = LambdaHost(template, workers=4)
    yield host
    host.shutdown()


def test_concurrent_invocations_never_see_each_others_request(host: LambdaHost) -> None:
    async def run() -> list[dict[str, object]]:
        return list(await asyncio.gather(*(host.invoke("Probe", _event("/probe", n)) for n in range(8))))

    bodies = [r["body"] for r in asyncio.run(run())]
    assert bodies == [f'{{"before":"{n}","after":"{n}"}}' for n in range(8)]


def test_a_handler_that_raises_is_a_failed_invocation_and_the_next_one_is_served(host: LambdaHost) -> None:
    async def run() -> dict[str, object]:
        with pytest.raises(HandlerFailed, match="ValueError: boom"):
            await host.invoke("Probe", _event("/crash", 1))
        return dict(await host.invoke("Probe", _event("/probe", 2)))

    assert asyncio.run(run())["statusCode"] == 200
