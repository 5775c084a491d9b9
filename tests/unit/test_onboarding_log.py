"""Every salon state change writes one structured onboarding log line: salon id, state and
reason, and no personal data (the owner's name, phone, e-mail, the salon's keys)."""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Any

from aiadmin.db.transitions import Transition
from aiadmin.models import UserData
from aiadmin.observability import logger, mask_personal
from aiadmin.onboarding import start_onboarding
from aiadmin.states import SalonState


def test_each_state_change_is_one_line_without_personal_data(store: Any) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logger.registered_formatter)
    base = logging.getLogger(logger.name)
    base.addHandler(handler)
    previous = base.level
    base.setLevel(logging.INFO)
    try:
        owner = UserData(name="Анна Смирнова", phone="+7 900 123-45-67", email="anna@example.ru", salon_name="Лотос")
        start_onboarding(store, 77, owner, time.time())
        store.transitions.apply(Transition(
            77, SalonState.QR_READY, "runner", "new QR code", attrs={"qr": "2@secret-qr-payload"}))
        store.transitions.apply(Transition(
            77, SalonState.CODE_FAILED, "runner", "WhatsApp refused +7 (900) 123-45-67: rate-overlimit",
            expected=[SalonState.QR_READY]))
    finally:
        base.removeHandler(handler)
        base.setLevel(previous)
    text = stream.getvalue()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    changes = [line for line in lines if line.get("onboarding")]
    assert [(c["salon_id"], c.get("from_state"), c["state"]) for c in changes] == [
        (77, None, "pending_whatsapp"), (77, "pending_whatsapp", "qr_ready"), (77, "qr_ready", "code_failed")]
    assert changes[-1]["reason"] == "WhatsApp refused <number>: rate-overlimit"
    assert all(c["message"] == "onboarding state changed" and c["level"] == "INFO" and c["actor"] for c in changes)
    written = json.dumps([{k: v for k, v in line.items() if k != "timestamp"} for line in lines], ensure_ascii=False)
    for personal in ("Анна", "Смирнова", "900", "anna@", "Лотос", "secret-qr-payload"):
        assert personal not in written, personal


def test_masking_keeps_ordinary_reasons() -> None:
    assert mask_personal("YClients 422: hour expired") == "YClients 422: hour expired"
    assert mask_personal("write to owner@salon.ru or 8 900 123 45 67") == "write to <email> or <number>"
