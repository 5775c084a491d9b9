"""What tests and benchmarks read of a running local stack: session owners and runner
memberships (from its DynamoDB), the simulated WhatsApp server's view of the devices, and the
runners' metrics and dropped sessions (from their output)."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import requests

from aiadmin.db import Store
from aiadmin.models import SessionLease
from local.process import RunningStack

T = TypeVar("T")


@dataclass(frozen=True)
class WhatsAppView:
    devices: dict[str, dict[str, Any]]  # session (salon id as text) -> device
    pairing_attempts: dict[str, int]
    streams_replaced: int

    def resumes(self, salon_id: int) -> int:
        return int(self.devices[str(salon_id)]["resumes"]) if str(salon_id) in self.devices else 0

    def connected(self, salon_id: int) -> bool:
        return bool(self.devices.get(str(salon_id), {}).get("connected"))


def whatsapp(stack: RunningStack) -> WhatsAppView:
    body = requests.get(stack.base_url + "/_local/whatsapp/devices", timeout=5).json()
    return WhatsAppView({d["session"]: d for d in body["devices"]}, body["pairing_attempts"],
                        body["streams_replaced"])


def store(stack: RunningStack) -> Store:
    return Store(stack.table())


def leases(stack: RunningStack, salon_ids: Iterable[int]) -> dict[int, SessionLease]:
    return store(stack).sessions.get_many(salon_ids)


def owners(stack: RunningStack, salon_ids: Iterable[int]) -> dict[int, str | None]:
    """Who owns each salon's session now: a runner whose membership (of that epoch) is live;
    None for nobody, or a dead runner (its sessions wait to be taken over)."""
    now = time.time()
    live = {(m.runner_id, m.epoch) for m in store(stack).members.all() if not m.left and m.expires > now}
    return {salon_id: lease.owner if (lease.owner, lease.owner_epoch) in live else None
            for salon_id, lease in leases(stack, salon_ids).items()}


def live_heartbeats(stack: RunningStack) -> dict[str, dict[str, Any]]:
    """The last status of each runner whose membership is live."""
    now = time.time()
    return {runner_id: beat for runner_id, beat in heartbeats(stack).items()
            if not beat["left"] and beat["expires"] > now}


def heartbeats(stack: RunningStack) -> dict[str, dict[str, Any]]:
    return {beat["runner_id"]: beat for beat in store(stack).members.heartbeats()}


@dataclass(frozen=True)
class RunnerEvents:
    metrics: Counter[str]  # EMF metric name -> sum (needs POWERTOOLS_METRICS_DISABLED=false)
    drops: Counter[str]    # "dropping session" log lines by reason (LOG_LEVEL WARNING or lower)

    @property
    def sessions_dropped(self) -> int:
        """One drop usually shows both as a `LeaseLost` metric and a log line: the larger count."""
        return max(self.metrics["LeaseLost"], sum(self.drops.values()))


def runner_events(output: Iterable[str]) -> RunnerEvents:
    """Metrics and dropped sessions from the stack's output (the runners' JSON lines)."""
    metrics: Counter[str] = Counter()
    drops: Counter[str] = Counter()
    for line in output:
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if "_aws" in record:
            for directive in record["_aws"].get("CloudWatchMetrics", []):
                for metric in directive.get("Metrics", []):
                    value = record.get(metric.get("Name"))
                    values = value if isinstance(value, list) else [value]
                    metrics[metric["Name"]] += int(sum(v for v in values if isinstance(v, (int, float))))
        elif record.get("message") == "dropping session":
            drops[str(record.get("reason"))] += 1
    return RunnerEvents(metrics, drops)


def wait_until(condition: Callable[[], T], timeout: float, interval: float = 0.1, what: str = "") -> T:
    """Poll until `condition()` is truthy; return it. TimeoutError names `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what or condition}")
        time.sleep(interval)
