"""Taking new work: claimable sessions (mostly the linking attempts; every fourth poll one
resume shard in turn), and the sessions of dead runners (taken over once their
membership is `grace` seconds past its end).

Claims stay within the runner's bounds: linking attempts up to `max_pairings`, linked
sessions up to a resume backlog the runner can start soon (the other runners take the rest).
Linking attempts sort first in the index, so an owner waiting for a QR never waits behind a
mass resume; a query uses key conditions only, so it never comes back empty while claimable
sessions of the asked classes exist."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiadmin.models import SessionLease
from aiadmin.observability import logger, metrics
from aiadmin.ownership import LIGHT, LINKING, LINKING_PARTITION, RESUME, RESUME_PARTITIONS, Fence, Ownership
from wa_runner.supervisor import Supervisor

CLAIM_BATCH = 25
CLAIM_CONCURRENCY = 8
RESUME_EVERY = 4  # one claim poll in this many looks at a resume shard


class Claimer:
    def __init__(self, ownership: Ownership, supervisor: Supervisor, fence: Callable[[], Fence],
                 holds: Callable[[float], bool], grace: float, batch: int = CLAIM_BATCH) -> None:
        self._ownership = ownership
        self._supervisor = supervisor
        self._fence = fence
        self._holds = holds
        self._grace = grace
        self._batch = batch
        self._polls = 0

    def _next_partition(self) -> tuple[str, set[str]]:
        """Linking attempts (and stop/pause) three polls in four; the fourth, one resume shard in
        turn, while the resume backlog has room (a resume is not waited for by anyone on a page)."""
        self._polls += 1
        if self._polls % RESUME_EVERY == 0 and self._supervisor.backlog_room() > 0:
            return RESUME_PARTITIONS[(self._polls // RESUME_EVERY) % len(RESUME_PARTITIONS)], {RESUME}
        return LINKING_PARTITION, {LIGHT} | ({LINKING} if self._supervisor.pairing_room() > 0 else set())

    async def claim_step(self, now: float) -> int:
        """One poll of the next partition; returns how many sessions it claimed. The claims of
        a page go out together (a mass resume is bound by them otherwise)."""
        if not self._holds(now):
            return 0
        partition, classes = self._next_partition()
        candidates = await asyncio.to_thread(self._ownership.claimable, partition, classes, self._batch)
        room = {LINKING: self._supervisor.pairing_room(), RESUME: self._supervisor.backlog_room()}
        chosen = []
        for candidate in candidates:
            if candidate.klass in room:
                if room[candidate.klass] <= 0:
                    continue  # over our bound: left for another runner
                room[candidate.klass] -= 1
            chosen.append(candidate.salon_id)
        gate = asyncio.Semaphore(CLAIM_CONCURRENCY)
        fence = self._fence()

        async def claim(salon_id: int) -> SessionLease | None:
            async with gate:
                try:
                    return await asyncio.to_thread(self._ownership.claim, salon_id, fence)
                except Exception:
                    # The write may have been done with its answer lost: look.
                    logger.exception("claim failed", extra={"salon_id": salon_id})
                    lease = await asyncio.to_thread(self._ownership.get_session, salon_id)
                    return lease if lease is not None and (lease.owner, lease.owner_epoch) == fence else None

        claimed = 0
        for lease in await asyncio.gather(*(claim(salon_id) for salon_id in chosen)):
            if lease is None:
                continue  # another runner was faster
            claimed += 1
            await self._supervisor.adopt(lease, now)
        return claimed

    async def takeover_step(self, now: float) -> int:
        """Take over sessions of dead memberships, as many as the resume backlog has room for;
        forget a dead membership once nothing is left of it. Returns sessions taken."""
        if not self._holds(now):
            return 0
        me = self._fence()
        taken = 0
        for member in await asyncio.to_thread(self._ownership.members):
            if member.runner_id == me.runner_id or not member.dead(now, self._grace):
                continue
            room = self._supervisor.backlog_room()
            if room <= 0:
                break
            leases = await asyncio.to_thread(self._ownership.owned_by, member.runner_id, room)
            if not leases:
                await asyncio.to_thread(self._ownership.forget, member, now - self._grace)
                continue
            for lease in leases:
                if lease.owner != member.runner_id or lease.owner_epoch is None or not self._holds(now):
                    continue
                if lease.desired == "link" and self._supervisor.pairing_room() <= 0:
                    continue  # over our pairing bound: left for another runner
                dead = Fence(member.runner_id, lease.owner_epoch)
                won = await asyncio.to_thread(self._ownership.take_over, lease.salon_id, me, dead, now - self._grace)
                if won is None:
                    continue
                taken += 1
                metrics.add_metric(name="SessionTakenOver", unit="Count", value=1)
                logger.info("took over a dead runner's session", extra={"salon_id": won.salon_id,
                                                                          "from": member.runner_id})
                await self._supervisor.adopt(won, now)
        return taken
