"""Opt-in: link a real phone through neonize and real WhatsApp (needs internet and a phone).

    AIADMIN_LIVE_WHATSAPP=1 .venv/bin/pytest tests/live -s
    AIADMIN_LIVE_WHATSAPP=1 AIADMIN_LIVE_PHONE="+7 900 123-45-67" .venv/bin/pytest tests/live -s

Without a phone number the QR code is printed in the terminal: scan it with WhatsApp on the
phone (Settings -> Linked devices -> Link a device) within 160 s. With a number, a pairing
code is printed instead: enter it on that phone ("Link with phone number instead"). The
test then restarts the engine (the session must resume from its SQLite file without a new
scan) and logs out (the device leaves the phone's list and the key file is removed)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from aiadmin.phones import normalise_phone
from wa_runner.engine import EngineEvent, EventKind
from wa_runner.keys import SqliteKeyFiles

pytestmark = pytest.mark.skipif(
    os.environ.get("AIADMIN_LIVE_WHATSAPP") != "1",
    reason="live WhatsApp test: set AIADMIN_LIVE_WHATSAPP=1 (optionally AIADMIN_LIVE_PHONE=+7...) and run "
           "`.venv/bin/pytest tests/live -s` with a phone at hand; see this file's docstring",
)
SALON = 990001


async def _next(engine: object, kinds: set[EventKind], timeout: float) -> EngineEvent:
    queue: asyncio.Queue[EngineEvent] = engine.events  # type: ignore[attr-defined]
    while True:
        event = await asyncio.wait_for(queue.get(), timeout)
        print(f"  engine event: {event.kind.value} {event.detail}", flush=True)
        if event.kind in kinds:
            return event
        if event.kind in (EventKind.QR_TIMEOUT, EventKind.LINK_REFUSED, EventKind.PASSKEY_REQUIRED,
                          EventKind.PAIRING_CODE_FAILED, EventKind.LOGGED_OUT, EventKind.BANNED,
                          EventKind.CLIENT_OUTDATED):
            pytest.fail(f"linking ended with {event.kind.value}: {event.detail}")


def test_a_real_phone_links_resumes_and_logs_out(tmp_path: Path) -> None:
    import segno

    from wa_runner.neonize_engine import NeonizeEngine

    keys = SqliteKeyFiles(tmp_path)
    phone = os.environ.get("AIADMIN_LIVE_PHONE")

    async def scenario() -> None:
        engine = NeonizeEngine(keys)
        await engine.start(SALON, 1)
        if phone:
            await engine.request_pairing_code(SALON, normalise_phone(phone))
            code = await _next(engine, {EventKind.PAIRING_CODE}, 60)
            print(f"\n  Enter this code on the phone: {code.code}\n", flush=True)
        else:
            qr = await _next(engine, {EventKind.QR}, 60)
            assert qr.code is not None
            segno.make_qr(qr.code).terminal(compact=True)
            print("  Scan it with WhatsApp within 160 s (new codes are printed as they come).", flush=True)
        linked = await _next(engine, {EventKind.PAIR_SUCCESS}, 170)
        await _next(engine, {EventKind.CONNECTED}, 60)
        assert keys.device_jid(SALON) == linked.detail
        await engine.close()

        resumed = NeonizeEngine(keys)
        await resumed.start(SALON, 2)
        await _next(resumed, {EventKind.CONNECTED}, 60)  # no QR on the way: resumed from the file
        await resumed.stop(SALON, logout=True)
        assert not keys.path(SALON).exists()
        await resumed.close()

    asyncio.run(scenario())
