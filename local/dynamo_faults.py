"""A DynamoDB fault-injection proxy for the local stack: an HTTP proxy in front of moto that,
when told, makes every DynamoDB call slow or answers it as a throttled DynamoDB would.

`python -m local --dynamodb-faults` points the handlers and the runners at this proxy
(`AWS_ENDPOINT_URL_DYNAMODB`); the stack itself (table creation) and the tests' observers go
to moto directly, so they see the truth even while the service suffers. Streams, SQS and
SSM never go through it. Controlled over HTTP on the stack's own address:

- `POST /_local/dynamodb/faults {"delay_seconds": 2, "for_seconds": 20}`: every call that
  arrives in the next 20 s is held 2 s before it reaches moto;
- `POST /_local/dynamodb/faults {"throttle": true, "for_seconds": 10}`: every call is
  answered 400 `ProvisionedThroughputExceededException` (or the `"error"` named:
  `ThrottlingException`, `RequestLimitExceeded`, or `InternalServerError`, a 500), exactly
  as DynamoDB's JSON protocol does, so botocore retries it as it would in AWS;
- `"operations": ["UpdateItem", ...]` limits a fault to those operations;
- `DELETE /_local/dynamodb/faults` ends it, `GET` shows it and what the proxy did.

Written for the job (not a library): the faults must be in the wire protocol botocore
parses, between real processes, and turned on and off while the stack runs.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

CONTROL_PATH = "/_local/dynamodb/faults"
MAX_DELAY_SECONDS = 30.0       # botocore's read timeout is 60 s: a longer hold is a different fault
MAX_FAULT_SECONDS = 600.0      # a forgotten fault ends by itself
JSON_CONTENT_TYPE = "application/x-amz-json-1.0"
# DynamoDB's own error bodies (JSON 1.0 protocol: `__type` is what botocore reads as the code).
ERRORS: dict[str, tuple[int, str, str]] = {
    "ProvisionedThroughputExceededException": (
        400, "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
        "The level of configured provisioned throughput for the table was exceeded. "
        "Consider increasing your provisioning level with the UpdateTable API."),
    "ThrottlingException": (
        400, "com.amazon.coral.availability#ThrottlingException", "Rate of requests exceeds the allowed throughput."),
    "RequestLimitExceeded": (
        400, "com.amazonaws.dynamodb.v20120810#RequestLimitExceeded",
        "Throughput exceeds the current throughput limit for your account. Please contact AWS Support at "
        "https://aws.amazon.com/support request a limit increase"),
    "InternalServerError": (500, "com.amazonaws.dynamodb.v20120810#InternalServerError", "Internal server error"),
}
# Hop-by-hop and framing headers are the proxy's own business on each side.
_NOT_FORWARDED = {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer",
                  "upgrade", "proxy-connection", "content-encoding"}

ErrorName = Literal["ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
                    "InternalServerError"]


class FaultRequest(BaseModel):
    """The body of `POST /_local/dynamodb/faults`."""

    model_config = ConfigDict(extra="forbid")

    for_seconds: float = Field(gt=0, le=MAX_FAULT_SECONDS)
    delay_seconds: float = Field(default=0.0, ge=0, le=MAX_DELAY_SECONDS)
    throttle: bool = False
    error: ErrorName = "ProvisionedThroughputExceededException"
    operations: list[str] | None = Field(default=None, max_length=50)


@dataclass(frozen=True)
class Fault:
    delay_seconds: float
    throttle: bool
    error: str
    until: float
    operations: frozenset[str] | None

    def applies(self, operation: str, now: float) -> bool:
        return now < self.until and (self.operations is None or operation in self.operations)

    def describe(self, now: float) -> dict[str, Any]:
        return {"delay_seconds": self.delay_seconds, "throttle": self.throttle, "error": self.error,
                "remaining_seconds": round(max(0.0, self.until - now), 3),
                "operations": sorted(self.operations) if self.operations is not None else None}


def error_response(name: str) -> web.Response:
    """What DynamoDB answers for `name` (with the CRC32 header botocore checks on DynamoDB bodies)."""
    status, error_type, message = ERRORS[name]
    body = ('{"__type":"%s","message":"%s"}' % (error_type, message)).encode()  # noqa: UP031
    return web.Response(status=status, body=body, headers={
        "Content-Type": JSON_CONTENT_TYPE, "x-amzn-RequestId": uuid.uuid4().hex.upper(),
        "x-amz-crc32": str(zlib.crc32(body))})


class DynamoFaults:
    """The proxy: forwards each request to `upstream` (moto), unless a fault says otherwise.
    Serves on its own thread and event loop, so the stack's gateway load never slows it."""

    def __init__(self, upstream: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.upstream = upstream.rstrip("/")
        self._clock = clock
        self._fault: Fault | None = None  # replaced whole, never mutated: safe across threads
        self.counts: Counter[str] = Counter()
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    # ---- control -------------------------------------------------------------------------

    def inject(self, request: FaultRequest) -> Fault:
        self._fault = Fault(request.delay_seconds, request.throttle, request.error,
                            self._clock() + request.for_seconds,
                            frozenset(request.operations) if request.operations is not None else None)
        self.counts["faults injected"] += 1
        return self._fault

    def clear(self) -> None:
        self._fault = None

    def current(self) -> Fault | None:
        fault = self._fault
        return fault if fault is not None and self._clock() < fault.until else None

    def control_routes(self) -> list[web.RouteDef]:
        """`/_local/dynamodb/faults` for the stack's gateway app."""
        return [web.post(CONTROL_PATH, self._post), web.get(CONTROL_PATH, self._get),
                web.delete(CONTROL_PATH, self._delete)]

    async def _post(self, request: web.Request) -> web.Response:
        try:
            body = FaultRequest.model_validate_json(await request.read())
        except ValidationError as exc:
            details = exc.errors(include_url=False, include_context=False, include_input=False)
            return web.json_response({"error": "bad fault", "details": details}, status=400)
        if not body.throttle and body.delay_seconds == 0:
            return web.json_response({"error": "bad fault: give delay_seconds > 0 or throttle: true"}, status=400)
        fault = self.inject(body)
        return web.json_response({"fault": fault.describe(self._clock())})

    async def _get(self, _request: web.Request) -> web.Response:
        fault = self.current()
        return web.json_response({"fault": fault.describe(self._clock()) if fault else None,
                                  "counts": dict(self.counts)})

    async def _delete(self, _request: web.Request) -> web.Response:
        self.clear()
        return web.json_response({"fault": None})

    # ---- the proxy -----------------------------------------------------------------------

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        target = request.headers.get("X-Amz-Target", "")
        operation = target.rsplit(".", 1)[-1] if target else request.method
        self.counts["calls"] += 1
        fault = self._fault
        if fault is not None and fault.applies(operation, self._clock()):
            if fault.delay_seconds:
                self.counts["delayed"] += 1
                await asyncio.sleep(fault.delay_seconds)
            if fault.throttle:
                self.counts["throttled"] += 1
                return error_response(fault.error)
        assert self._http is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
        try:
            async with self._http.request(request.method, self.upstream + request.path_qs, data=body,
                                          headers=headers) as upstream:
                payload = await upstream.read()
                reply = {k: v for k, v in upstream.headers.items() if k.lower() not in _NOT_FORWARDED}
                return web.Response(status=upstream.status, body=payload, headers=reply)
        except aiohttp.ClientError:
            self.counts["upstream errors"] += 1
            return error_response("InternalServerError")

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve in a background thread; returns the proxy's URL (also `self.url`)."""
        self._loop = asyncio.new_event_loop()
        started = threading.Event()

        async def serve() -> None:
            # Uncapped connections: calls held by a delay must not queue behind each other.
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                               timeout=aiohttp.ClientTimeout(total=60))
            app = web.Application(client_max_size=16 * 1024 * 1024)  # DynamoDB's own request limit
            app.router.add_route("*", "/{tail:.*}", self._forward)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, host, port)
            await site.start()
            self.url = f"http://{host}:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(serve())
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="dynamodb-faults", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the DynamoDB fault proxy did not start")
        return self.url

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return

        async def close() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            if self._http is not None:
                await self._http.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None
