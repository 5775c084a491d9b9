"""Logger, Metrics and Tracer, created once for the whole process, and the onboarding log line.

Every module imports these instead of creating its own, so one Lambda invocation (or one
runner process) writes one consistent stream of structured logs and EMF metrics.

The Tracer is powertools' only when tracing is on: constructing powertools' Tracer imports the
X-Ray SDK (about as long as importing boto3) even when POWERTOOLS_TRACE_DISABLED turns it off.
Off (that variable true, or not in Lambda, or in `sam local`), `tracer` is powertools' Tracer
with a provider that records nothing, so the X-Ray SDK is never imported."""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from aws_lambda_powertools import Logger, Metrics

SERVICE = "aiadmin-onboarding"
NAMESPACE = "AIAdmin/Onboarding"

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)

# Handlers that change nothing publish no metric; that is normal, not worth a warning per call.
warnings.filterwarnings("ignore", message="No application metrics to publish")

_TRUE = ("1", "true", "yes", "on")


def tracing_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """As powertools decides it: on in Lambda unless POWERTOOLS_TRACE_DISABLED, never in sam local."""
    env = os.environ if environ is None else environ
    if env.get("POWERTOOLS_TRACE_DISABLED", "").strip().lower() in _TRUE:
        return False
    return bool(env.get("AWS_LAMBDA_FUNCTION_NAME")) and not env.get("AWS_SAM_LOCAL")


class _NoSubsegment:
    def put_annotation(self, key: str, value: Any) -> None:
        pass

    def put_metadata(self, key: str, value: Any, namespace: str = "") -> None:
        pass

    def add_exception(self, exception: BaseException, stack: Any, remote: bool = False) -> None:
        pass


class NoProvider:
    """A tracing provider that records nothing, for powertools' Tracer with tracing off: its
    decorators then behave as always (and can be observed), without the X-Ray SDK."""

    @contextlib.contextmanager
    def in_subsegment(self, name: str | None = None, **_kwargs: Any) -> Iterator[_NoSubsegment]:
        yield _NoSubsegment()

    @contextlib.asynccontextmanager
    async def in_subsegment_async(self, name: str | None = None, **_kwargs: Any) -> AsyncIterator[_NoSubsegment]:
        yield _NoSubsegment()

    def put_annotation(self, key: str, value: Any) -> None:
        pass

    def put_metadata(self, key: str, value: Any, namespace: str = "") -> None:
        pass

    def patch(self, modules: Any) -> None:
        pass

    def patch_all(self) -> None:
        pass


def _tracer() -> Any:
    from aws_lambda_powertools import Tracer

    if tracing_enabled():
        return Tracer(service=SERVICE)

    class UntracedTracer(Tracer):
        @staticmethod
        def _disable_tracer_provider() -> None:
            """powertools switches the X-Ray SDK off here, importing it; there is none to switch off."""

    return UntracedTracer(service=SERVICE, disabled=True, auto_patch=False, provider=NoProvider())  # type: ignore[arg-type]


tracer = _tracer()

# Third-party text in a reason (WhatsApp's or YClients' error messages) could carry a phone
# number or an e-mail address: they are masked before the line is written.
_PHONE = re.compile(r"\+?\d[\d\s().-]{5,}\d")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")


def mask_personal(text: str) -> str:
    return _EMAIL.sub("<email>", _PHONE.sub("<number>", text))


def log_state_change(salon_id: int, from_state: str | None, state: str, actor: str, reason: str) -> None:
    """The one structured line per salon state change: ids, states and why, never personal data
    (no names, phones, tokens or keys: only the salon id, the states and a masked reason)."""
    logger.info("onboarding state changed", extra={
        "onboarding": True, "salon_id": salon_id, "state": state, "from_state": from_state,
        "actor": actor, "reason": mask_personal(reason)[:200],
    })
