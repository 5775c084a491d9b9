"""Starts the whole local stack: moto (DynamoDB and its streams, SQS), the gateway with the
handlers, the simulated WhatsApp servers, the fake YClients marketplace (unless
`YCLIENTS_BASE_URL` names another one), the runner as a separate Python process, and (unless
`--no-auto-reply`) a stand-in for AI Admin that answers clients' messages (`local.ai_admin`)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import boto3
from aiohttp import web
from moto.server import ThreadedMotoServer

from aiadmin.config import LOCAL_JWT_SECRET, LOCAL_MESSAGES_API_KEY, LOCAL_PARTNER_TOKEN
from aiadmin.observability import logger
from aiadmin.yclients import RATE_LIMIT_FILE_ENV
from local import moto_transactions
from local.ai_admin import AiAdminStandIn
from local.dynamo_faults import CONTROL_PATH, DynamoFaults
from local.fake_whatsapp import FakeWhatsApp
from local.fake_yclients import FakeYClients
from local.gateway import Gateway, LambdaHost, StreamPoller
from local.queues import INBOUND_QUEUE, create_all_queues, local_queue_url
from local.template import ROOT, create_tables, load_template, resolve_environment

# Built-in test credentials: good for this machine only, never for a real marketplace
# (aiadmin.config refuses them in Lambda and on ECS).
DEFAULT_PARTNER_TOKEN = LOCAL_PARTNER_TOKEN
DEFAULT_APP_ID = "4242"
DEFAULT_JWT_SECRET = LOCAL_JWT_SECRET
REGION = "eu-central-1"
APP_TABLE = "AppTable"  # tables are named by their logical id (local.template.create_tables)


class RemoteHostRefused(ValueError):
    """`--host` names a non-loopback address without `--allow-remote`."""


def check_host(host: str, allow_remote: bool) -> None:
    """The stack has built-in secrets and test-only endpoints (a simulated phone that links any
    salon): it listens on this machine only, unless the developer says otherwise."""
    if allow_remote or host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise RemoteHostRefused(
            f"--host {host} would let other machines reach the local stack, whose secrets are public test "
            "values and whose /_local and /_yclients endpoints link and install any salon. Use 127.0.0.1, "
            "or add --allow-remote if you really mean it.")


@dataclass
class StackOptions:
    host: str = "127.0.0.1"
    port: int = 3000
    runners: int = 1
    time_scale: float = 1.0
    data_dir: Path | None = None
    quiet: bool = False
    # Start a runner again when it exits (as ECS replaces a stopped task) instead of stopping the stack.
    restart_runners: bool = False
    # Handlers and runners reach DynamoDB through local.dynamo_faults (slow or throttled on demand).
    dynamodb_faults: bool = False
    # Listen on a non-loopback `host` (see `check_host`).
    allow_remote: bool = False
    # A stand-in for AI Admin answers every client's text message (local.ai_admin).
    auto_reply: bool = True


def messages_api_key() -> str:
    """The key the local gateway takes for the messages API (`Authorization: Bearer <key>`; in AWS
    the API takes IAM auth): `MESSAGES_API_KEY`, or the built-in local value."""
    return os.environ.get("MESSAGES_API_KEY") or LOCAL_MESSAGES_API_KEY


def serialise_dynamodb() -> None:
    """Make moto's DynamoDB calls atomic, as DynamoDB's are: moto checks a condition and writes
    without a lock, so two concurrent conditional writes (or transactions) could both pass, and
    a transaction copying a table while another thread writes it crashes. One lock for every
    table call of the server's threads; idempotent. Transactions first become two-phase
    (`local.moto_transactions`: moto's own copies the whole table per item, seconds under load)."""
    from moto.dynamodb.models import DynamoDBBackend

    moto_transactions.install()

    lock = threading.RLock()
    for name in ("get_item", "put_item", "update_item", "delete_item", "query", "scan", "transact_write_items"):
        method = getattr(DynamoDBBackend, name)
        if getattr(method, "_serialised", False):
            continue

        def locked(self: Any, *args: Any, _method: Any = method, **kwargs: Any) -> Any:
            with lock:
                return _method(self, *args, **kwargs)

        locked._serialised = True  # type: ignore[attr-defined]
        setattr(DynamoDBBackend, name, locked)


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _aws_environment(moto_url: str, dynamodb_url: str | None = None) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL_DYNAMODB": dynamodb_url or moto_url, "AWS_ENDPOINT_URL_DYNAMODB_STREAMS": moto_url,
        "AWS_ENDPOINT_URL_SQS": moto_url, "AWS_ENDPOINT_URL_SSM": moto_url,
        "POWERTOOLS_TRACE_DISABLED": "true",
    }


def stack_settings(moto_url: str, base: str, dynamodb_url: str | None = None) -> dict[str, str]:
    """Settings every process of the stack shares: the handlers (in the stack's process) and
    the runners. `dynamodb_url`: the fault proxy, when there is one."""
    return {
        **_aws_environment(moto_url, dynamodb_url),
        "YCLIENTS_BASE_URL": os.environ.get("YCLIENTS_BASE_URL") or f"{base}{FakeYClients.prefix}",
        "YCLIENTS_APP_ID": os.environ.get("YCLIENTS_APP_ID", DEFAULT_APP_ID),
        "YCLIENTS_PARTNER_TOKEN": os.environ.get("YCLIENTS_PARTNER_TOKEN", DEFAULT_PARTNER_TOKEN),
        "JWT_SECRET": os.environ.get("JWT_SECRET", DEFAULT_JWT_SECRET),
        "WEBSOCKET_URL": base.replace("http://", "ws://") + "/ws",
        "WEBSOCKET_MANAGEMENT_URL": base,
        "PUBLIC_BASE_URL": base,
        # "Back to YClients" leads to the fake marketplace (or the one YCLIENTS_BASE_URL names).
        "YCLIENTS_APP_URL": os.environ.get("YCLIENTS_APP_URL")
        or (os.environ.get("YCLIENTS_BASE_URL") or f"{base}{FakeYClients.prefix}") + "/",
        # Local test pages on any port may frame the owner's page, as YClients does (never in AWS).
        "PAGE_LOCAL_FRAME_ANCESTORS": "http://127.0.0.1:* http://localhost:*",
        "POWERTOOLS_LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
        # EMF metric lines are for CloudWatch; locally they only drown the output.
        "POWERTOOLS_METRICS_DISABLED": os.environ.get("POWERTOOLS_METRICS_DISABLED", "true"),
    }


def rate_limit_file(data_dir: Path) -> Path:
    """YClients' limit is per address: every process of the stack calls from this machine's, so
    they share one limiter through this file (see aiadmin.yclients.process_limiter), owners first
    (local.rate_priority)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir / "yclients-rate-limit.sqlite"


def runner_environment(moto_url: str, base: str, data_dir: Path, time_scale: float,
                       dynamodb_url: str | None = None, inbound_queue_url: str | None = None) -> dict[str, str]:
    """The environment of the stack's runner processes (the benchmark starts its own runners
    against a running stack with it too). `inbound_queue_url`: the stack's inbound queue (by
    default where moto serves it)."""
    environment = {
        **os.environ, **stack_settings(moto_url, base, dynamodb_url),
        "TABLE_NAME": APP_TABLE,
        "INBOUND_QUEUE_URL": inbound_queue_url or local_queue_url(moto_url, INBOUND_QUEUE),
        "WA_ENGINE": "simulated", "WA_SIM_SERVER_URL": base, "WA_TIME_SCALE": str(time_scale),
        "SESSIONS_DIR": str(data_dir / "sessions"),
        RATE_LIMIT_FILE_ENV: str(rate_limit_file(data_dir)),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "layers" / "common"), os.environ.get("PYTHONPATH", "")]),
    }
    # As in AWS, the runner never holds the onboarding-token secret: it issues and checks no token.
    for name in ("JWT_SECRET", "JWT_SECRET_PARAM"):
        environment.pop(name, None)
    return environment


def start_runner(runner_id: str, environment: dict[str, str],
                 output: IO[bytes] | None = None) -> subprocess.Popen[bytes]:
    heartbeat = Path(environment["SESSIONS_DIR"]).parent / f"{runner_id}.heartbeat"
    # The runner's own entry point, with the stack's shared YClients limit (local.wa_runner_main).
    process = subprocess.Popen([sys.executable, "-m", "local.wa_runner_main"], cwd=ROOT,
                               stdout=output, stderr=output,
                               env={**environment, "RUNNER_ID": runner_id, "RUNNER_HEARTBEAT_FILE": str(heartbeat)})
    print(f"LOCAL_RUNNER {runner_id} {process.pid}", flush=True)
    return process


async def run_stack(options: StackOptions) -> None:
    check_host(options.host, options.allow_remote)
    template = load_template()
    moto_port = free_port(options.host)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per moto call drowns the output
    serialise_dynamodb()
    moto = ThreadedMotoServer(ip_address=options.host, port=moto_port, verbose=False)
    moto.start()
    moto_url = f"http://{options.host}:{moto_port}"
    os.environ.update(_aws_environment(moto_url))
    table_names = create_tables(boto3.client("dynamodb"), template)
    resource_names = {**table_names, **create_all_queues(boto3.client("sqs"), template)}
    inbound_queue_url = resource_names[INBOUND_QUEUE]
    faults = DynamoFaults(moto_url) if options.dynamodb_faults else None
    dynamodb_url = faults.start(options.host) if faults else None
    os.environ.update(_aws_environment(moto_url, dynamodb_url))  # tables are made: the service goes via the proxy

    host = LambdaHost(template)
    api_key = messages_api_key()
    gateway = Gateway(template, host, api_key=api_key)
    whatsapp = FakeWhatsApp(time_scale=options.time_scale)
    external_marketplace = os.environ.get("YCLIENTS_BASE_URL")
    partner_token = os.environ.get("YCLIENTS_PARTNER_TOKEN", DEFAULT_PARTNER_TOKEN)
    app_id = os.environ.get("YCLIENTS_APP_ID", DEFAULT_APP_ID)
    marketplace = FakeYClients(partner_token=partner_token, application_id=int(app_id) if app_id.isdigit() else 0)

    app = web.Application(client_max_size=1024 * 1024)
    app.add_routes(gateway.routes())
    app.add_routes(whatsapp.routes())
    if not external_marketplace:
        app.add_routes(marketplace.routes())
    if faults:
        app.add_routes(faults.control_routes())

    async def index(_request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(marketplace.prefix + "/")

    app.router.add_get("/", index)

    async def describe(_request: web.Request) -> web.StreamResponse:
        # For `python -m ops --local`: where this stack keeps its data (names only, no secret).
        return web.json_response({"moto_url": moto_url, "table_name": table_names["AppTable"]})

    app.router.add_get("/_local/stack", describe)
    app.router.add_route("*", "/{tail:.*}", gateway.http)
    site_runner = web.AppRunner(app, access_log=None)
    await site_runner.setup()
    site = web.TCPSite(site_runner, options.host, options.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://{options.host}:{port}"
    marketplace.redirect_url = f"{base}/auth/yclients/redirect"
    marketplace.callback_url = f"{base}/callback/yclients"

    data_dir = options.data_dir or Path(tempfile.mkdtemp(prefix="aiadmin-local-"))
    overrides = {**stack_settings(moto_url, base, dynamodb_url), RATE_LIMIT_FILE_ENV: str(rate_limit_file(data_dir)),
                 "INBOUND_QUEUE_URL": inbound_queue_url}
    function_env: dict[str, str] = {}
    for spec in template.functions.values():
        function_env.update(resolve_environment({**template.globals_env, **spec.environment}, overrides,
                                                resource_names))
    os.environ.update(function_env)  # the handlers' workers take their settings from here
    host.start()
    logger.setLevel(overrides["POWERTOOLS_LOG_LEVEL"])  # created at import, before the overrides

    runner_env = runner_environment(moto_url, base, data_dir, options.time_scale, dynamodb_url, inbound_queue_url)
    runners = {f"local-runner-{index + 1}": start_runner(f"local-runner-{index + 1}", runner_env)
               for index in range(options.runners)}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    poller = asyncio.create_task(StreamPoller(template, host).run(stop))
    ai_admin = (asyncio.create_task(AiAdminStandIn(boto3.client("sqs"), inbound_queue_url, base, api_key).run(stop))
                if options.auto_reply else None)

    stand_in = "answers every client's text message (--no-auto-reply: off)" if ai_admin else "off"
    faults_line = (f"  DynamoDB faults:        POST {base}{CONTROL_PATH} {{\"delay_seconds\": 2, \"for_seconds\": 20}}"
                   f" (handlers and runners call DynamoDB through {dynamodb_url})\n" if faults else "")
    print(
        "\nAI Admin local stack is ready.\n"
        f"  Start here (fake YClients marketplace): {base}/_yclients/\n"
        f"  Registration redirect:  {base}/auth/yclients/redirect\n"
        f"  Onboarding page:        {base}/marketplace/onboarding\n"
        f"  WebSocket API:          ws://{options.host}:{port}/ws\n"
        f"  Simulated phone:        POST {base}/_local/whatsapp/scan {{\"qr\": \"<decoded QR>\"}}\n"
        f"  DynamoDB (moto):        {moto_url}\n"
        f"{faults_line}"
        f"  Messages API (AI Admin): Authorization: Bearer {api_key} (in AWS: IAM, SigV4)\n"
        f"    curl -X POST {base}/salons/<salon id>/messages -H 'Authorization: Bearer {api_key}' \\\n"
        "      -H 'Content-Type: application/json' -d '{\"id\": \"hello-1\", \"to\": \"+79001112233\", "
        "\"text\": \"Здравствуйте!\"}'\n"
        f"    curl {base}/salons/<salon id>/messages/hello-1 -H 'Authorization: Bearer {api_key}'\n"
        f"  Inbound queue (FIFO):   {inbound_queue_url}\n"
        f"  AI Admin stand-in:      {stand_in}\n"
        f"  A client writes to a linked salon, then reads what it received:\n"
        f"    curl -X POST {base}/_local/whatsapp/client-message -d '{{\"salon_id\": <salon id>, "
        "\"from\": \"79001112233\", \"text\": \"Можно записаться?\"}'\n"
        f"    curl '{base}/_local/whatsapp/client-inbox?phone=79001112233'\n"
        f"  Marketplace in use:     {overrides['YCLIENTS_BASE_URL']}\n"
        "Press Ctrl-C to stop.\n"
        f"LOCAL_STACK_DYNAMODB {moto_url}\n"
        f"LOCAL_STACK_INBOUND_QUEUE {inbound_queue_url}\n"
        f"LOCAL_STACK_READY {base}",
        flush=True,
    )
    try:
        alive = set(runners)
        while not stop.is_set():
            for runner_id in sorted(alive):
                if runners[runner_id].poll() is not None and options.restart_runners and not stop.is_set():
                    # As ECS would: a runner that exits is started again.
                    print(f"runner {runner_id} exited with {runners[runner_id].returncode}; starting it again",
                          file=sys.stderr)
                    runners[runner_id] = start_runner(runner_id, runner_env)
                elif runners[runner_id].poll() is not None:
                    # With several runners the others take over its sessions (as in AWS);
                    # when the last one is gone there is nothing left to run them.
                    print(f"runner {runner_id} exited with {runners[runner_id].returncode}", file=sys.stderr)
                    alive.discard(runner_id)
                    if not alive:
                        print("no runner left; stopping the stack", file=sys.stderr)
                        stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        print("Stopping the local stack...", flush=True)
        for process in runners.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in runners.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        poller.cancel()
        if ai_admin is not None:
            ai_admin.cancel()
        await site_runner.cleanup()
        host.shutdown()
        if faults:
            faults.stop()
        moto.stop()
        print("Stopped.", flush=True)
