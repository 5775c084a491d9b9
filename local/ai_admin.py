"""A small stand-in for AI Admin in the local stack (on by default in `make dev`; `python -m local
--no-auto-reply` turns it off): it reads the inbound queue as AI Admin would and answers every
client's text message through the messages API, so a developer sees a whole conversation go
round without AI Admin.

- `message` of kind `text`, not `from_me`: a reply quoting the client's text is sent with
  `POST /salons/{salon_id}/messages` (real HTTP to the local gateway, with the local bearer key),
  caller id `reply-<WhatsApp message id>` (a redelivered message is answered once); the queue
  message is deleted once the API accepted the reply (202), or refused it for good (4xx other
  than 429). On a 429, a 5xx or no answer it stays, and SQS delivers it again after its
  visibility timeout (the chat's later messages wait behind it: FIFO).
- other kinds, the salon's own messages, receipts: logged and deleted.
- anything that is not a valid inbound record: logged and deleted (it would never become valid).

Bounded: one worker, at most `BATCH` messages per receive, one request at a time; an error in
one message is logged and never stops the stand-in or the stack."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import sys
from typing import Any

import aiohttp

from aiadmin.messages import MAX_CALLER_ID_CHARS, MAX_TEXT_CHARS

BATCH = 10
WAIT_SECONDS = 1  # SQS long poll: short, so the stack stops at once
REPLY_PREFIX = "Вы написали: «"
REPLY_SUFFIX = "». Администратор скоро ответит."
_NOT_ID = re.compile(r"[^A-Za-z0-9._:-]")


def reply_id(wa_message_id: str) -> str:
    """The caller's id of the reply to one WhatsApp message: the same every time (idempotent), and
    a valid caller id whatever WhatsApp's id holds."""
    cleaned = "reply-" + _NOT_ID.sub("_", wa_message_id)
    if len(cleaned) <= MAX_CALLER_ID_CHARS and cleaned == "reply-" + wa_message_id:
        return cleaned
    return "reply-" + hashlib.sha256(wa_message_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def reply_text(text: str) -> str:
    room = MAX_TEXT_CHARS - len(REPLY_PREFIX) - len(REPLY_SUFFIX)
    quoted = text if len(text) <= room else text[:room - 1] + "…"
    return f"{REPLY_PREFIX}{quoted}{REPLY_SUFFIX}"


def _log(line: str) -> None:
    print(f"[ai-admin] {line}", file=sys.stderr, flush=True)


class AiAdminStandIn:
    """Reads `queue_url` (boto3 SQS client `sqs`) and answers through the API at `base_url`."""

    def __init__(self, sqs: Any, queue_url: str, base_url: str, api_key: str) -> None:
        self._sqs = sqs
        self._queue_url = queue_url
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.replied = 0

    async def run(self, stop: asyncio.Event) -> None:
        from pydantic import TypeAdapter

        from aiadmin.messages import InboundMessage, ReceiptEvent

        adapter: TypeAdapter[InboundMessage | ReceiptEvent] = TypeAdapter(InboundMessage | ReceiptEvent)
        timeout = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not stop.is_set():
                try:
                    batch = await asyncio.to_thread(
                        self._sqs.receive_message, QueueUrl=self._queue_url, MaxNumberOfMessages=BATCH,
                        WaitTimeSeconds=WAIT_SECONDS)
                except Exception as exc:  # the queue is away for a moment (the stack stopping)
                    _log(f"receive failed: {type(exc).__name__}: {exc}")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1)
                    continue
                for message in batch.get("Messages", []):
                    if stop.is_set():
                        break
                    try:
                        done = await self._handle(http, adapter, message.get("Body") or "")
                    except Exception as exc:  # one bad message never stops the stand-in
                        _log(f"message {message.get('MessageId')}: {type(exc).__name__}: {exc}")
                        done = False
                    if done:
                        with contextlib.suppress(Exception):
                            await asyncio.to_thread(self._sqs.delete_message, QueueUrl=self._queue_url,
                                                    ReceiptHandle=message["ReceiptHandle"])

    async def _handle(self, http: aiohttp.ClientSession, adapter: Any, body: str) -> bool:
        """Whether the queue message is done with (to delete)."""
        from pydantic import ValidationError

        from aiadmin.messages import ReceiptEvent

        try:
            record = adapter.validate_json(body)
        except ValidationError as exc:
            _log(f"not an inbound record, dropped: {exc.error_count()} problem(s)")
            return True
        if isinstance(record, ReceiptEvent):
            _log(f"receipt: salon {record.salon_id} message {record.id} {record.status}")
            return True
        if record.kind != "text" or record.from_me or not record.text.strip():
            _log(f"salon {record.salon_id}: {record.kind} message{' from the salon' if record.from_me else ''}, "
                 "no reply")
            return True
        reply = {"id": reply_id(record.wa_message_id), "to": record.chat.phone, "text": reply_text(record.text)}
        async with http.post(f"{self._base_url}/salons/{record.salon_id}/messages", json=reply,
                             headers={"Authorization": f"Bearer {self._api_key}"}) as answer:
            result = await answer.json(content_type=None)
            if answer.status == 202:
                self.replied += 1
                _log(f"salon {record.salon_id}: replied to {record.chat.phone} ({reply['id']}: {result.get('status')})")
                return True
            _log(f"salon {record.salon_id}: reply refused {answer.status} {result}")
            return 400 <= answer.status < 500 and answer.status != 429
