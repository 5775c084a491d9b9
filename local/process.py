"""Starts the local stack (`python -m local`) as a separate process, on ports chosen at run
time: used by the integration and browser tests and by the benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import requests

from local.stack import APP_TABLE, REGION

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RunningStack:
    base_url: str
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)
    dynamodb_url: str = ""
    runners: dict[str, int] = field(default_factory=dict)  # runner id -> pid
    inbound_queue_url: str = ""  # the SQS FIFO queue of clients' messages (in moto_url)

    def table(self) -> Any:
        """The stack's application table (in its moto server), for tests and benchmarks."""
        return boto3.resource("dynamodb", endpoint_url=self.dynamodb_url, region_name=REGION,
                              aws_access_key_id="testing", aws_secret_access_key="testing",  # noqa: S106
                              aws_session_token="testing").Table(APP_TABLE)  # noqa: S106

    @property
    def moto_url(self) -> str:
        """The moto server (DynamoDB, its streams, SQS) behind the stack."""
        return self.dynamodb_url

    def sqs(self) -> Any:
        """An SQS client of the stack's moto server (the inbound queue)."""
        return boto3.client("sqs", endpoint_url=self.dynamodb_url, region_name=REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing",  # noqa: S106
                            aws_session_token="testing")  # noqa: S106

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/ws"

    @property
    def marketplace(self) -> str:
        return self.base_url + "/_yclients"

    def marketplace_state(self) -> dict:
        return requests.get(self.marketplace + "/_state", timeout=5).json()

    def dynamodb_fault(self, **fault: Any) -> dict[str, Any]:
        """Slow or throttle the service's DynamoDB calls (a stack started with `dynamodb_faults`):
        `dynamodb_fault(delay_seconds=2, for_seconds=20)`, `dynamodb_fault(throttle=True, for_seconds=10)`."""
        response = requests.post(self.base_url + "/_local/dynamodb/faults", json=fault, timeout=5)
        response.raise_for_status()
        return dict(response.json())

    def runner_pids(self) -> list[int]:
        """The runner processes the stack started (its `python -m wa_runner` children)."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                cmdline = (stat.parent / "cmdline").read_bytes()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == self.process.pid and b"wa_runner" in cmdline:
                pids.append(int(stat.parent.name))
        return pids


@contextmanager
def local_stack(time_scale: float = 1.0, runners: int = 1, extra_env: dict[str, str] | None = None,
                data_dir: Path | None = None, restart_runners: bool = False,
                dynamodb_faults: bool = False, auto_reply: bool = True) -> Iterator[RunningStack]:
    env = {**os.environ, **(extra_env or {}), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "local", "--port", "0", "--time-scale", str(time_scale),
               "--runners", str(runners)]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    if restart_runners:
        command.append("--restart-runners")
    if dynamodb_faults:
        command.append("--dynamodb-faults")
    if not auto_reply:
        command.append("--no-auto-reply")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    output: list[str] = []
    ready = threading.Event()
    base: list[str] = []
    dynamodb: list[str] = []
    inbound: list[str] = []
    runner_pids: dict[str, int] = {}

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            words = line.split()
            if line.startswith("LOCAL_RUNNER "):
                runner_pids[words[1]] = int(words[2])
            elif line.startswith("LOCAL_STACK_DYNAMODB "):
                dynamodb.append(words[1])
            elif line.startswith("LOCAL_STACK_INBOUND_QUEUE "):
                inbound.append(words[1])
            elif line.startswith("LOCAL_STACK_READY "):
                base.append(words[1])
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.time() + 60
    while not ready.wait(0.2):
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            raise RuntimeError("local stack did not start:\n" + "".join(output))
    stack = RunningStack(base[0], process, output, dynamodb[0], runner_pids, inbound[0] if inbound else "")
    try:
        yield stack
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
