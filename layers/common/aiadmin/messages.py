"""Messages through the salon's WhatsApp: what AI Admin sends us (`OutboundRequest`), what it
reads back (`OutboundStatus`), and what it receives on the inbound queue (`InboundMessage`,
`ReceiptEvent`, told apart by `type`; `schema_version` 1, `schemas/inbound-v1.json`)."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

INBOUND_SCHEMA_VERSION = 1
MessageKind = Literal["text", "image", "video", "audio", "document", "sticker", "location", "contact", "reaction",
                      "other"]
MESSAGE_KINDS: frozenset[str] = frozenset(MessageKind.__args__)  # type: ignore[attr-defined]
# WhatsApp takes 65,536 characters in one text; a salon's replies are far shorter. A bound we
# state keeps a runaway caller from filling queues and phones.
MAX_TEXT_CHARS = 4096
MAX_CALLER_ID_CHARS = 64
CallerId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
_E164 = re.compile(r"^\+[1-9]\d{7,14}$")


class MessageStatus(StrEnum):
    QUEUED = "queued"        # accepted, waiting for its turn (pace, order in the chat)
    SENDING = "sending"      # the runner is handing it to WhatsApp
    SENT = "sent"            # WhatsApp's server took it
    DELIVERED = "delivered"  # it reached the client's phone
    READ = "read"            # the client saw it
    FAILED = "failed"        # it was not sent: `reason` says why
    UNKNOWN = "unknown"      # a runner stopped between sending and recording it: never resent

    @property
    def final(self) -> bool:
        """Nothing more will be done with it (receipts may still move `sent` on)."""
        return self not in (MessageStatus.QUEUED, MessageStatus.SENDING)


# Receipts only move a message forward.
STATUS_ORDER = {MessageStatus.SENT: 0, MessageStatus.DELIVERED: 1, MessageStatus.READ: 2}


class FailureReason(StrEnum):
    NOT_ON_WHATSAPP = "not_on_whatsapp"     # the number has no WhatsApp account
    SALON_NOT_LINKED = "salon_not_linked"   # the salon's WhatsApp was unlinked before it was sent
    SEND_ERROR = "send_error"               # WhatsApp refused it


class OutboundRequest(BaseModel):
    """`POST /salons/{salon_id}/messages`: `id` is the caller's (the same id twice sends once),
    `to` an E.164 number (`+79001112233`), `text` 1 to 4096 characters."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    id: CallerId
    to: str
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)

    @field_validator("to")
    @classmethod
    def _e164(cls, value: str) -> str:
        if not _E164.match(value):
            raise ValueError("`to` must be an E.164 number: + and 8 to 15 digits")
        return value

    @field_validator("text")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("`text` is empty")
        if "\x00" in value or any(0xD800 <= ord(ch) <= 0xDFFF for ch in value):
            raise ValueError("`text` holds a NUL or a lone surrogate")
        return value

    @property
    def to_digits(self) -> str:
        return self.to.removeprefix("+")


class OutboundStatus(BaseModel):
    """What `GET /salons/{salon_id}/messages/{id}` answers (and the 202 of the POST)."""

    model_config = ConfigDict(extra="ignore", defer_build=True)

    id: str
    salon_id: int
    to: str
    status: MessageStatus
    reason: str | None = None
    wa_message_id: str | None = None
    created_at: float
    updated_at: float


class Chat(BaseModel):
    phone: str | None = Field(None, description='E.164 ("+79001112233"); null for a chat WhatsApp names '
                                                'only by a linked id (`@lid`)')
    jid: str


class InboundMessage(BaseModel):
    """One message of a client's chat with the salon, as AI Admin reads it off the inbound queue
    (FIFO, grouped per salon and chat, deduplicated on `wa_message_id`)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    schema_version: Literal[1] = 1
    type: Literal["message"] = "message"
    salon_id: int
    chat: Chat
    wa_message_id: str
    at: float = Field(description="WhatsApp's timestamp, epoch seconds")
    kind: MessageKind
    text: str = Field("", description="the text, or a media message's caption")
    push_name: str = ""
    quoted_id: str | None = None
    from_me: bool = Field(False, description="written on the salon's own phone, not by the client")


class ReceiptEvent(BaseModel):
    """A message AI Admin sent was delivered or read (same queue, `type` tells them apart)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    schema_version: Literal[1] = 1
    type: Literal["receipt"] = "receipt"
    salon_id: int
    id: str = Field(description="the caller's id of the message")
    wa_message_id: str
    status: Literal["delivered", "read"]
    at: float
