"""Command intake: the commands handlers write for this runner's sessions reach it without
reading every session.

- `poll` (every RUNNER_COMMAND_POLL_SECONDS, 0.5 s): one query of the runner's pending
  commands (`OWNER#<runner>`, command sort keys); nothing else is read while nothing
  changes. The index is eventually consistent, so each session it names is read once more,
  consistently, before acting; a command is acknowledged (out of the index) only after it was
  carried out, and only if no newer one came meanwhile: a failed or overtaken one comes back
  at the next poll. Never lost.
- `reconcile` (every RUNNER_RECONCILE_SECONDS, and after each (re)join): the safety net.
  Every session recorded as this runner's is compared with the book; differences are read
  consistently and settled (adopted, commanded, dropped). Sessions of this runner's earlier
  epochs (it lapsed and joined again) are taken back like a dead runner's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiadmin.db.memberships import Fence
from aiadmin.db.sessions import Sessions
from aiadmin.models import SessionLease
from aiadmin.observability import logger
from wa_runner.book import SessionBook
from wa_runner.commands import CommandApplier


class CommandIntake:
    def __init__(self, sessions: Sessions, book: SessionBook, commands: CommandApplier, fence: Callable[[], Fence],
                 holds: Callable[[float], bool]) -> None:
        self._sessions = sessions
        self._book = book
        self._commands = commands
        self._fence = fence
        self._holds = holds

    async def poll(self, now: float) -> int:
        """Carry out the pending commands; returns how many sessions had one. A runner that owns
        no session has none to carry out: it does not ask (the reconcile covers a session that is
        ours without the book knowing)."""
        if not self._holds(now) or not self._book:
            return 0
        fence = self._fence()
        salon_ids = await asyncio.to_thread(self._sessions.pending_commands, fence.runner_id)
        for salon_id in salon_ids:
            await self._deliver(salon_id, fence, now)
        return len(salon_ids)

    async def _deliver(self, salon_id: int, fence: Fence, now: float) -> None:
        lease = await asyncio.to_thread(self._sessions.get, salon_id)
        if not fence.owns(lease):
            if salon_id in self._book:
                await self._book.drop(salon_id, "the session is no longer ours")
            return
        if not self._holds(now):
            return
        try:
            await self._commands.command(lease, now)
        except Exception:
            logger.exception("command failed, tried again next poll", extra={"salon_id": salon_id})
            return
        if lease.command_waiting:
            await asyncio.to_thread(self._sessions.acknowledge, salon_id, fence, lease.command_seq)

    async def reconcile(self, now: float) -> None:
        if not self._holds(now):
            return
        fence = self._fence()
        recorded = await asyncio.to_thread(self._sessions.owned_by, fence.runner_id)
        seen: set[int] = set()
        for lease in recorded:
            if lease.owner != fence.runner_id:
                continue  # the index lags
            if lease.owner_epoch != fence.epoch:
                await self._take_back(lease, fence, now)
                continue
            seen.add(lease.salon_id)
            owned = self._book.get(lease.salon_id)
            if owned is None or owned.lease.command != lease.command or lease.command_waiting \
                    or (lease.wants_activation_retry and not owned.retry_activation):
                await self._deliver(lease.salon_id, fence, now)
        for salon_id in self._book.salon_ids() - seen:
            # Not in the index (yet: a claim a moment ago is not there), so read it itself.
            if not fence.owns(await asyncio.to_thread(self._sessions.get, salon_id)):
                await self._book.drop(salon_id, "the session is no longer ours")

    async def _take_back(self, lease: SessionLease, fence: Fence, now: float) -> None:
        assert lease.owner_epoch is not None
        # An earlier epoch of ours is dead (we joined again); our membership's own epoch
        # differs, so the takeover's check passes at once.
        won = await asyncio.to_thread(self._sessions.take_over, lease.salon_id, fence,
                                      Fence(fence.runner_id, lease.owner_epoch), now)
        if won is not None:
            await self._commands.adopt(won, now)
