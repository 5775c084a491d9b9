"""Simulated WhatsApp servers and phone, for the local stack and the tests.

The runner's simulated engine connects here as a whatsmeow client would connect to
WhatsApp. A pairing attempt gets 6 refs, valid 60 s then 5 x 20 s (times `time_scale`);
the simulated phone scans by posting the decoded QR string to `POST /_local/whatsapp/scan`,
which pairs the session only if that string is the attempt's *current, unexpired* code
with the keys the client announced (an old, foreign or altered code is refused, as
WhatsApp would). A device that connects twice replaces its older stream.

Pairing by phone number: once the attempt is up, the client may send `pair-phone` with a
number; the server answers with an 8-character code `XXXX-XXXX`, valid for the rest of
the attempt, which the phone enters with `POST /_local/whatsapp/enter-code`.

What WhatsApp does after a scan or a code is scriptable per scan (`"outcome"`: `success`,
`max_devices`: the phone already has the maximum of linked devices and WhatsApp refuses
the link, `passkey`: WhatsApp asks the new device for a passkey), and a linked session can
be ended later with `POST /_local/whatsapp/session-event` (`logged_out`,
`stream_replaced`, `temp_ban`, `client_outdated`).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

QR_PREFIX = "https://wa.me/settings/linked_devices#"
CODE_TIMEOUTS = (60.0, 20.0, 20.0, 20.0, 20.0, 20.0)
# whatsmeow's linking-code alphabet (Crockford-like base32 without 0, I, O, U).
PAIRING_CODE_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTVWXYZ"
SCAN_OUTCOMES = ("success", "max_devices", "passkey")
TEMP_BAN_SECONDS = 3600.0

# Session events the simulated servers can send to a linked device, and what a later
# resume of that device gets (None: it connects normally).
SESSION_EVENTS: dict[str, dict[str, Any]] = {
    "logged_out": {"type": "logged-out", "reason": "401"},
    "stream_replaced": {"type": "stream-replaced"},
    "temp_ban": {"type": "temp-ban", "reason": "SEND_TO_TOO_MANY_PEOPLE"},
    "client_outdated": {"type": "client-outdated", "reason": "405"},
}


@dataclass
class PairingAttempt:
    session: str
    socket: web.WebSocketResponse
    keys: tuple[str, str, str]
    refs: list[str]
    windows: list[tuple[float, float]]
    used: bool = False
    codes: list[str] = field(default_factory=list)

    def current_ref(self, now: float) -> str | None:
        for ref, (start, end) in zip(self.refs, self.windows, strict=True):
            if start <= now < end:
                return ref
        return None

    @property
    def deadline(self) -> float:
        return self.windows[-1][1]


@dataclass
class PairingCode:
    attempt: PairingAttempt
    phone: str


@dataclass
class Device:
    device_id: str
    session: str
    jid: str
    socket: web.WebSocketResponse | None = None
    # What WhatsApp answers this device's next connections (a ban until a time, an outdated client).
    refusal: dict[str, Any] | None = None
    refused_until: float = float("inf")
    # Streams this device opened (the pairing one included): a resume without a scan adds one.
    connections: int = 1
    resumes: int = 0  # connections with the stored device id (no scan)


@dataclass
class FakeWhatsApp:
    time_scale: float = 1.0
    attempts: dict[str, PairingAttempt] = field(default_factory=dict)
    codes: dict[str, PairingCode] = field(default_factory=dict)
    devices: dict[str, Device] = field(default_factory=dict)
    # Numbers for which WhatsApp refuses to issue a pairing code, with its error.
    code_refusals: dict[str, str] = field(default_factory=dict)
    pairing_attempts: dict[str, int] = field(default_factory=dict)  # per session
    code_phones: dict[str, list[str]] = field(default_factory=dict)  # numbers codes were issued for, per session
    streams_replaced: int = 0  # a device connected twice: two clients had the same keys

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/_local/whatsapp/socket", self.socket),
            web.post("/_local/whatsapp/scan", self.scan),
            web.post("/_local/whatsapp/enter-code", self.enter_code),
            web.post("/_local/whatsapp/refuse-code", self.refuse_code),
            web.post("/_local/whatsapp/session-event", self.session_event),
            web.post("/_local/whatsapp/logout", self.logout),
            web.post("/_local/whatsapp/unlink", self.unlink),
            web.get("/_local/whatsapp/devices", self.device_list),
            web.post("/_local/whatsapp/garble", self.garble),
        ]

    # ---- the client's connection -------------------------------------------------------

    async def socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20)
        await ws.prepare(request)
        try:
            hello = await ws.receive_json(timeout=10)
        except (TypeError, ValueError, TimeoutError):
            await ws.close(code=4000, message=b"expected hello")
            return ws
        device_id = hello.get("device_id")
        attempt = None
        if device_id:
            await self._resume(ws, str(device_id))
        else:
            attempt = await self._start_pairing(ws, hello)
        async for message in ws:
            if message.type == WSMsgType.ERROR:
                break
            if message.type == WSMsgType.TEXT and attempt is not None:
                await self._client_request(ws, attempt, message.data)
        for device in self.devices.values():
            if device.socket is ws:
                device.socket = None
        return ws

    async def _resume(self, ws: web.WebSocketResponse, device_id: str) -> None:
        device = self.devices.get(device_id)
        if device is None:
            # Unknown or unlinked device: WhatsApp answers 401 logged out.
            await ws.send_json(SESSION_EVENTS["logged_out"])
            await ws.close()
            return
        if device.refusal is not None and time.time() < device.refused_until:
            await ws.send_json(device.refusal)
            await ws.close()
            return
        device.refusal = None
        device.connections += 1
        if device.socket is not None and not device.socket.closed:
            self.streams_replaced += 1
            await device.socket.send_json(SESSION_EVENTS["stream_replaced"])
            await device.socket.close()
        device.resumes += 1
        device.socket = ws
        await ws.send_json({"type": "connected", "jid": device.jid})

    async def _start_pairing(self, ws: web.WebSocketResponse, hello: dict[str, Any]) -> PairingAttempt:
        keys = (str(hello.get("noise", "")), str(hello.get("identity", "")), str(hello.get("adv", "")))
        refs = [f"2@{base64.b64encode(secrets.token_bytes(60)).decode()}" for _ in CODE_TIMEOUTS]
        timeouts = [t * self.time_scale for t in CODE_TIMEOUTS]
        start = time.time()
        windows = []
        for timeout in timeouts:
            windows.append((start, start + timeout))
            start += timeout
        attempt = PairingAttempt(str(hello.get("session", "")), ws, keys, refs, windows)
        self.pairing_attempts[attempt.session] = self.pairing_attempts.get(attempt.session, 0) + 1
        for ref in refs:
            self.attempts[ref] = attempt
        await ws.send_json({"type": "pair-device", "refs": refs, "timeouts": timeouts})
        return attempt

    async def _client_request(self, ws: web.WebSocketResponse, attempt: PairingAttempt, data: str) -> None:
        """`pair-phone`: the client asks for a pairing code for a number (whatsmeow's PairPhone)."""
        try:
            request = json.loads(data)
        except ValueError:
            return
        if not isinstance(request, dict) or request.get("type") != "pair-phone":
            return
        phone = str(request.get("phone", ""))
        error = None
        if not phone.isdigit() or not 7 <= len(phone) <= 15 or phone.startswith("0"):
            error = "400 bad-request: phone number must be international digits"
        elif attempt.used or time.time() >= attempt.deadline:
            error = "410 attempt is over"
        elif phone in self.code_refusals:
            error = self.code_refusals[phone]
        if error:
            await ws.send_json({"type": "pair-phone-error", "error": error})
            return
        code = "".join(secrets.choice(PAIRING_CODE_ALPHABET) for _ in range(8))
        self.codes[code] = PairingCode(attempt, phone)
        self.code_phones.setdefault(attempt.session, []).append(phone)
        attempt.codes.append(code)
        await ws.send_json({"type": "pair-phone-code", "code": f"{code[:4]}-{code[4:]}"})

    # ---- the simulated phone -----------------------------------------------------------

    async def scan(self, request: web.Request) -> web.Response:
        """The simulated phone scans: `{"qr": "<decoded QR string>", "outcome": "success"}` (with
        `"phone": "79001234567"`, the scanning phone's number: the linked device's JID carries it)."""
        read = await _phone_request(request, "qr", "<decoded QR string>")
        if isinstance(read, web.Response):
            return read
        body, qr, outcome = read
        payload = qr[len(QR_PREFIX):] if qr.startswith(QR_PREFIX) else qr
        parts = payload.split(",")
        if len(parts) not in (4, 5):
            return _error(400, "not a WhatsApp linking code")
        attempt = self.attempts.get(parts[0])
        if attempt is None:
            return _error(404, "unknown code")
        if attempt.used:
            return _error(409, "this attempt is already paired")
        if tuple(parts[1:4]) != attempt.keys:
            return _error(400, "code does not match the client's keys")
        if attempt.current_ref(time.time()) != parts[0]:
            return _error(410, "code expired")
        phone = body.get("phone")
        return await self._finish_pairing(attempt, outcome, phone if isinstance(phone, str) else None)

    async def enter_code(self, request: web.Request) -> web.Response:
        """The simulated phone enters a pairing code: `{"code": "ABCD-EFGH", "outcome": "success"}`
        (with `"phone"`, only the phone of that number may enter it)."""
        read = await _phone_request(request, "code", "XXXX-XXXX")
        if isinstance(read, web.Response):
            return read
        body, raw, outcome = read
        code = raw.replace("-", "").replace(" ", "").upper()
        issued = self.codes.get(code)
        if issued is None:
            return _error(404, "unknown code")
        if "phone" in body and str(body["phone"]) != issued.phone:
            return _error(403, "this code was issued for another number")
        if issued.attempt.used:
            return _error(409, "this attempt is already paired")
        if time.time() >= issued.attempt.deadline:
            return _error(410, "code expired")
        # The code was asked for this number: the device links to that account.
        return await self._finish_pairing(issued.attempt, outcome, issued.phone)

    async def _finish_pairing(self, attempt: PairingAttempt, outcome: str, phone: str | None = None) -> web.Response:
        if attempt.socket.closed:
            return _error(410, "client is no longer connected")
        attempt.used = True
        for ref in attempt.refs:
            self.attempts.pop(ref, None)
        for code in attempt.codes:
            self.codes.pop(code, None)
        if outcome == "max_devices":
            # The phone shows "maximum number of linked devices"; the new device gets a pair error.
            await attempt.socket.send_json({"type": "pair-error", "error": "max linked devices reached"})
            return web.json_response({"status": "refused", "reason": "max_devices", "session": attempt.session})
        if outcome == "passkey":
            # WhatsApp's passkey step (whatsmeow: PairPasskeyRequest): only a browser with the
            # phone's passkey can answer it.
            await attempt.socket.send_json({"type": "passkey-request", "rp_id": "whatsapp.com"})
            return web.json_response({"status": "passkey_required", "session": attempt.session})
        number = phone if phone and phone.isdigit() and 6 <= len(phone) <= 15 else f"7900{secrets.randbelow(10**7):07d}"
        jid = f"{number}.0:{secrets.randbelow(90) + 10}@s.whatsapp.net"
        device = Device(secrets.token_hex(8), attempt.session, jid)
        self.devices[device.device_id] = device
        device.socket = attempt.socket
        await attempt.socket.send_json({"type": "pair-success", "jid": device.jid, "device_id": device.device_id})
        await attempt.socket.send_json({"type": "connected", "jid": device.jid})
        return web.json_response({"status": "paired", "session": attempt.session})

    async def refuse_code(self, request: web.Request) -> web.Response:
        """Script WhatsApp's answer to code requests for a number:
        `{"phone": "79001234567", "error": "429 rate-overlimit"}` (`"error": null` lifts it)."""
        body = await _json_body(request)
        phone = body.get("phone")
        if not isinstance(phone, str):
            return _error(400, 'expected JSON {"phone": "<digits>", "error": "<text>"}')
        error = body.get("error")
        if error:
            self.code_refusals[phone] = str(error)
        else:
            self.code_refusals.pop(phone, None)
        return web.json_response({"status": "ok"})

    # ---- later events of a linked session ----------------------------------------------

    async def session_event(self, request: web.Request) -> web.Response:
        """`{"session": "<salon id>", "event": "logged_out|stream_replaced|temp_ban|client_outdated"}`."""
        body = await _json_body(request)
        session = body.get("session")
        event = body.get("event")
        if session is None or event not in SESSION_EVENTS:
            return _error(400, f'expected JSON {{"session": ..., "event": one of {", ".join(SESSION_EVENTS)}}}')
        return await self._end_session(str(session), event)

    async def _end_session(self, session: str, event: str) -> web.Response:
        device = next((d for d in self.devices.values() if d.session == session), None)
        if device is None:
            return _error(404, "no linked device for this session")
        message = dict(SESSION_EVENTS[event])
        if event == "logged_out":
            del self.devices[device.device_id]
        elif event == "temp_ban":
            message["expire"] = int(TEMP_BAN_SECONDS * self.time_scale)
            device.refusal, device.refused_until = message, time.time() + TEMP_BAN_SECONDS * self.time_scale
        elif event == "client_outdated":
            device.refusal, device.refused_until = message, float("inf")
        live = device.socket is not None and not device.socket.closed
        if live and device.socket is not None:
            await device.socket.send_json(message)
            await device.socket.close()
        return web.json_response({"status": "sent" if live else "recorded", "event": event})

    async def logout(self, request: web.Request) -> web.Response:
        """The client unlinks itself (uninstall)."""
        body = await _json_body(request)
        if "device_id" not in body:
            return _error(400, "expected JSON {\"device_id\": ...}")
        self.devices.pop(str(body["device_id"]), None)
        return web.json_response({"status": "logged out"})

    async def unlink(self, request: web.Request) -> web.Response:
        """The phone unlinks the salon's device: the session event `logged_out`."""
        body = await _json_body(request)
        if "session" not in body:
            return _error(400, "expected JSON {\"session\": ...}")
        return await self._end_session(str(body["session"]), "logged_out")


    async def device_list(self, _request: web.Request) -> web.Response:
        """For tests and benchmarks: who is linked, connected, resumed; pairings; replacements."""
        return web.json_response({
            "devices": [{"device_id": d.device_id, "session": d.session, "jid": d.jid, "resumes": d.resumes,
                         "connections": d.connections,
                         "connected": d.socket is not None and not d.socket.closed} for d in self.devices.values()],
            "pairing_attempts": self.pairing_attempts,
            "code_phones": self.code_phones,
            "streams_replaced": self.streams_replaced,
        })

    async def garble(self, request: web.Request) -> web.Response:
        """Fault injection: send the salon's connected device a frame that crashes its session task."""
        try:
            session = str((await request.json())["session"])
        except (ValueError, KeyError, TypeError):
            return _error(400, "expected JSON {\"session\": ...}")
        for device in self.devices.values():
            if device.session == session and device.socket is not None and not device.socket.closed:
                # Valid JSON of a shape no client expects: the engine's task dies on it (an engine
                # bug, as far as the runner can tell), which is what the runner must survive.
                await device.socket.send_str("[\"garbled\"]")
                return web.json_response({"status": "sent"})
        return _error(404, "no connected device for this session")

async def _json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; an empty one for anything else (the caller answers 400)."""
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


async def _phone_request(request: web.Request, field: str,
                         example: str) -> tuple[dict[str, Any], str, str] | web.Response:
    """What the simulated phone sends (a scanned QR, an entered code): the body, its `field` and
    the outcome asked for; a 400 answer when either is missing or wrong."""
    body = await _json_body(request)
    value = body.get(field)
    if not isinstance(value, str):
        return _error(400, f'expected JSON {{"{field}": "{example}", "outcome": "success"}}')
    outcome = body.get("outcome", "success")
    if outcome not in SCAN_OUTCOMES:
        return _error(400, f"outcome must be one of {', '.join(SCAN_OUTCOMES)}")
    return body, value, str(outcome)


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=json.dumps({"error": message}), content_type="application/json")
