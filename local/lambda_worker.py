"""What runs inside one local "Lambda container": a worker process that loads handler modules
once (warm, like a reused container) and runs one invocation at a time.

Why processes and not threads: Lambda never runs two invocations in one interpreter, and the
handlers rely on it. Powertools' resolver keeps the current request on a class shared by every
resolver (`BaseRouter.current_event`), so two concurrent requests in one interpreter can answer
each other's: an owner could get another salon's page token. A worker process per concurrent
invocation is what Lambda does, and it also takes the handlers' CPU off the gateway's GIL.

Workers are forked from a forkserver that has already imported the heavy dependencies
(`PRELOAD`), so a new one costs milliseconds, not a fresh interpreter's second."""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from local import rate_priority

# Imported once in the forkserver (see `multiprocessing.set_forkserver_preload`): what every
# handler imports sooner or later. A missing module here only makes a new worker slower.
PRELOAD = [
    "boto3", "botocore.client", "pydantic", "pydantic_settings", "jwt", "requests",
    "aws_lambda_powertools", "aws_lambda_powertools.event_handler",
    "aws_lambda_powertools.utilities.idempotency", "aws_lambda_powertools.utilities.batch",
    "aiadmin.settings", "aiadmin.db", "aiadmin.onboarding", "aiadmin.consent", "aiadmin.push",
    "aiadmin.yclients",
]

_modules: dict[str, ModuleType] = {}


@dataclass(frozen=True)
class Target:
    """The handler an invocation runs (picklable: it crosses to the worker)."""

    function: str
    code_dir: str
    module: str
    handler: str


@dataclass
class LambdaContext:
    """The attributes of the Lambda context object that handlers and powertools read."""

    function_name: str
    aws_request_id: str
    memory_limit_in_mb: int = 256
    function_version: str = "$LATEST"
    log_group_name: str = "/aws/lambda/local"
    log_stream_name: str = "local"

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:eu-central-1:000000000000:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return 15000


class HandlerFailed(RuntimeError):
    """The handler raised: Lambda reports this as a failed invocation (API Gateway: a 500).
    The traceback went to this worker's stderr, as it would go to the function's log."""


def start_worker(environment: dict[str, str], targets: list[Target]) -> None:
    """Pool initializer: the functions' settings (as the stack resolved them when the pool was
    made; the forkserver's own environment is older), the stack's shared YClients limit (owners
    first: local.rate_priority), then every handler module, warm.
    Ctrl-C in a terminal reaches the whole process group: the stack stops its workers itself,
    so a worker ignores SIGINT rather than print a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(environment)
    rate_priority.install()
    for target in targets:
        _module(target)


def _module(target: Target) -> ModuleType:
    key = f"{target.code_dir}:{target.module}"
    if key not in _modules:
        path = Path(target.code_dir) / f"{target.module}.py"
        spec = importlib.util.spec_from_file_location(f"lambda_{Path(target.code_dir).name}_{target.module}", path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        _modules[key] = module
    return _modules[key]


def invoke(target: Target, event: dict[str, Any]) -> Any:
    """One invocation, in the worker. A handler's exception comes back as `HandlerFailed` with
    its type and message only: any exception pickles, and the details are in the log."""
    handler = getattr(_module(target), target.handler)
    try:
        return handler(event, LambdaContext(function_name=target.function, aws_request_id=str(uuid.uuid4())))
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        raise HandlerFailed(f"{type(exc).__name__}: {exc}") from None


def warm() -> int:
    """A no-op that makes the pool start a worker (and the forkserver) ahead of the first request."""
    return os.getpid()
