"""The local Lambda host runs invocations as Lambda does: never two at once in one interpreter
(and the stream poller retries a batch as Lambda's event source mapping does).

Powertools' resolver keeps the current request on a class shared by every resolver
(`BaseRouter.current_event`); two concurrent requests in one interpreter read each other's.
The handler below reads the event before and after a pause: in isolated invocations both reads
are its own request."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local.gateway import HandlerFailed, LambdaHost, StreamPoller
from local.template import FunctionSpec, Template

HANDLER = '''
import socket
import time
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver

app = APIGatewayHttpResolver()


@app.get("/probe")
def probe():
    before = app.current_event.query_string_parameters["n"]
    time.sleep(0.3)
    return {"before": before, "after": app.current_event.query_string_parameters["n"]}


@app.get("/hold")
def hold():
    # Tells the test (on its port) that it is being served, then is held until the test
    # answers (at most 20 s).
    port = int(app.current_event.query_string_parameters["port"])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as test:
        test.sendall(b"serving")
        try:
            return {"held": test.recv(1) == b"!"}
        except TimeoutError:
            return {"held": False}


@app.get("/crash")
def crash():
    raise ValueError("boom")


def lambda_handler(event, context):
    return app.resolve(event, context)
'''


def _event(path: str, n: int, **query: str) -> dict[str, object]:
    params = {"n": str(n), **query}
    return {
        "version": "2.0", "routeKey": f"GET {path}", "rawPath": path,
        "rawQueryString": "&".join(f"{k}={v}" for k, v in params.items()),
        "queryStringParameters": params, "headers": {}, "isBase64Encoded": False,
        "requestContext": {"http": {"method": "GET", "path": path, "sourceIp": "127.0.0.1"},
                           "stage": "$default", "requestId": str(n)},
    }


@pytest.fixture
def host(tmp_path: Path) -> Iterator[LambdaHost]:
    (tmp_path / "app.py").write_text(HANDLER)
    template = Template(resources={}, globals_env={}, http_routes=[], ws_routes={}, ws_route_selection="",
                        streams=[], functions={name: FunctionSpec(name, tmp_path, "app", "lambda_handler")
                                               for name in ("Probe", "Other")})
    host = LambdaHost(template, concurrency=4)
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


def test_one_functions_busy_invocations_never_hold_another_functions(host: LambdaHost) -> None:
    """Lambda scales each function on its own: redirects waiting on YClients' rate limit must
    not hold the page's socket connects (they did when all functions shared one pool)."""

    async def run() -> tuple[dict[str, object], bool, list[str]]:
        serving: list[asyncio.StreamWriter] = []
        all_serving = asyncio.Event()

        async def served(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            serving.append(writer)
            if len(serving) == 4:
                all_serving.set()

        server = await asyncio.start_server(served, "127.0.0.1", 0)
        port = str(server.sockets[0].getsockname()[1])
        held = [asyncio.ensure_future(host.invoke("Probe", _event("/hold", n, port=port))) for n in range(4)]
        await asyncio.wait_for(all_serving.wait(), 15)  # every Probe worker busy
        other = await asyncio.wait_for(host.invoke("Other", _event("/probe", 9)), 15)
        still_held = not any(task.done() for task in held)
        for writer in serving:  # released
            writer.write(b"!")
            await writer.drain()
        bodies = [r["body"] for r in await asyncio.gather(*held)]
        server.close()
        return other, still_held, bodies

    other, still_held, bodies = asyncio.run(run())
    assert other["body"] == '{"before":"9","after":"9"}'
    assert still_held and bodies == ['{"held":true}'] * 4


class StreamHost:
    """Answers each stream invocation from a script; records the sequence numbers it was given."""

    def __init__(self, answers: list[object]) -> None:
        self.answers = answers
        self.batches: list[list[str]] = []

    async def invoke(self, function: str, event: dict[str, Any]) -> object:
        self.batches.append([r["dynamodb"]["SequenceNumber"] for r in event["Records"]])
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _stream_poller(host: StreamHost) -> StreamPoller:
    template = Template(resources={}, globals_env={}, http_routes=[], ws_routes={}, ws_route_selection="",
                        streams=[], functions={})
    return StreamPoller(template, host, retries=3)  # type: ignore[arg-type]


def _records(*sequences: str) -> list[dict[str, Any]]:
    return [{"dynamodb": {"SequenceNumber": sequence}} for sequence in sequences]


def test_the_stream_poller_retries_a_batch_from_its_first_failed_record() -> None:
    host = StreamHost([{"batchItemFailures": [{"itemIdentifier": "3"}, {"itemIdentifier": "4"}]},
                       {"batchItemFailures": []}])
    asyncio.run(_stream_poller(host).deliver("Stream", _records("1", "2", "3", "4", "5")))
    assert host.batches == [["1", "2", "3", "4", "5"], ["3", "4", "5"]]


def test_the_stream_poller_retries_a_failed_invocation_whole_then_drops_the_batch() -> None:
    host = StreamHost([HandlerFailed("boom")] * 4)
    asyncio.run(_stream_poller(host).deliver("Stream", _records("1", "2")))
    assert host.batches == [["1", "2"]] * 4  # the first try and three retries (MaximumRetryAttempts)
