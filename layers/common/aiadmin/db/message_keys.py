"""Where messages live in the application table (all under the salon's partition, `SALON#<id>`):

| sk                          | what                                                      | written by          |
|-----------------------------|-----------------------------------------------------------|---------------------|
| `MSG#<caller id>`           | the message: to, text, status, reason, wa id, times; TTL  | API, runner         |
| `Q#<ms, 13 digits>#<caller id>` | its place in the salon's outbox while not yet final   | API; runner deletes |
| `WA#<WhatsApp message id>`  | the caller's id of a sent message, for receipts; TTL      | runner              |
| `CHAT#<client's digits>`    | when the client last wrote (a chat they opened): pace     | runner              |

The session item (`SESSION`) counts the outbox (`queued`, bounded) and is nudged with each new
message like a command (`command_seq`, the owner's index key), so the runner that owns the
session, and after a takeover the new owner, drains the outbox in order."""

from __future__ import annotations

MESSAGE_TTL_SECONDS = 30 * 24 * 3600
RECEIPT_POINTER_TTL_SECONDS = 7 * 24 * 3600


def message_sk(caller_id: str) -> str:
    return f"MSG#{caller_id}"


def queue_sk(enqueued_at: float, caller_id: str) -> str:
    return f"Q#{int(enqueued_at * 1000):013d}#{caller_id}"


def receipt_sk(wa_id: str) -> str:
    return f"WA#{wa_id}"


def chat_sk(phone_digits: str) -> str:
    return f"CHAT#{phone_digits}"
