"""The runner's book of the sessions it owns: one `OwnedSession` per owned salon, with the
phase the session is in as the runner sees it (what the heartbeat counts) and the
bookkeeping of supervision (crash backoff) and of linking attempts (page seen, scan)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from aiadmin.models import Salon, SessionLease

MAX_BACKOFF_SECONDS = 60.0
# A session connected this long is healthy again: its next failure starts the backoff over.
STABLE_SECONDS = 60.0
# How long a salon record read in a batch at the claim stands in for a read at the connect.
KNOWN_SALON_SECONDS = 30.0


class Phase(StrEnum):
    QUEUED = "queued"          # linked, waiting for a resume slot (resumes are staggered)
    STARTING = "starting"      # engine started, not connected yet
    # A linking attempt runs (QR codes or a pairing code) and waits for the owner's phone to scan
    # or enter a code: a pairing in flight. Heartbeats count it as "linking" (ops read that).
    AWAITING_PHONE = "linking"
    CONNECTED = "connected"    # the linked session is up
    RETRYING = "retrying"      # crashed or dropped: restarts at `retry_at`
    PAUSED = "paused"          # frozen by YClients: disconnected, keys kept
    IDLE = "idle"              # linking stopped (abandoned); restarts when the page is back
    HALTED = "halted"          # banned or client outdated: waits for a new command


# Phases in which the engine should have a live session task for the salon.
LIVE_PHASES = frozenset({Phase.STARTING, Phase.AWAITING_PHONE, Phase.CONNECTED})


@dataclass
class OwnedSession:
    lease: SessionLease
    phase: Phase = Phase.IDLE
    since: float = 0.0                     # when the current phase began
    started_generation: int | None = None  # the command generation the engine runs
    failures: int = 0                      # consecutive crashes or drops, for the backoff
    retry_at: float = 0.0
    page_seen_at: float = 0.0              # last time the salon's page had a socket open
    # An explicit "activate again" request (a new consent, an ops retry) not yet acted on.
    retry_activation: bool = False
    # The salon's record as read with others of its claim page, and when (used once, if fresh).
    known_salon: Salon | None = None
    known_at: float = 0.0

    @property
    def salon_id(self) -> int:
        return self.lease.salon_id

    @property
    def command(self) -> tuple[str, int]:
        """What the rest of the system asks of this session; a change is a command."""
        return self.lease.command

    @property
    def pairing(self) -> bool:
        """A linking attempt that holds (or is about to hold) an engine session."""
        return self.lease.desired == "link" and self.phase in (Phase.STARTING, Phase.AWAITING_PHONE, Phase.RETRYING)

    def take_known_salon(self, now: float) -> Salon | None:
        """The salon read at the claim, once, while it is recent; else None (read it)."""
        salon, self.known_salon = self.known_salon, None
        return salon if salon is not None and now - self.known_at <= KNOWN_SALON_SECONDS else None

    def enter(self, phase: Phase, now: float) -> None:
        self.phase, self.since = phase, now

    def schedule_retry(self, now: float, at_least: float = 0.0) -> float:
        """Back off 1, 2, 4 ... 60 s (jittered) after consecutive failures; a session that was
        connected for a while starts over at 1 s. Returns the delay."""
        if self.phase == Phase.CONNECTED and now - self.since >= STABLE_SECONDS:
            self.failures = 0
        self.failures += 1
        delay = min(MAX_BACKOFF_SECONDS, 2.0 ** (self.failures - 1)) * (1 + random.random() / 2)
        delay = max(delay, at_least)
        self.retry_at = now + delay
        self.enter(Phase.RETRYING, now)
        return delay
