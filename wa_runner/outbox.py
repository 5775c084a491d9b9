"""Sending a salon's outbox through its connected session: in order per chat, at the salon's
pace (`wa_runner.pace`), each message recorded `sending` before it is handed to WhatsApp and
`sent` (or `failed`) after, so a runner that dies in between leaves it `sending`, which the
next owner records as `unknown` and never sends again (neonize 0.5.2 cannot send with our own
message id, so a resend could not be deduplicated by WhatsApp: it would reach the client twice).

A drain runs per salon when something may have changed: a command (every new message nudges
the session like one), the session connecting, a pace wait ending."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from botocore.exceptions import ClientError, EndpointConnectionError

from aiadmin.db.memberships import Fence
from aiadmin.db.outbox import CONVERSATION_SECONDS, Outbox, QueuedMessage
from aiadmin.messages import FailureReason, MessageStatus
from aiadmin.observability import logger, metrics
from wa_runner.book import SessionBook
from wa_runner.engine import SendFailed, WhatsAppEngine
from wa_runner.pace import Audience, PacePolicy, SalonPace
from wa_runner.sessions import Phase

PAGE = 50
# After a DynamoDB call failed (botocore's own retries, about 25 s for DynamoDB, spent): the
# drain looks again, and a status that must be recorded (the message was handed to WhatsApp) is
# written again, after these pauses (the last one repeats).
RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
RECORD_ATTEMPTS = 30  # then it stays `sending`: the next look (or owner) records it `unknown`
_THROTTLED = frozenset({"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"})
# Commands after which a linked number's outbox can never be sent: the salon was uninstalled,
# or is being linked again (perhaps to another number).
_UNLINKED = ("stop", "link")


class OutboxSender:
    def __init__(self, outbox: Outbox, engine: WhatsAppEngine, book: SessionBook, fence: Callable[[], Fence],
                 clock: Callable[[], float] = time.time, policy: PacePolicy | None = None,
                 on_sent: Callable[[int, str], Awaitable[None]] | None = None) -> None:
        self._outbox = outbox
        self._engine = engine
        self._book = book
        self._fence = fence
        self._clock = clock
        self._policy = policy or PacePolicy()
        self._on_sent = on_sent  # receipts that came before the send was recorded
        self._paces: dict[int, SalonPace] = {}
        self._again: set[int] = set()
        self._wakeups: dict[int, asyncio.Event] = {}
        self.drains: dict[int, asyncio.Task[None]] = {}

    def wake(self, salon_id: int) -> None:
        """Look at the salon's outbox (soon, on the event loop); a drain under way looks again."""
        self._again.add(salon_id)
        if salon_id in self._wakeups:
            self._wakeups[salon_id].set()
        if salon_id not in self.drains:
            self.drains[salon_id] = asyncio.create_task(self._drain(salon_id))

    async def settle(self, salon_id: int) -> None:
        """The salon's command ended its linked number (uninstalled, linked again): everything
        in its outbox fails as `salon_not_linked` (or `unknown`, if it was being sent), now,
        while the session is still ours to write for."""
        self.wake(salon_id)
        await self.quiesce(salon_id)

    async def quiesce(self, salon_id: int) -> None:
        """Wait for the salon's drain under way, if any (after its engine session was stopped,
        its sends fail and leave the messages queued)."""
        task = self.drains.get(salon_id)
        if task is not None:
            if salon_id in self._wakeups:
                self._wakeups[salon_id].set()  # not waiting on the pace any more
            await asyncio.shield(task)

    def forget(self, salon_id: int) -> None:
        self._paces.pop(salon_id, None)

    async def _drain(self, salon_id: int) -> None:
        wakeup = self._wakeups.setdefault(salon_id, asyncio.Event())
        failures = 0
        try:
            while salon_id in self._again:
                self._again.discard(salon_id)
                try:
                    wait = await self._round(salon_id)
                    failures = 0
                except Exception:
                    # DynamoDB throttling or away for longer than botocore retries: look again
                    # later, as nothing else may wake this outbox (its messages are all in).
                    if self._book.get(salon_id) is None:
                        raise
                    wait = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                    failures += 1
                    logger.exception("outbox drain failed, trying again", extra={"salon_id": salon_id,
                                                                                 "retry_in": wait})
                if wait is not None and salon_id not in self._again:
                    wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wakeup.wait(), wait)
                    self._again.add(salon_id)
        except Exception:
            logger.exception("outbox drain failed", extra={"salon_id": salon_id})
        finally:
            self.drains.pop(salon_id, None)
            self._wakeups.pop(salon_id, None)

    async def _round(self, salon_id: int) -> float | None:
        """One pass over the outbox's first page; the seconds until the pace lets the next one
        go, or None when nothing waits on the pace."""
        owned = self._book.get(salon_id)
        if owned is None:
            return None
        unlinked = owned.lease.desired in _UNLINKED
        if not unlinked and owned.phase != Phase.CONNECTED:
            return None  # waits for the session (connecting it wakes the outbox)
        entries = await asyncio.to_thread(self._outbox.pending, salon_id, PAGE)
        pace = self._paces.setdefault(salon_id, SalonPace(self._policy))
        blocked: set[str] = set()  # chats whose next message waits: their later ones wait too
        conversation: dict[str, bool] = {}
        next_wait: float | None = None
        for entry in entries:
            if entry.to in blocked:
                continue
            if entry.status == MessageStatus.SENDING:
                # Handed to WhatsApp by a runner that stopped before recording the answer.
                await self._finish(entry, MessageStatus.UNKNOWN, "the runner stopped while sending it")
                continue
            if entry.status != MessageStatus.QUEUED:
                await self._finish(entry, entry.status)  # recorded final, its queue entry left over
                continue
            if unlinked:
                await self._finish(entry, MessageStatus.FAILED, FailureReason.SALON_NOT_LINKED.value)
                continue
            if owned.phase != Phase.CONNECTED or self._book.get(salon_id) is not owned:
                return None  # disconnected (or dropped) meanwhile: connecting again wakes the outbox
            now = self._clock()
            if entry.to not in conversation:
                conversation[entry.to] = await asyncio.to_thread(
                    self._outbox.client_wrote_since, salon_id, entry.to, now - CONVERSATION_SECONDS)
            wait = pace.take(Audience.CONVERSATION if conversation[entry.to] else Audience.FIRST_CONTACT, now)
            if wait > 0:
                blocked.add(entry.to)
                next_wait = wait if next_wait is None else min(next_wait, wait)
                continue
            if not await self._send(entry):
                blocked.add(entry.to)  # not sent and not final: it stays first in its chat
                if self._book.get(salon_id) is None or owned.phase != Phase.CONNECTED:
                    return None
        if len(entries) == PAGE and next_wait is None:
            self._again.add(salon_id)  # more behind this page
        return next_wait

    async def _send(self, entry: QueuedMessage) -> bool:
        """Send one message; False when it was left queued (not ours any more, not connected)."""
        now = self._clock()
        if not await asyncio.to_thread(self._outbox.start_sending, entry, self._fence(), now):
            return False
        try:
            sent = await self._engine.send_text(entry.salon_id, entry.to, entry.text)
        except SendFailed as failed:
            if failed.reason == FailureReason.SALON_NOT_LINKED.value:
                # Not connected after all: nothing reached WhatsApp, so it may wait for the session.
                await self._record(self._outbox.requeue, entry)
                return False
            await self._finish(entry, MessageStatus.FAILED, failed.reason)
            return True
        except Exception as exc:
            logger.exception("send outcome unknown", extra={"salon_id": entry.salon_id})
            await self._finish(entry, MessageStatus.UNKNOWN, f"send error: {type(exc).__name__}")
            return True
        metrics.add_metric(name="MessageSent", unit="Count", value=1)
        await self._record(self._outbox.finish, entry, MessageStatus.SENT, None, sent.wa_id)
        if self._on_sent is not None:
            await self._on_sent(entry.salon_id, sent.wa_id)
        return True

    async def _finish(self, entry: QueuedMessage, status: MessageStatus, reason: str | None = None) -> None:
        if status != MessageStatus.SENT:
            metrics.add_metric(name=f"Message_{status.value}", unit="Count", value=1)
            logger.warning("message not sent", extra={"salon_id": entry.salon_id, "status": status.value,
                                                       "reason": reason})
        await self._record(self._outbox.finish, entry, status, reason)

    async def _record(self, write: Callable[..., bool], entry: QueuedMessage, *args: Any) -> bool:
        """A status write that must land (what WhatsApp did is known only here): tried again
        while DynamoDB throttles or cannot be reached (neither applied the write, so a retry
        cannot count a message twice), as long as the salon is ours. False when the fence
        refused it (not ours any more)."""
        for attempt in range(RECORD_ATTEMPTS):
            try:
                return await asyncio.to_thread(write, entry, self._fence(), self._clock(), *args)
            except (ClientError, EndpointConnectionError) as exc:
                code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else "unreachable"
                if code not in _THROTTLED and code != "unreachable":
                    raise
                if attempt + 1 == RECORD_ATTEMPTS or self._book.get(entry.salon_id) is None:
                    raise
                delay = RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)]
                logger.warning("message status not recorded, trying again",
                               extra={"salon_id": entry.salon_id, "error": code, "retry_in": delay})
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover
