"""Runner health: the status (sessions by phase, pairings in flight) written each second to
the container health check's file and with each membership renewal to DynamoDB, and the
gauges for CloudWatch once a minute (EMF; each under the service alone, for the fleet's
alarms, and under service + RunnerId)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools.metrics import EphemeralMetrics

from aiadmin.observability import NAMESPACE, SERVICE, logger, metrics
from wa_runner.healthcheck import beat
from wa_runner.sessions import Phase

# Health metrics (EMF) once a minute: one datapoint per runner per CloudWatch period.
HEALTH_METRICS_SECONDS = 60.0


class Health:
    def __init__(self, runner_id: str) -> None:
        self.runner_id = runner_id
        # Health gauges carry the runner's id besides the service-wide dimension set.
        self._gauges = EphemeralMetrics(namespace=NAMESPACE, service=SERVICE)
        self._last_published = 0.0
        # The latest status, replaced whole (read from the membership thread).
        self.status: Mapping[str, Any] = {"sessions": 0, "phases": {}, "pairings": 0}

    def update(self, status: Mapping[str, Any], linked: int, now: float) -> None:
        """The main loop's tick: the file the health check reads, and the gauges when due."""
        self.status = dict(status)
        try:
            beat(status, at=now)
        except OSError:
            logger.exception("heartbeat file write failed")
        if now - self._last_published >= HEALTH_METRICS_SECONDS:
            self._last_published = now
            self.publish(status, linked)
        flush_metrics()

    def publish(self, status: Mapping[str, Any], linked: int) -> None:
        phases: Mapping[str, int] = status["phases"]
        gauges = self._gauges
        gauges.add_dimensions(service=SERVICE, RunnerId=self.runner_id)
        gauges.add_metric(name="RunnerHeartbeat", unit="Count", value=1)
        gauges.add_metric(name="SessionsOwned", unit="Count", value=status["sessions"])
        gauges.add_metric(name="SessionsLinked", unit="Count", value=linked)
        gauges.add_metric(name="SessionsConnected", unit="Count", value=phases.get(Phase.CONNECTED, 0))
        gauges.add_metric(name="SessionsRetrying", unit="Count", value=phases.get(Phase.RETRYING, 0))
        gauges.add_metric(name="PairingsInFlight", unit="Count", value=status["pairings"])
        try:
            gauges.flush_metrics()
        except Exception:
            logger.exception("health metrics flush failed")


def flush_metrics() -> None:
    """The event counters (SessionCrashed, LeaseLost, ...) gathered since the last flush."""
    if not metrics.metric_set:
        return
    try:
        metrics.flush_metrics(raise_on_empty_metrics=False)
    except Exception:
        logger.exception("metrics flush failed")
