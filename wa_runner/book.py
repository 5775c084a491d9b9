"""The runner's book of sessions: which salons' sessions it owns and in which phase (what the
heartbeat counts), and letting them go: retired (nothing left to run), dropped (no longer
ours), or all stopped at once (a lapse, a shutdown). The engine never runs a session the book
does not hold (`wa_runner.restarts`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiadmin.db.memberships import Fence
from aiadmin.db.sessions import Sessions
from aiadmin.models import SessionLease
from aiadmin.observability import logger, metrics
from wa_runner.engine import WhatsAppEngine
from wa_runner.sessions import OwnedSession

# Engine sessions stopped at once when everything stops (lapse, shutdown).
STOP_CONCURRENCY = 64


class SessionBook:
    def __init__(self, leases: Sessions, engine: WhatsAppEngine, fence: Callable[[], Fence],
                 on_forget: Callable[[int], None]) -> None:
        self._leases = leases
        self._engine = engine
        self._fence = fence
        self._on_forget = on_forget  # the session's work in other parts ends (its activation)
        self._sessions: dict[int, OwnedSession] = {}

    # ---- what is in it -------------------------------------------------------------------

    def get(self, salon_id: int) -> OwnedSession | None:
        return self._sessions.get(salon_id)

    def __contains__(self, salon_id: object) -> bool:
        return salon_id in self._sessions

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions(self) -> list[OwnedSession]:
        """A snapshot: the book may change while a caller awaits."""
        return list(self._sessions.values())

    def salon_ids(self) -> set[int]:
        return set(self._sessions)

    def still_holds(self, owned: OwnedSession) -> bool:
        """Whether `owned` is still the book's entry for its salon (not forgotten, nor replaced
        by a newer adoption while the caller awaited)."""
        return self._sessions.get(owned.salon_id) is owned

    def add(self, owned: OwnedSession) -> None:
        logger.info("session is ours", extra={"salon_id": owned.salon_id, "desired": owned.lease.desired})
        self._sessions[owned.salon_id] = owned

    def pairings_in_flight(self) -> int:
        return sum(owned.pairing for owned in self._sessions.values())

    def linked(self) -> int:
        return sum(1 for owned in self._sessions.values() if owned.lease.desired == "run")

    def status(self) -> dict[str, Any]:
        """Sessions by phase and pairings in flight: the heartbeat's content."""
        phases = Counter(owned.phase.value for owned in self._sessions.values())
        return {"sessions": len(self._sessions), "phases": dict(phases), "pairings": self.pairings_in_flight()}

    # ---- letting go ----------------------------------------------------------------------

    async def retire(self, owned: OwnedSession) -> bool:
        """Nothing to run: leave the session owner-less and forget it, unless a newer command
        came (the command poll brings it)."""
        done = await asyncio.to_thread(self._leases.retire, owned.lease, self._fence())
        if done:
            self.forget(owned.salon_id)
        return done

    def forget(self, salon_id: int) -> None:
        self._sessions.pop(salon_id, None)
        self._on_forget(salon_id)

    async def drop(self, salon_id: int, reason: str) -> None:
        """No longer ours: stop the session at once, before its next owner starts it."""
        logger.warning("dropping session", extra={"salon_id": salon_id, "reason": reason})
        metrics.add_metric(name="LeaseLost", unit="Count", value=1)
        self.forget(salon_id)
        try:
            await self._engine.stop(salon_id)
        except Exception:
            logger.exception("engine stop failed", extra={"salon_id": salon_id})

    async def stop_all(self, timeout: float | None = None) -> list[SessionLease]:
        """Stop every session at once, in parallel (a lapse, a shutdown); forget them. Returns
        the leases they had."""
        leases = [owned.lease for owned in self._sessions.values()]
        for salon_id in list(self._sessions):
            self.forget(salon_id)
        gate = asyncio.Semaphore(STOP_CONCURRENCY)

        async def stop(salon_id: int) -> None:
            async with gate:
                try:
                    await self._engine.stop(salon_id)
                except Exception:
                    logger.exception("engine stop failed", extra={"salon_id": salon_id})

        salon_ids = {lease.salon_id for lease in leases} | self._engine.running()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(stop(salon_id) for salon_id in salon_ids)), timeout)
        return leases
