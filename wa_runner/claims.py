"""Taking new work: claimable sessions (the linking attempts at every poll; a resume shard in
turn at every fourth poll, or at every poll while resumes are waiting), and the sessions of
dead runners (taken over once their membership is `grace` seconds past its end).

Claims stay within the runner's bounds: linking attempts up to `max_pairings`, linked
sessions up to a resume backlog the runner can start soon (the other runners take the rest).
Linking attempts sort first in the index, so an owner waiting for a QR never waits behind a
mass resume; a query uses key conditions only, so it never comes back empty while claimable
sessions of the asked classes exist."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from aiadmin.db.memberships import Fence, Memberships
from aiadmin.db.sessions import LIGHT, LINK_ATTEMPT, LINKING_PARTITION, RESUME, RESUME_PARTITIONS, Sessions
from aiadmin.models import Salon
from aiadmin.observability import logger, metrics
from wa_runner.commands import CommandApplier
from wa_runner.linking import LinkingAttempts
from wa_runner.resumes import ResumePacer

CLAIM_BATCH = 25
CLAIM_CONCURRENCY = 16
RESUME_EVERY = 4  # while no resume is waiting, one claim poll in this many also looks at a resume shard


class Claimer:
    def __init__(self, sessions: Sessions, members: Memberships, commands: CommandApplier, linking: LinkingAttempts,
                 resumes: ResumePacer, get_salons: Callable[[Iterable[int]], dict[int, Salon]],
                 fence: Callable[[], Fence],
                 holds: Callable[[float], bool], grace: float, batch: int = CLAIM_BATCH) -> None:
        self._sessions = sessions
        self._members = members
        self._commands = commands
        self._linking = linking
        self._resumes = resumes
        self._get_salons = get_salons
        self._fence = fence
        self._holds = holds
        self._grace = grace
        self._batch = batch
        self._polls = 0
        self._shard = 0
        self._resumes_waiting = False  # the last resume shard looked at had claimable sessions

    def _resume_shard(self) -> str | None:
        """The resume shard this poll also looks at, if any: every poll while resumes are
        waiting (a mass resume is not paced by the idle rhythm), else one poll in RESUME_EVERY;
        never while the resume backlog is full (a resume is not waited for by anyone on a page)."""
        if self._resumes.backlog_room() <= 0 or not (self._resumes_waiting or self._polls % RESUME_EVERY == 0):
            return None
        shard = RESUME_PARTITIONS[self._shard]
        self._shard = (self._shard + 1) % len(RESUME_PARTITIONS)
        return shard

    async def claim_step(self, now: float) -> int:
        """One poll; returns how many sessions it claimed. While no resume waits, one query: the
        linking partition (linking attempts, stop/pause), or in its turn a resume shard; while
        resumes wait, both, together. The claims of a poll go out together (linking attempts
        sort first), and each session is taken on as soon as its own claim is answered."""
        if not self._holds(now):
            return 0
        self._polls += 1
        linking_classes = {LIGHT} | ({LINK_ATTEMPT} if self._linking.room() > 0 else set())
        waiting = self._resumes_waiting
        shard = self._resume_shard()
        queries = []
        if shard is None or waiting:  # idle: the resume shard's turn replaces a linking poll (one query a poll)
            queries.append(asyncio.to_thread(self._sessions.claimable, LINKING_PARTITION, linking_classes,
                                             self._batch))
        if shard is not None:
            queries.append(asyncio.to_thread(self._sessions.claimable, shard, {RESUME}, self._batch))
        pages = await asyncio.gather(*queries)
        if shard is not None:
            self._resumes_waiting = bool(pages[-1])
        room = {LINK_ATTEMPT: self._linking.room(), RESUME: self._resumes.backlog_room()}
        chosen: list[int] = []
        resumes: list[int] = []
        for candidate in [c for page in pages for c in page]:
            if candidate.klass in room:
                if room[candidate.klass] <= 0:
                    continue  # over our bound: left for another runner
                room[candidate.klass] -= 1
            chosen.append(candidate.salon_id)
            if candidate.klass == RESUME:
                resumes.append(candidate.salon_id)
        gate = asyncio.Semaphore(CLAIM_CONCURRENCY)
        fence = self._fence()
        # Read alongside the claims (a resume's connect may come before the last claim is answered).
        salons = asyncio.ensure_future(self._read_salons(resumes))

        async def known(salon_id: int) -> Salon | None:
            try:
                return (await asyncio.shield(salons)).get(salon_id)
            except Exception:
                return None  # read at the connect instead

        async def claim(salon_id: int) -> bool:
            async with gate:
                try:
                    lease = await asyncio.to_thread(self._sessions.claim, salon_id, fence)
                except Exception:
                    # The write may have been done with its answer lost: look.
                    logger.exception("claim failed", extra={"salon_id": salon_id})
                    lease = await asyncio.to_thread(self._sessions.get, salon_id)
                    if not fence.owns(lease):
                        return False
            if lease is None:
                return False  # another runner was faster
            await self._commands.adopt(lease, now, await known(salon_id) if lease.desired == "run" else None)
            return True

        try:
            return sum(await asyncio.gather(*(claim(salon_id) for salon_id in chosen)))
        finally:
            if not salons.done():
                salons.cancel()
            elif not salons.cancelled():
                salons.exception()  # retrieved: a failed read is no unhandled error

    async def _read_salons(self, salon_ids: list[int]) -> dict[int, Salon]:
        """The salons of sessions about to be claimed, in one call: their connects then need no
        read of their own (a mass resume costs one read per claim page, not one per session)."""
        return await asyncio.to_thread(self._get_salons, salon_ids) if salon_ids else {}

    async def takeover_step(self, now: float) -> int:
        """Take over sessions of dead memberships, as many as the resume backlog has room for;
        forget a dead membership once nothing is left of it. Returns sessions taken."""
        if not self._holds(now):
            return 0
        me = self._fence()
        taken = 0
        for member in await asyncio.to_thread(self._members.all):
            if member.runner_id == me.runner_id or not member.dead(now, self._grace):
                continue
            room = self._resumes.backlog_room()
            if room <= 0:
                break
            leases = await asyncio.to_thread(self._sessions.owned_by, member.runner_id, room)
            if not leases:
                await asyncio.to_thread(self._members.forget, member, now - self._grace)
                continue
            for lease in leases:
                if lease.owner != member.runner_id or lease.owner_epoch is None or not self._holds(now):
                    continue
                if lease.desired == "link" and self._linking.room() <= 0:
                    continue  # over our pairing bound: left for another runner
                dead = Fence(member.runner_id, lease.owner_epoch)
                won = await asyncio.to_thread(self._sessions.take_over, lease.salon_id, me, dead, now - self._grace)
                if won is None:
                    continue
                taken += 1
                metrics.add_metric(name="SessionTakenOver", unit="Count", value=1)
                logger.info("took over a dead runner's session", extra={"salon_id": won.salon_id,
                                                                          "from": member.runner_id})
                await self._commands.adopt(won, now)
        return taken
