"""`python -m wa_runner`: run the WhatsApp runner as a plain process (Fargate or local)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import boto3
from botocore.config import Config

from aiadmin.activation import ActivationPolicy
from aiadmin.config import (
    ActivationRetrySeconds,
    ComponentSettings,
    PartnerToken,
    PublicBaseUrl,
    RunnerAbandonSeconds,
    RunnerActivationWorkers,
    RunnerCommandPollSeconds,
    RunnerLeaseSeconds,
    RunnerMaxPairings,
    RunnerPollSeconds,
    RunnerReconcileSeconds,
    RunnerResumeConcurrency,
    SessionsDir,
    SettingsError,
    TableName,
    WaEngine,
    WaKeysPostgresUrl,
    WaSimServerUrl,
    WebSocketManagementUrl,
    YClientsAppId,
    YClientsBaseUrl,
    YClientsChannels,
)
from aiadmin.db import Store
from aiadmin.db.memberships import Memberships
from aiadmin.observability import logger
from aiadmin.push import Pusher
from aiadmin.settings import RunnerMessagesSettings
from aiadmin.yclients import YClientsClient
from wa_runner.engine import WhatsAppEngine
from wa_runner.inbound import SqsQueue
from wa_runner.keys import KeyStore, PostgresKeys, SqliteKeyFiles
from wa_runner.pace import PacePolicy
from wa_runner.runner import IO_THREADS, RELEASE_THREADS, Runner, RunnerLimits


class RunnerSettings(RunnerMessagesSettings):
    """What the runner reads (never the onboarding-token secret: it issues and checks no token);
    its messages' settings (inbound queue, pace) with them."""

    table_name: TableName
    yclients_base_url: YClientsBaseUrl
    yclients_app_id: YClientsAppId
    yclients_partner_token: PartnerToken
    websocket_management_url: WebSocketManagementUrl
    public_base_url: PublicBaseUrl
    wa_engine: WaEngine
    runner_poll_seconds: RunnerPollSeconds
    runner_lease_seconds: RunnerLeaseSeconds
    activation_retry_seconds: ActivationRetrySeconds
    yclients_channels: YClientsChannels
    runner_max_pairings: RunnerMaxPairings
    runner_resume_concurrency: RunnerResumeConcurrency
    runner_abandon_seconds: RunnerAbandonSeconds
    runner_command_poll_seconds: RunnerCommandPollSeconds
    runner_reconcile_seconds: RunnerReconcileSeconds
    runner_activation_workers: RunnerActivationWorkers


class SimulatedEngineSettings(ComponentSettings):
    wa_sim_server_url: WaSimServerUrl
    sessions_dir: SessionsDir


class NeonizeEngineSettings(ComponentSettings):
    sessions_dir: SessionsDir
    wa_keys_postgres_url: WaKeysPostgresUrl


def _engine(name: str, store: Store) -> WhatsAppEngine:
    if name == "simulated":
        from wa_runner.simulated import SimulatedEngine

        simulated = SimulatedEngineSettings.load()
        return SimulatedEngine(simulated.wa_sim_server_url, simulated.sessions_dir)
    if name == "neonize":
        # Imported only here: it loads neonize's Go library (~0.3 s, ~60 MB).
        from wa_runner.neonize_engine import NeonizeEngine

        neonize = NeonizeEngineSettings.load()
        postgres = neonize.wa_keys_postgres_url
        keys: KeyStore = SqliteKeyFiles(neonize.sessions_dir) if postgres is None else PostgresKeys(
            postgres.reveal(), load_jid=lambda salon_id: _device_jid(store, salon_id),
            save_jid=store.sessions.set_device)
        return NeonizeEngine(keys)
    raise SettingsError(f"WA_ENGINE: unknown engine {name!r} (this build supports: simulated, neonize)")


def _device_jid(store: Store, salon_id: int) -> str | None:
    lease = store.sessions.get(salon_id)
    return lease.device_jid if lease else None


async def main() -> None:
    settings = RunnerSettings.load()
    # Enough connections for every I/O thread (and the parallel hand-back at shutdown).
    store = Store(boto3.resource("dynamodb", config=Config(max_pool_connections=IO_THREADS + RELEASE_THREADS))
                  .Table(settings.table_name))
    # The membership has a client of its own (its own connections: never queued behind the
    # others). A call may take up to half the lease (a renewal counts from when it was sent, so
    # a slow answer still renews: only no answer at all for most of the lease lapses it), and
    # is not retried by botocore: the membership tries again itself, a second later, with a
    # fresh clock (a retry inside one call would renew from the time the first attempt started).
    membership_table = boto3.session.Session().resource("dynamodb", config=Config(
        connect_timeout=3, read_timeout=max(2.0, settings.runner_lease_seconds / 2),
        retries={"mode": "standard", "max_attempts": 1},
    )).Table(settings.table_name)
    engine = _engine(settings.wa_engine, store)
    runner_id = os.environ.get("RUNNER_ID") or f"{socket.gethostname()}-{os.getpid()}"
    runner = Runner(
        runner_id=runner_id,
        store=store,
        engine=engine,
        pusher=Pusher(settings.websocket_management_url),
        yclients=YClientsClient(settings.yclients_base_url, settings.yclients_partner_token.reveal(),
                                settings.yclients_app_id, background=True),  # no owner waits on these calls
        public_base_url=settings.public_base_url,
        poll_seconds=settings.runner_poll_seconds,
        lease_seconds=settings.runner_lease_seconds,
        command_poll_seconds=settings.runner_command_poll_seconds,
        reconcile_seconds=settings.runner_reconcile_seconds,
        activation_workers=settings.runner_activation_workers,
        membership_store=Memberships(membership_table),
        activation_policy=ActivationPolicy(first_delay=settings.activation_retry_seconds,
                                           channels=settings.yclients_channels),
        limits=RunnerLimits(max_pairings=settings.runner_max_pairings,
                            resume_concurrency=settings.runner_resume_concurrency,
                            abandon_seconds=settings.runner_abandon_seconds),
        inbound_queue=SqsQueue(boto3.client("sqs"), settings.inbound_queue_url),
        pace=PacePolicy(reply_per_second=settings.messages_reply_per_second,
                        reply_burst=settings.messages_reply_burst,
                        first_contact_per_minute=settings.messages_first_contact_per_minute,
                        per_minute=settings.messages_per_minute),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    logger.info("runner started", extra={"runner_id": runner_id, "engine": settings.wa_engine})
    print(f"runner {runner_id} ready (pid {os.getpid()})", flush=True)
    await runner.run(stop)
    for signum in (signal.SIGTERM, signal.SIGINT):
        # Sessions are handed back; a second signal (Ctrl-C reaches the whole process group, then
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
