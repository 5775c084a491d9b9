"""Runner health: the container health check's heartbeat file, the EMF metrics the runner
writes, and the CloudWatch alarms in template.yaml that watch them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from aiadmin.observability import NAMESPACE, SERVICE
from local.template import load_template
from wa_runner import healthcheck
from wa_runner.health import Health


def test_heartbeat_file_keeps_the_status_and_the_check_reads_its_age(tmp_path: Path) -> None:
    path = tmp_path / "heartbeat"
    assert healthcheck.main(path) == 1  # none yet
    healthcheck.beat({"sessions": 2, "phases": {"connected": 2}, "pairings": 0}, path)
    assert healthcheck.main(path) == 0
    assert healthcheck.read_status(path)["phases"] == {"connected": 2}
    path.write_text(json.dumps({"at": time.time() - healthcheck.MAX_AGE_SECONDS - 5}))
    assert healthcheck.main(path) == 1  # the main loop is stuck
    path.write_text("not json")
    assert healthcheck.main(path) == 1


def _emf_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{") and '"_aws"' in line]


def test_health_metrics_are_written_for_the_fleet_and_per_runner(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    Health("runner-7").publish({"sessions": 0, "phases": {}, "pairings": 0}, linked=0)
    [emf] = _emf_lines(capsys.readouterr().out)
    [directive] = emf["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == NAMESPACE
    assert directive["Dimensions"] == [["service"], ["service", "RunnerId"]]
    assert emf["service"] == SERVICE and emf["RunnerId"] == "runner-7"
    names = {m["Name"] for m in directive["Metrics"]}
    assert {"RunnerHeartbeat", "SessionsLinked", "SessionsConnected", "PairingsInFlight"} <= names
    assert emf["RunnerHeartbeat"] == [1.0] and emf["PairingsInFlight"] == [0.0]  # EMF values are lists


def _alarms() -> dict[str, dict[str, Any]]:
    resources = load_template().resources
    return {name: res["Properties"] for name, res in resources.items() if res["Type"] == "AWS::CloudWatch::Alarm"}


def test_alarms_tell_runner_down_from_sessions_logged_out() -> None:
    alarms = _alarms()
    down, logged_out = alarms["RunnerDownAlarm"], alarms["SessionsLoggedOutAlarm"]
    # Runner down: the heartbeat stops coming, so missing data is what raises it.
    assert down["MetricName"] == "RunnerHeartbeat" and down["TreatMissingData"] == "breaching"
    assert down["ComparisonOperator"] == "LessThanThreshold"
    # Sessions logged out: a count of logouts; no logouts (missing data) is fine.
    assert logged_out["MetricName"] == "SessionsLoggedOut" and logged_out["TreatMissingData"] == "notBreaching"
    assert logged_out["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
