"""A local stand-in for API Gateway: the HTTP API, the WebSocket API and its `@connections`
management endpoint, routing to the Lambda handlers exactly as template.yaml declares.

Handlers run in worker processes, one invocation each at a time (like Lambda containers), and receive the same
event shapes API Gateway sends: HTTP API payload 2.0, WebSocket CONNECT / MESSAGE /
DISCONNECT events, and DynamoDB stream batches (see `StreamPoller`)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import multiprocessing
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import boto3
from aiohttp import WSMsgType, web

from local import lambda_worker
from local.lambda_worker import HandlerFailed, LambdaContext, Target
from local.template import HttpRoute, Template

__all__ = ["Gateway", "HandlerFailed", "LambdaContext", "LambdaHost", "StreamPoller"]

API_ID = "local"
STAGE = "$default"


class LambdaHost:
    """Runs the functions' handlers as Lambda does: each invocation in a worker process of its
    own ("container", see `local.lambda_worker` for why not threads), the handler's module
    loaded once per worker.

    Each function has its own workers, up to `concurrency` invocations at once (its Lambda
    concurrency); more wait. As in Lambda, one function's invocations never wait for
    another's: redirects held by YClients' rate limit do not hold the page's socket connects.

    `start()` makes the pools once the functions' settings are in `os.environ` (the workers
    take them from there); until then, or after a worker died, the first invocation makes its
    function's pool."""

    def __init__(self, template: Template, concurrency: int = 10) -> None:
        self._targets = {
            name: Target(name, str(spec.code_dir), spec.module, spec.handler)
            for name, spec in template.functions.items()
        }
        self._concurrency = concurrency
        self._lock = threading.Lock()
        self._pools: dict[str, ProcessPoolExecutor] = {}

    def start(self) -> None:
        """The forkserver and one warm worker per function, without waiting for them."""
        for function in self._targets:
            self._executor(function).submit(lambda_worker.warm)

    def _executor(self, function: str) -> ProcessPoolExecutor:
        with self._lock:
            pool = self._pools.get(function)
            if pool is None:
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(lambda_worker.PRELOAD)
                pool = self._pools[function] = ProcessPoolExecutor(
                    max_workers=self._concurrency, mp_context=context, initializer=lambda_worker.start_worker,
                    initargs=(dict(os.environ), [self._targets[function]]))
            return pool

    def _discard(self, function: str, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pools.get(function) is pool:
                del self._pools[function]
        pool.shutdown(wait=False, cancel_futures=True)

    async def invoke(self, function: str, event: dict[str, Any]) -> Any:
        """The handler's result; `HandlerFailed` if it raised (or its worker died: a new pool
        serves the function's next invocation, as Lambda replaces a crashed container)."""
        pool = self._executor(function)
        try:
            return await asyncio.wrap_future(pool.submit(lambda_worker.invoke, self._targets[function], event))
        except BrokenProcessPool as exc:
            self._discard(function, pool)
            raise HandlerFailed(f"the worker running {function} died") from exc

    def shutdown(self, timeout: float = 10.0) -> None:
        """No new invocations; those under way may finish (within `timeout` in all) while the
        services they call are still up: the stack stops moto after this."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        stoppers = [threading.Thread(target=pool.shutdown, kwargs={"wait": True, "cancel_futures": True}, daemon=True)
                    for pool in pools]
        for stopper in stoppers:
            stopper.start()
        deadline = time.monotonic() + timeout
        for stopper in stoppers:
            stopper.join(max(0.0, deadline - time.monotonic()))


def _route_pattern(path: str) -> re.Pattern[str]:
    regex = ""
    for part in re.split(r"(\{[^}]+\})", path):
        if part.startswith("{") and part.endswith("+}"):
            regex += f"(?P<{part[1:-2]}>.+)"
        elif part.startswith("{"):
            regex += f"(?P<{part[1:-1]}>[^/]+)"
        else:
            regex += re.escape(part)
    return re.compile(f"^{regex}$")


def iam_routes(template: Template) -> set[tuple[str, str]]:
    """The HTTP routes (method, path) that take IAM auth in AWS (`Auth: Authorizer: AWS_IAM` on the
    event, or the API's `DefaultAuthorizer` when the event names none), read from the template."""
    defaults = {name: str((res.get("Properties", {}).get("Auth") or {}).get("DefaultAuthorizer", "NONE"))
                for name, res in template.resources.items() if res.get("Type") == "AWS::Serverless::HttpApi"}
    found: set[tuple[str, str]] = set()
    for res in template.resources.values():
        if res.get("Type") != "AWS::Serverless::Function":
            continue
        for event in (res["Properties"].get("Events") or {}).values():
            if event.get("Type") != "HttpApi":
                continue
            props = event["Properties"]
            api = props.get("ApiId")
            default = defaults.get(str(api.get("Ref")) if isinstance(api, dict) else "", "NONE")
            authorizer = (props.get("Auth") or {}).get("Authorizer", default)
            if authorizer == "AWS_IAM":
                found.add((str(props["Method"]).upper(), str(props["Path"])))
    return found


def _now_fields() -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"), "requestTimeEpoch": int(now.timestamp() * 1000)}


class Gateway:
    """`api_key`: what the routes that take IAM auth in AWS (`iam_routes`) accept locally, as
    `Authorization: Bearer <key>`; without one they refuse every request. The key is checked
    here, as API Gateway checks the signature, so the handlers hold no auth code."""

    def __init__(self, template: Template, host: LambdaHost, ws_path: str = "/ws",
                 api_key: str | None = None) -> None:
        self._host = host
        self._iam_routes = iam_routes(template)
        self._api_key = api_key
        self._ws_path = ws_path
        self._ws_routes = template.ws_routes
        self._ws_selection = template.ws_route_selection
        # Literal paths win over parameterised ones, as in API Gateway.
        ordered = sorted(template.http_routes, key=lambda r: ("{" in r.path, -len(r.path)))
        self._http: list[tuple[HttpRoute, re.Pattern[str]]] = [(r, _route_pattern(r.path)) for r in ordered]
        self._sockets: dict[str, tuple[web.WebSocketResponse, float, str, str]] = {}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(self._ws_path, self.websocket),
            web.post("/@connections/{connection_id}", self.post_to_connection),
            web.delete("/@connections/{connection_id}", self.delete_connection),
            web.get("/@connections/{connection_id}", self.get_connection),
        ]

    # ---- HTTP API ----------------------------------------------------------------------

    async def http(self, request: web.Request) -> web.StreamResponse:
        for route, pattern in self._http:
            match = pattern.match(request.path)
            if match and route.method in (request.method, "ANY"):
                iam = (route.method, route.path) in self._iam_routes
                if iam and not self._authorized(request):
                    # API Gateway answers an unsigned request itself; locally: a missing or wrong key.
                    return web.json_response({"message": "Unauthorized"}, status=401,
                                             headers={"WWW-Authenticate": "Bearer"})
                event = await self._http_event(request, route, match.groupdict(), iam)
                try:
                    result = await self._host.invoke(route.function, event)
                except Exception as exc:  # a crashed Lambda is a 500 from API Gateway, logged here
                    print(f"[gateway] {route.function} raised {type(exc).__name__}: {exc}", file=sys.stderr)
                    return web.json_response({"message": "Internal Server Error"}, status=500)
                return self._http_response(result)
        return web.json_response({"message": "Not Found"}, status=404)

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if self._api_key is None or scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), self._api_key.encode())

    async def _http_event(self, request: web.Request, route: HttpRoute, params: dict[str, str],
                          iam: bool = False) -> dict[str, Any]:
        body = await request.read()
        try:
            text: str | None = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        headers: dict[str, str] = {}
        for key, value in request.headers.items():
            key = key.lower()
            if iam and key == "authorization":
                continue  # the local key stays in the gateway, as a SigV4 signature is of no use to the handler
            headers[key] = f"{headers[key]},{value}" if key in headers else value
        query: dict[str, str] = {}
        for key, value in parse_qsl(request.query_string, keep_blank_values=True):
            query[key] = f"{query[key]},{value}" if key in query else value
        route_key = f"{route.method} {route.path}"
        event: dict[str, Any] = {
            "version": "2.0",
            "routeKey": route_key,
            "rawPath": request.path,
            "rawQueryString": request.query_string,
            "headers": headers,
            "requestContext": {
                "accountId": "000000000000", "apiId": API_ID, "domainName": request.host,
                "domainPrefix": request.host.split(".")[0],
                "http": {"method": request.method, "path": request.path, "protocol": "HTTP/1.1",
                         "sourceIp": request.remote or "127.0.0.1", "userAgent": request.headers.get("User-Agent", "")},
                "requestId": secrets.token_hex(8), "routeKey": route_key, "stage": STAGE,
                "time": _now_fields()["requestTime"], "timeEpoch": _now_fields()["requestTimeEpoch"],
            },
            "isBase64Encoded": text is None,
        }
        if iam:  # as API Gateway describes the signing IAM principal (locally: the key's holder)
            event["requestContext"]["authorizer"] = {"iam": {
                "accessKey": "LOCAL", "accountId": "000000000000", "callerId": "local-ai-admin",
                "principalOrgId": None, "userArn": "arn:aws:iam::000000000000:user/local-ai-admin",
                "userId": "local-ai-admin"}}
        if request.cookies:
            event["cookies"] = [f"{k}={v}" for k, v in request.cookies.items()]
        if query:
            event["queryStringParameters"] = query
        if params:
            event["pathParameters"] = params
        if body:
            event["body"] = text if text is not None else base64.b64encode(body).decode()
        return event

    @staticmethod
    def _http_response(result: Any) -> web.Response:
        if not isinstance(result, Mapping) or "statusCode" not in result:
            return web.json_response(result)
        body = result.get("body") or ""
        raw = base64.b64decode(body) if result.get("isBase64Encoded") else str(body).encode()
        response = web.Response(status=int(result["statusCode"]), body=raw)
        for key, value in (result.get("headers") or {}).items():
            response.headers[key] = str(value)
        for key, values in (result.get("multiValueHeaders") or {}).items():
            for value in values:
                response.headers.add(key, str(value))
        for cookie in result.get("cookies") or []:
            response.headers.add("Set-Cookie", cookie)
        return response

    # ---- WebSocket API -------------------------------------------------------------------

    def _ws_event(self, request: web.Request, connection_id: str, route_key: str, event_type: str,
                  connected_at: float, **extra: Any) -> dict[str, Any]:
        context = {
            "routeKey": route_key, "eventType": event_type, "extendedRequestId": secrets.token_hex(8),
            "messageDirection": "IN", "stage": STAGE, "connectedAt": int(connected_at * 1000),
            "identity": {"sourceIp": request.remote or "127.0.0.1", "userAgent": request.headers.get("User-Agent", "")},
            "requestId": secrets.token_hex(8), "domainName": request.host, "connectionId": connection_id,
            "apiId": API_ID, **_now_fields(),
        }
        context.update(extra.pop("context", {}))
        return {"requestContext": context, "isBase64Encoded": False, **extra}

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        connection_id = base64.b64encode(secrets.token_bytes(9)).decode().replace("/", "A").replace("+", "B")
        connected_at = time.time()
        headers = {k: v for k, v in request.headers.items()}
        query = dict(parse_qsl(request.query_string, keep_blank_values=True))
        connect = self._ws_event(
            request, connection_id, "$connect", "CONNECT", connected_at,
            headers=headers, multiValueHeaders={k: [v] for k, v in headers.items()},
            queryStringParameters=query or None,
            multiValueQueryStringParameters={k: [v] for k, v in query.items()} or None,
        )
        if "$connect" in self._ws_routes:
            try:
                result = await self._host.invoke(self._ws_routes["$connect"], connect)
            except Exception as exc:
                print(f"[gateway] $connect raised {type(exc).__name__}: {exc}", file=sys.stderr)
                return web.Response(status=500)
            status = int(result.get("statusCode", 200)) if isinstance(result, Mapping) else 200
            if not 200 <= status < 300:
                return web.Response(status=status, text="Forbidden" if status == 403 else "Unauthorized")
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=128 * 1024)
        pending: set[asyncio.Task[Any]] = set()
        try:
            try:
                await ws.prepare(request)
            except ConnectionResetError:
                # The page left during the handshake (a reload), after $connect recorded the
                # connection: as API Gateway does, $disconnect still follows (below), or its
                # socket slot would stay taken for hours.
                return ws
            self._sockets[connection_id] = (ws, connected_at, request.remote or "127.0.0.1",
                                            request.headers.get("User-Agent", ""))
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                route_key = self._select_route(message.data)
                if route_key is None:
                    continue
                event = self._ws_event(request, connection_id, route_key, "MESSAGE", connected_at,
                                       body=message.data, context={"messageId": secrets.token_hex(6)})
                task = asyncio.create_task(self._host.invoke(self._ws_routes[route_key], event))
                pending.add(task)
                task.add_done_callback(pending.discard)
        finally:
            self._sockets.pop(connection_id, None)
            if "$disconnect" in self._ws_routes:
                event = self._ws_event(request, connection_id, "$disconnect", "DISCONNECT", connected_at,
                                       headers=headers, multiValueHeaders={k: [v] for k, v in headers.items()},
                                       context={"disconnectStatusCode": ws.close_code or 1005,
                                                "disconnectReason": ""})
                try:
                    await self._host.invoke(self._ws_routes["$disconnect"], event)
                except Exception as exc:
                    print(f"[gateway] $disconnect raised {type(exc).__name__}: {exc}", file=sys.stderr)
        return ws

    def _select_route(self, body: str) -> str | None:
        if self._ws_selection.startswith("$request.body."):
            try:
                value: Any = json.loads(body)
                for part in self._ws_selection.removeprefix("$request.body.").split("."):
                    value = value.get(part) if isinstance(value, dict) else None
            except (ValueError, RecursionError):
                # API Gateway delivers a message it cannot select a route from to $default
                # (deeply nested JSON included); it never closes the socket for it.
                value = None
            if isinstance(value, str) and value in self._ws_routes and not value.startswith("$"):
                return value
        return "$default" if "$default" in self._ws_routes else None

    # ---- @connections management API -------------------------------------------------------

    @staticmethod
    def _gone() -> web.Response:
        return web.json_response({"message": "Gone"}, status=410, headers={"x-amzn-ErrorType": "GoneException"})

    async def post_to_connection(self, request: web.Request) -> web.Response:
        entry = self._sockets.get(request.match_info["connection_id"])
        if entry is None or entry[0].closed:
            return self._gone()
        data = await request.read()
        try:
            await entry[0].send_str(data.decode("utf-8"))
        except UnicodeDecodeError:
            await entry[0].send_bytes(data)
        except ConnectionResetError:
            return self._gone()
        return web.Response(status=200)

    async def delete_connection(self, request: web.Request) -> web.Response:
        entry = self._sockets.get(request.match_info["connection_id"])
        if entry is None:
            return self._gone()
        # API Gateway closes a deleted connection with 1000 ("Connection Closed Normally"): it
        # takes no close code, so the page learns why from the message sent before.
        await entry[0].close(code=1000)
        return web.Response(status=204)

    async def get_connection(self, request: web.Request) -> web.Response:
        entry = self._sockets.get(request.match_info["connection_id"])
        if entry is None:
            return self._gone()
        _, connected_at, source_ip, user_agent = entry
        stamp = datetime.fromtimestamp(connected_at, UTC).isoformat()
        return web.json_response({"ConnectedAt": stamp, "LastActiveAt": stamp,
                                  "Identity": {"SourceIp": source_ip, "UserAgent": user_agent}})


class StreamPoller:
    """Reads the DynamoDB stream of each table a function subscribes to (as declared in the
    template) and invokes the function with the batch, like Lambda's event source mapping: a
    batch that failed is retried, from the first record the function reported failed
    (`batchItemFailures`, ReportBatchItemFailures) or whole when the function raised, up to
    `retries` times (the template's MaximumRetryAttempts), then dropped."""

    def __init__(self, template: Template, host: LambdaHost, interval: float = 0.1, retries: int = 3) -> None:
        self._sources = template.streams
        self._host = host
        self._interval = interval
        self._retries = retries
        self._streams = boto3.client("dynamodbstreams")
        self._dynamodb = boto3.client("dynamodb")

    async def run(self, stop: asyncio.Event) -> None:
        iterators: list[tuple[str, str]] = []
        for source in self._sources:
            arn = self._dynamodb.describe_table(TableName=source.table)["Table"]["LatestStreamArn"]
            for shard in self._streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
                iterator = self._streams.get_shard_iterator(
                    StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
                iterators.append((source.function, iterator))
        while not stop.is_set():
            for index, (function, iterator) in enumerate(iterators):
                response = await asyncio.to_thread(self._streams.get_records, ShardIterator=iterator)
                iterators[index] = (function, response.get("NextShardIterator") or iterator)
                records = response.get("Records", [])
                if records:
                    await self.deliver(function, [_stream_record(r) for r in records])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)

    async def deliver(self, function: str, records: list[dict[str, Any]]) -> None:
        """One batch, retried as Lambda retries it (see the class)."""
        for _attempt in range(1 + self._retries):
            try:
                result = await self._host.invoke(function, {"Records": records})
            except Exception as exc:
                print(f"[streams] {function} raised {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            failures = result.get("batchItemFailures") if isinstance(result, Mapping) else None
            if not failures:
                return
            failed = {failure.get("itemIdentifier") for failure in failures}
            first = next((index for index, record in enumerate(records)
                          if record["dynamodb"].get("SequenceNumber") in failed), 0)
            print(f"[streams] {function} failed {len(failed)} record(s); retrying from the first", file=sys.stderr)
            records = records[first:]
        print(f"[streams] {function}: dropped {len(records)} record(s) after {self._retries} retries", file=sys.stderr)


def _stream_record(record: dict[str, Any]) -> dict[str, Any]:
    record = dict(record)
    dynamodb = dict(record.get("dynamodb", {}))
    created = dynamodb.get("ApproximateCreationDateTime")
    if isinstance(created, datetime):
        dynamodb["ApproximateCreationDateTime"] = created.timestamp()
    record["dynamodb"] = dynamodb
    record.setdefault("eventSource", "aws:dynamodb")
    record.setdefault("awsRegion", os.environ.get("AWS_DEFAULT_REGION", "eu-central-1"))
    return record
