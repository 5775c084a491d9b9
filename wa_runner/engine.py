"""The engine interface: "a WhatsApp session" as the runner sees it.

Two implementations: `simulated` (talks to the local stack's simulated WhatsApp server,
for development and tests) and `neonize` (real WhatsApp). Engines report what happens as
`EngineEvent`s on one queue; the runner turns them into salon states. Both keep a salon's
keys in the same place (`wa_runner.keys`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class EventKind(StrEnum):
    QR = "qr"                          # a new code to show (code, expires_at)
    QR_TIMEOUT = "qr_timeout"          # all codes of the attempt expired
    PAIRING_CODE = "pairing_code"      # a code for the owner's phone number (code, expires_at)
    PAIRING_CODE_FAILED = "pairing_code_failed"  # WhatsApp gave no code for that number
    PAIR_SUCCESS = "pair_success"      # the phone scanned (or entered the code) and accepted
    LINK_REFUSED = "link_refused"      # WhatsApp refused the link (e.g. maximum of linked devices)
    PASSKEY_REQUIRED = "passkey_required"  # WhatsApp asks for a passkey: a server cannot give one
    CONNECTED = "connected"            # the linked session is up
    LOGGED_OUT = "logged_out"          # the phone unlinked the device: do not reconnect
    STREAM_REPLACED = "stream_replaced"
    BANNED = "banned"
    CLIENT_OUTDATED = "client_outdated"
    DISCONNECTED = "disconnected"      # transport lost; the engine may reconnect
    MESSAGE = "message"                # a chat message to or from the salon's number (`message`)
    RECEIPT = "receipt"                # a message we sent was delivered or read (`receipt`)


@dataclass(frozen=True)
class ChatMessage:
    """A one-to-one chat message the salon's linked device received (a client wrote) or sent
    from the salon's own phone (`from_me`). Engines report no group, status broadcast,
    newsletter or history-sync message."""

    wa_id: str               # WhatsApp's message id
    chat_phone: str          # the client's number, international digits ("79001112233")
    chat_jid: str            # the chat's JID ("79001112233@s.whatsapp.net")
    at: float                # WhatsApp's timestamp, epoch seconds
    kind: str                # "text", "image", "video", "audio", "document", "sticker", "location",
                             # "contact", "reaction", "other"
    text: str = ""           # the text, or a media message's caption
    push_name: str = ""      # the client's WhatsApp display name
    quoted_id: str | None = None  # the WhatsApp id of the message it replies to
    from_me: bool = False    # written on the salon's own phone, not by the client


@dataclass(frozen=True)
class Receipt:
    """WhatsApp says messages we sent reached the client's phone (`delivered`) or were seen
    (`read`)."""

    wa_ids: tuple[str, ...]
    chat_phone: str
    status: str              # "delivered" or "read"
    at: float


@dataclass(frozen=True)
class Sent:
    """A message WhatsApp's server took: its id (receipts name it) and when."""

    wa_id: str
    at: float


class SendFailed(Exception):
    """A send that did not happen; `reason` is the message's failure reason (`not_on_whatsapp`,
    `salon_not_linked`, `send_error`). Nothing reached WhatsApp: it is safe to say `failed`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class EngineEvent:
    kind: EventKind
    salon_id: int
    generation: int
    code: str | None = None
    expires_at: float | None = None
    detail: str = ""
    message: ChatMessage | None = None  # MESSAGE
    receipt: Receipt | None = None      # RECEIPT


class WhatsAppEngine(Protocol):
    events: asyncio.Queue[EngineEvent]

    def has_credentials(self, salon_id: int) -> bool:
        """Whether a linked device's keys are stored for the salon (resume without a scan)."""

    async def start(self, salon_id: int, generation: int) -> None:
        """Connect the salon's session: resume with stored keys, or start a QR attempt."""

    async def request_pairing_code(self, salon_id: int, phone: str) -> None:
        """Ask WhatsApp for a pairing code for `phone` (international digits) in the salon's
        running attempt, as soon as its connection is up; reported as PAIRING_CODE or
        PAIRING_CODE_FAILED."""

    async def stop(self, salon_id: int, logout: bool = False) -> None:
        """Disconnect; with `logout`, also unlink the device and delete its keys."""

    def running(self) -> set[int]:
        """Salons whose session task is alive."""

    async def send_text(self, salon_id: int, to_phone: str, text: str) -> Sent:
        """Send `text` to `to_phone` (international digits) from the salon's connected session.
        Raises SendFailed when nothing was sent (not connected, the number is not on WhatsApp);
        any other exception leaves it unknown whether WhatsApp took it."""

    async def close(self) -> None:
        """Stop every session (keys are kept)."""
