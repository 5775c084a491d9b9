"""Writes `schemas/inbound-v1.json`, the JSON schema of the inbound queue's records (what AI Admin
reads), from the pydantic models in `aiadmin.messages`: `python -m schemas.generate`.
`tests/unit/test_inbound_schema.py` fails while the committed file differs from the models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMA_FILE = Path(__file__).resolve().parent / "inbound-v1.json"


def inbound_schema() -> dict[str, Any]:
    from pydantic import TypeAdapter

    from aiadmin.messages import INBOUND_SCHEMA_VERSION, InboundMessage, ReceiptEvent

    schema = TypeAdapter(InboundMessage | ReceiptEvent).json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"aiadmin.inbound/v{INBOUND_SCHEMA_VERSION}",
        "title": "AI Admin inbound queue record (a client's message, or a receipt of a message AI Admin sent)",
        "description": ("One SQS FIFO message body: `type` is `message` or `receipt`; `schema_version` names "
                        "this schema's version. Group: `<salon id>-<client's digits>`; deduplication id: "
                        "WhatsApp's message id (a receipt's: `<id>-<status>`)."),
        **schema,
    }


def render() -> str:
    return json.dumps(inbound_schema(), ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def main() -> None:
    SCHEMA_FILE.write_text(render(), encoding="utf-8")
    print(f"wrote {SCHEMA_FILE}")


if __name__ == "__main__":
    main()
