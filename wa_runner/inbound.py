"""Clients' messages and our messages' receipts, from the salon's session to AI Admin: one
record per message on the inbound SQS FIFO queue (grouped per salon and chat, so order is kept
within a chat; deduplicated on WhatsApp's message id, so a replay after a reconnect is
harmless).

The loss window: WhatsApp considers a message delivered once the linked device acknowledged
it, which whatsmeow does before neonize hands it to Python. A runner killed between that
acknowledgement and the queue's answer loses the message. The event goes from the engine's
callback onto the runner's event queue at once and is published first, before anything else
is written; `publish_seconds` keeps how long the last ones took (the figure `bench/messages.py`
prints)."""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, Protocol, cast

from aiadmin.db.outbox import Outbox
from aiadmin.messages import MESSAGE_KINDS, Chat, InboundMessage, MessageKind, MessageStatus, ReceiptEvent
from aiadmin.observability import logger, metrics
from wa_runner.engine import ChatMessage, Receipt

# SQS's MessageGroupId and MessageDeduplicationId: up to 128 of these characters.
_SQS_ID = re.compile(r"[^A-Za-z0-9!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]")
RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
EARLY_RECEIPTS = 10_000


class MessageQueue(Protocol):
    def send(self, group: str, dedup: str, body: str) -> None: ...


class SqsQueue:
    """The inbound FIFO queue (`InboundQueue` in template.yaml)."""

    def __init__(self, client: Any, url: str) -> None:
        self._client = client
        self._url = url

    def send(self, group: str, dedup: str, body: str) -> None:
        self._client.send_message(QueueUrl=self._url, MessageBody=body, MessageGroupId=_sqs_id(group),
                                  MessageDeduplicationId=_sqs_id(dedup))


def _kind(kind: str) -> MessageKind:
    return cast(MessageKind, kind) if kind in MESSAGE_KINDS else "other"


def _sqs_id(text: str) -> str:
    return _SQS_ID.sub("_", text)[:128]


class InboundPublisher:
    def __init__(self, queue: MessageQueue, outbox: Outbox, clock: Callable[[], float] = time.time) -> None:
        self._queue = queue
        self._outbox = outbox
        self._clock = clock
        self.publish_seconds: deque[float] = deque(maxlen=1000)
        # Receipts for WhatsApp ids we do not know (yet): WhatsApp may confirm delivery before the
        # outbox has recorded the send (a fast phone). Kept a while, bounded; the rest (messages
        # the salon's own phone sent) just age out.
        self._early: OrderedDict[tuple[int, str], list[Receipt]] = OrderedDict()
        self._recorded: OrderedDict[tuple[int, str], None] = OrderedDict()  # sends recorded lately

    async def message(self, salon_id: int, message: ChatMessage, received_at: float | None = None) -> None:
        """Publish a chat message (first: the loss window ends when the queue has it), then note
        that the client wrote (their chat is a conversation for the pace)."""
        record = InboundMessage(
            salon_id=salon_id, chat=Chat(phone="+" + message.chat_phone if message.chat_phone else None,
                                         jid=message.chat_jid),
            wa_message_id=message.wa_id, at=message.at, kind=_kind(message.kind),
            text=message.text, push_name=message.push_name, quoted_id=message.quoted_id, from_me=message.from_me)
        await self._publish(f"{salon_id}-{message.chat_phone or message.chat_jid}", message.wa_id,
                            record.model_dump_json())
        if received_at is not None:
            self.publish_seconds.append(max(0.0, time.monotonic() - received_at))
        metrics.add_metric(name="InboundMessage", unit="Count", value=1)
        if not message.from_me and message.chat_phone:
            await asyncio.to_thread(self._outbox.note_client_wrote, salon_id, message.chat_phone, message.at)

    async def receipt(self, salon_id: int, receipt: Receipt) -> None:
        """Move the messages' statuses on and tell AI Admin (receipts of messages the salon's own
        phone sent are not ours: skipped)."""
        status = MessageStatus(receipt.status)
        for wa_id in receipt.wa_ids:
            caller_id = await asyncio.to_thread(self._outbox.receipt, salon_id, wa_id, status, self._clock())
            if caller_id is None and (salon_id, wa_id) in self._recorded:  # recorded while we looked
                caller_id = await asyncio.to_thread(self._outbox.receipt, salon_id, wa_id, status, self._clock())
            if caller_id is None:
                self._early.setdefault((salon_id, wa_id), []).append(receipt)
                while len(self._early) > EARLY_RECEIPTS:
                    self._early.popitem(last=False)
                continue
            event = ReceiptEvent(salon_id=salon_id, id=caller_id, wa_message_id=wa_id,
                                 status="read" if status == MessageStatus.READ else "delivered", at=receipt.at)
            await self._publish(f"{salon_id}-{receipt.chat_phone}", f"{wa_id}-{status.value}",
                                event.model_dump_json())

    async def sent(self, salon_id: int, wa_id: str) -> None:
        """The outbox recorded a send: the receipts that came before it apply now."""
        self._recorded[(salon_id, wa_id)] = None
        while len(self._recorded) > EARLY_RECEIPTS:
            self._recorded.popitem(last=False)
        for receipt in self._early.pop((salon_id, wa_id), []):
            await self.receipt(salon_id, Receipt((wa_id,), receipt.chat_phone, receipt.status, receipt.at))

    async def _publish(self, group: str, dedup: str, body: str) -> None:
        """Until the queue has it: a message has nowhere else to go (the salon's later events wait
        behind it, which keeps their order)."""
        for attempt in range(10_000):
            try:
                await asyncio.to_thread(self._queue.send, group, dedup, body)
                return
            except Exception:
                delay = RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)]
                logger.exception("inbound queue unavailable, retrying", extra={"retry_in": delay})
                metrics.add_metric(name="InboundQueueRetry", unit="Count", value=1)
                await asyncio.sleep(delay)
