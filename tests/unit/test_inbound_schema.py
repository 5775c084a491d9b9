"""The committed schema of the inbound queue (`schemas/inbound-v1.json`, AI Admin's contract) is the
one the models give: regenerate it with `python -m schemas.generate` after changing them (and
think about version 2 if a change is not backwards compatible)."""

from __future__ import annotations

import json

from aiadmin.messages import InboundMessage, ReceiptEvent
from schemas.generate import SCHEMA_FILE, inbound_schema, render


def test_the_committed_inbound_schema_is_up_to_date() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == render(), \
        "schemas/inbound-v1.json is out of date: run `python -m schemas.generate` and commit it"


def test_the_schema_describes_both_records_by_their_wire_names() -> None:
    schema = inbound_schema()
    definitions = schema["$defs"]
    assert {"InboundMessage", "ReceiptEvent", "Chat"} <= set(definitions)
    message = definitions["InboundMessage"]["properties"]
    assert message["schema_version"]["const"] == 1
    assert message["type"]["const"] == "message" and definitions["ReceiptEvent"]["properties"]["type"]["const"] == \
        "receipt"
    assert {"salon_id", "chat", "wa_message_id", "at", "kind"} <= set(definitions["InboundMessage"]["required"])


def test_a_record_as_the_runner_writes_it_reads_back() -> None:
    record = InboundMessage(salon_id=1, chat={"phone": "+79001112233", "jid": "79001112233@s.whatsapp.net"},
                            wa_message_id="3EB0", at=1.5, kind="text", text="Привет")
    body = json.loads(record.model_dump_json())
    assert body["schema_version"] == 1 and body["type"] == "message"
    assert InboundMessage.model_validate(body) == record
    receipt = ReceiptEvent(salon_id=1, id="m-1", wa_message_id="3EB1", status="read", at=2.0)
    assert ReceiptEvent.model_validate_json(receipt.model_dump_json()) == receipt
