"""`python -m ops` against the running local stack, as a process, as ops would use it (the
shared stack; salons 1701-1703)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest

from local import observe
from local.owner import follow_redirect, link_whatsapp, open_page, press_connect, receive_until
from local.process import RunningStack
from local.template import ROOT
from tests.helpers import script_marketplace

pytestmark = pytest.mark.integration


def _ops(stack: RunningStack, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_ENDPOINT", "YCLIENTS_", "TABLE_"))}
    return subprocess.run([sys.executable, "-m", "ops", "--local", stack.base_url, *args], cwd=ROOT,
                          env={**environ, **(env or {})}, capture_output=True, text=True, timeout=120)


def test_doctor_passes_against_the_local_stack(stack: RunningStack) -> None:
    observe.wait_until(lambda: observe.heartbeats(stack), 20, what="a runner heartbeat")
    done = _ops(stack, "doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for name in ("settings", "SSM parameters", "table AppTable", "WebSocket management API", "runner heartbeat",
                 "YClients"):
        assert any(line.startswith(f"ok    {name}") for line in lines), (name, done.stdout)
    assert "6/6 ok" in done.stdout


def test_doctor_names_a_refused_token_and_exits_1(stack: RunningStack) -> None:
    done = _ops(stack, "doctor", env={"YCLIENTS_PARTNER_TOKEN": "not-our-partner-token"})
    assert done.returncode == 1
    assert "FAIL  YClients:" in done.stdout and "401" in done.stdout and "-> check the partner token" in done.stdout
    assert "not-our-partner-token" not in done.stdout + done.stderr


def test_status_shows_state_events_and_the_owning_runner(stack: RunningStack) -> None:
    _, token = follow_redirect(press_connect(stack.marketplace, 1701))

    async def wait_for_qr() -> None:
        async with open_page(stack.ws_url, token) as ws:
            await receive_until(ws, {"qr_ready"}, 30)

    asyncio.run(wait_for_qr())
    done = _ops(stack, "--json", "status", "1701")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["state"] == "qr_ready"
    runner = observe.owners(stack, [1701])[1701]
    assert runner and found["session"]["runner"] == runner and found["session"]["desired"] == "link"
    assert found["session"]["runner_heartbeat_age_seconds"] < 30
    assert [e["to"] for e in found["events"]][-1] == "pending_whatsapp"  # oldest shown last
    text = _ops(stack, "status", "1701").stdout
    assert "salon 1701: qr_ready" in text and f"owner {runner}" in text and "owner consent" in text
    # Personal data stays out of the ops view too (the owner's name is on the salon record).
    owner_name = observe.store(stack).salons.get(1701).user_name  # type: ignore[union-attr]
    assert owner_name and owner_name not in text

    generation = found["session"]["generation"]
    again = _ops(stack, "new-pairing", "1701")
    assert again.returncode == 0 and "new pairing started" in again.stdout
    assert observe.leases(stack, [1701])[1701].generation == generation + 1

    unknown = _ops(stack, "status", "999001")
    assert unknown.returncode == 1 and "unknown" in unknown.stderr


def test_failed_activation_is_visible_listed_as_stuck_and_retried(stack: RunningStack) -> None:
    script_marketplace(stack, "activate", {"status": 422, "message": "Срок подключения истёк"})
    seen = asyncio.run(link_whatsapp(stack.base_url, stack.marketplace, 1702, {"activation_failed", "active"}))
    assert seen[-1]["state"] == "activation_failed"

    found = json.loads(_ops(stack, "--json", "status", "1702").stdout)
    assert found["last_activation_answer"].startswith("refused: 422")
    stuck = json.loads(_ops(stack, "--json", "stuck").stdout)
    assert {"salon_id": 1702, "state": "activation_failed"}.items() <= next(
        s for s in stuck if s["salon_id"] == 1702).items()

    # A linked salon is never re-linked from ops.
    refused = _ops(stack, "new-pairing", "1702")
    assert refused.returncode == 1 and "only its owner may link it again" in refused.stderr

    done = _ops(stack, "retry-activation", "1702")
    assert done.returncode == 0, done.stderr
    salon = observe.wait_until(lambda: (s := observe.store(stack).salons.get(1702)) and s.state == "active" and s,
                               30, what="salon 1702 active after the retry")
    assert salon.activation_error is None
    assert "activation retry requested" in [e["reason"] for e in observe.store(stack).events.of(1702)]
    not_again = _ops(stack, "retry-activation", "1702")
    assert not_again.returncode == 1 and "only activation_failed is retried" in not_again.stderr


def test_stuck_lists_a_linking_attempt_nobody_finished(stack: RunningStack) -> None:
    follow_redirect(press_connect(stack.marketplace, 1703))
    time.sleep(1.5)
    stuck = json.loads(_ops(stack, "--json", "stuck", "--minutes", "0.01").stdout)
    assert 1703 in {s["salon_id"] for s in stuck}
    assert 1703 not in {s["salon_id"] for s in json.loads(_ops(stack, "--json", "stuck").stdout)}
