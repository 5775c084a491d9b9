"""`python -m wa_runner`: run the WhatsApp runner as a plain process (Fargate or local)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import boto3

from aiadmin.config import SettingsError, load_settings
from aiadmin.observability import logger
from aiadmin.push import Pusher
from aiadmin.store import Store
from aiadmin.yclients import YClientsClient
from wa_runner.engine import WhatsAppEngine
from wa_runner.runner import Runner, RunnerLimits


def _engine(name: str) -> WhatsAppEngine:
    if name == "simulated":
        from wa_runner.simulated import SimulatedEngine

        settings = load_settings(["wa_sim_server_url", "sessions_dir"])
        return SimulatedEngine(settings.wa_sim_server_url, settings.sessions_dir)
    raise SettingsError(f"WA_ENGINE: unknown engine {name!r} (this build supports: simulated)")


async def main() -> None:
    settings = load_settings([
        "table_name", "yclients_base_url", "yclients_app_id", "yclients_partner_token",
        "websocket_management_url", "public_base_url", "wa_engine", "runner_poll_seconds",
        "runner_lease_seconds", "runner_max_pairings", "runner_resume_concurrency", "runner_abandon_seconds",
    ])
    engine = _engine(settings.wa_engine)
    runner_id = os.environ.get("RUNNER_ID") or f"{socket.gethostname()}-{os.getpid()}"
    runner = Runner(
        runner_id=runner_id,
        store=Store(boto3.resource("dynamodb").Table(settings.table_name)),
        engine=engine,
        pusher=Pusher(settings.websocket_management_url),
        yclients=YClientsClient(settings.yclients_base_url, settings.yclients_partner_token.reveal(),
                                settings.yclients_app_id),
        public_base_url=settings.public_base_url,
        poll_seconds=settings.runner_poll_seconds,
        lease_seconds=settings.runner_lease_seconds,
        limits=RunnerLimits(max_pairings=settings.runner_max_pairings,
                            resume_concurrency=settings.runner_resume_concurrency,
                            abandon_seconds=settings.runner_abandon_seconds),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    logger.info("runner started", extra={"runner_id": runner_id, "engine": settings.wa_engine})
    print(f"runner {runner_id} ready (pid {os.getpid()})", flush=True)
    await runner.run(stop)
    for signum in (signal.SIGTERM, signal.SIGINT):
        # Leases are released; a second signal (Ctrl-C reaches the whole process group, then
        # the local stack sends SIGTERM) has nothing left to do.
        loop.remove_signal_handler(signum)
        signal.signal(signum, signal.SIG_IGN)
    logger.info("runner stopped", extra={"runner_id": runner_id})


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except SettingsError as exc:
        print(f"wa_runner: {exc}", file=sys.stderr)
        sys.exit(2)
