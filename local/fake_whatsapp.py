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

Chats (once a device is linked): a client's phone writes to the salon
(`POST /_local/whatsapp/client-message`), the salon's own phone writes to a client
(`salon-phone-message`: the linked device sees it as `from_me`), the device sends
(`{"type": "send", "ref", "to", "text"}` -> `send-ack` with WhatsApp's id, or `send-error`),
and the client's phone answers with receipts (`delivered` while it is online, `read` on
`client-read`). Everything the server sends a device (messages, receipts) is a stanza the
device acks (`{"type": "ack", "id": <stanza>}`); unacked stanzas stay on the server and are
sent again, in order, when the device connects: offline messages, as WhatsApp keeps them.
Which numbers are on WhatsApp: `on_whatsapp` (every number of 7-15 international digits, except
those ending in 0000, unless `client-register` says otherwise; a number that wrote is on it).
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
MESSAGE_KINDS = ("text", "image", "video", "audio", "document", "sticker", "location", "contact", "reaction", "other")
MAX_TEXT_CHARS = 65536          # WhatsApp's own bound on one text
NOT_ON_WHATSAPP_SUFFIX = "0000"  # numbers ending so have no WhatsApp account (unless registered)
USER_SERVER = "s.whatsapp.net"
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
    # Stanzas (messages, receipts) for the device not acked yet, in order; the first `sent` of
    # them went out on the current socket.
    pending: list[dict[str, Any]] = field(default_factory=list)
    sent: int = 0
    flushing: bool = False

    @property
    def phone(self) -> str:
        """The salon's number (the JID's user part)."""
        return self.jid.partition("@")[0].partition(":")[0].partition(".")[0]

    @property
    def live(self) -> bool:
        return self.socket is not None and not self.socket.closed


@dataclass
class InboxEntry:
    """A message the salon's number sent to a client's phone, as that phone shows it."""

    wa_id: str
    session: str
    salon_phone: str
    text: str
    at: float
    status: str = "sent"  # sent (on the server) -> delivered (on the phone) -> read
    from_me_phone: bool = False  # written on the salon's own phone, not sent by its linked device

    def view(self) -> dict[str, Any]:
        salon: int | str = int(self.session) if self.session.isdigit() else self.session
        return {"id": self.wa_id, "salon_id": salon, "from": self.salon_phone, "text": self.text,
                "at": self.at, "status": self.status, "sent_by": "phone" if self.from_me_phone else "device"}


@dataclass
class ClientPhone:
    """A client's phone: online or not, what it received."""

    phone: str
    online: bool = True
    push_name: str = ""
    inbox: list[InboxEntry] = field(default_factory=list)


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
    phones: dict[str, ClientPhone] = field(default_factory=dict)
    # Numbers whose WhatsApp account is set explicitly (`client-register`), or that wrote.
    registered: dict[str, bool] = field(default_factory=dict)
    stanzas: int = 0

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
            web.post("/_local/whatsapp/client-message", self.client_message),
            web.post("/_local/whatsapp/salon-phone-message", self.salon_phone_message),
            web.post("/_local/whatsapp/client-register", self.client_register),
            web.post("/_local/whatsapp/client-offline", self.client_offline),
            web.post("/_local/whatsapp/client-read", self.client_read),
            web.get("/_local/whatsapp/client-inbox", self.client_inbox),
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
            if message.type != WSMsgType.TEXT:
                continue
            device = self._device_on(ws)
            if device is not None:
                await self._device_request(ws, device, message.data)
            elif attempt is not None:
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
        device.sent = 0  # nothing acked went out on this socket yet: all again, in order
        await ws.send_json({"type": "connected", "jid": device.jid})
        await self._flush(device)

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

    # ---- chats: stanzas to a linked device -----------------------------------------------

    def _device_on(self, ws: web.WebSocketResponse) -> Device | None:
        return next((d for d in self.devices.values() if d.socket is ws), None)

    def _device_of(self, session: str) -> Device | None:
        return next((d for d in self.devices.values() if d.session == session), None)

    def _stanza(self, device: Device, frame: dict[str, Any]) -> dict[str, Any]:
        """Keep a stanza for the device until it acks it; the caller flushes."""
        self.stanzas += 1
        stanza = {**frame, "stanza": self.stanzas}
        device.pending.append(stanza)
        return stanza

    async def _flush(self, device: Device) -> None:
        """Send the device's stanzas not yet sent on its socket, in order (one flusher at a time:
        stanzas added meanwhile go out behind the earlier ones)."""
        if device.flushing:
            return
        device.flushing = True
        try:
            while device.live and device.sent < len(device.pending):
                socket = device.socket
                assert socket is not None
                frame = device.pending[device.sent]
                device.sent += 1
                try:
                    await socket.send_json(frame)
                except (ConnectionError, RuntimeError):
                    break  # the socket went away: the device gets it again on reconnect
        finally:
            device.flushing = False

    async def _device_request(self, ws: web.WebSocketResponse, device: Device, data: str) -> None:
        """A linked device's frames: `ack` of a stanza, `send` of a text."""
        try:
            request = json.loads(data)
        except ValueError:
            return
        if not isinstance(request, dict):
            return
        if request.get("type") == "ack":
            for index, stanza in enumerate(device.pending):
                if stanza["stanza"] == request.get("id"):
                    del device.pending[index]
                    if index < device.sent:
                        device.sent -= 1
                    break
        elif request.get("type") == "send":
            await self._device_send(ws, device, request)

    async def _device_send(self, ws: web.WebSocketResponse, device: Device, request: dict[str, Any]) -> None:
        ref, to, text = request.get("ref"), request.get("to"), request.get("text")
        if not isinstance(to, str) or not isinstance(text, str) or not text or len(text) > MAX_TEXT_CHARS:
            await ws.send_json({"type": "send-error", "ref": ref, "error": "bad_request"})
            return
        if not self.on_whatsapp(to):
            await ws.send_json({"type": "send-error", "ref": ref, "error": "not_on_whatsapp"})
            return
        entry = InboxEntry(_message_id(), device.session, device.phone, text, time.time())
        phone = self._phone(to)
        phone.inbox.append(entry)
        await ws.send_json({"type": "send-ack", "ref": ref, "id": entry.wa_id, "at": entry.at})
        if phone.online:
            await self._receipt([entry], phone, "delivered")

    async def _receipt(self, entries: list[InboxEntry], phone: ClientPhone, status: str) -> None:
        """The client's phone reports `entries` delivered or read: one receipt per salon."""
        at = time.time()
        touched: list[Device] = []
        for session in dict.fromkeys(e.session for e in entries):
            ids = [e.wa_id for e in entries if e.session == session]
            for entry in entries:
                if entry.session == session:
                    entry.status = status
            device = self._device_of(session)
            if device is not None:
                self._stanza(device, {"type": "receipt", "ids": ids, "chat": f"{phone.phone}@{USER_SERVER}",
                                      "status": status, "at": at})
                touched.append(device)
        for device in touched:
            await self._flush(device)

    def _phone(self, number: str) -> ClientPhone:
        return self.phones.setdefault(number, ClientPhone(number))

    def on_whatsapp(self, number: str) -> bool:
        """Whether a number has a WhatsApp account: as `client-register` set it (a number that
        wrote is registered); otherwise every valid number (7 to 15 international digits, no
        leading 0) except those ending in 0000."""
        if number in self.registered:
            return self.registered[number]
        return _valid_phone(number) and not number.endswith(NOT_ON_WHATSAPP_SUFFIX)

    # ---- chats: the simulated phones -------------------------------------------------------

    async def client_message(self, request: web.Request) -> web.Response:
        """A client writes to the salon: `{"salon_id": 4101, "from": "79001112233", "text": "...",
        "push_name": "Анна", "quoted_id": "<wa id>", "kind": "text"}` (all but the first three
        optional; for a media kind `text` is its caption and may be empty)."""
        body = await _json_body(request)
        number, text, kind = body.get("from"), body.get("text", ""), body.get("kind", "text")
        push_name, quoted_id = body.get("push_name", ""), body.get("quoted_id")
        problem = _chat_problem(body, number, text)
        if problem is None and kind not in MESSAGE_KINDS:
            problem = f"kind must be one of {', '.join(MESSAGE_KINDS)}"
        elif problem is None and kind == "text" and not str(text).strip():
            problem = "a text message needs a text"
        elif problem is None and (not isinstance(push_name, str) or not isinstance(quoted_id, str | None)):
            problem = "push_name and quoted_id must be strings"
        if problem is not None:
            return _error(400, problem)
        assert isinstance(number, str) and isinstance(text, str) and isinstance(push_name, str)
        device = self._device_of(str(body["salon_id"]))
        if device is None:
            return _error(404, f"salon {body['salon_id']} has no linked WhatsApp device")
        self.registered[number] = True
        phone = self._phone(number)
        phone.push_name = push_name or phone.push_name
        frame = {"type": "message", "id": _message_id(), "chat": f"{number}@{USER_SERVER}", "from_me": False,
                 "push_name": phone.push_name, "text": text, "kind": kind, "quoted_id": quoted_id, "at": time.time()}
        stanza = self._stanza(device, frame)
        await self._flush(device)
        return web.json_response({"status": "delivered" if device.live else "queued", "id": frame["id"],
                                  "at": frame["at"], "stanza": stanza["stanza"]})

    async def salon_phone_message(self, request: web.Request) -> web.Response:
        """The salon's own phone writes to a client: `{"salon_id": 4101, "to": "79001112233",
        "text": "..."}`; the linked device sees it as `from_me`, the client's phone receives it."""
        body = await _json_body(request)
        number, text = body.get("to"), body.get("text")
        problem = _chat_problem(body, number, text, field="to")
        if problem is None and not str(text).strip():
            problem = "a text message needs a text"
        if problem is not None:
            return _error(400, problem)
        assert isinstance(number, str) and isinstance(text, str)
        device = self._device_of(str(body["salon_id"]))
        if device is None:
            return _error(404, f"salon {body['salon_id']} has no linked WhatsApp device")
        if not self.on_whatsapp(number):
            return _error(422, f"{number} is not on WhatsApp")
        entry = InboxEntry(_message_id(), device.session, device.phone, text, time.time(), from_me_phone=True)
        phone = self._phone(number)
        phone.inbox.append(entry)
        frame = {"type": "message", "id": entry.wa_id, "chat": f"{number}@{USER_SERVER}", "from_me": True,
                 "push_name": "", "text": text, "kind": "text", "quoted_id": None, "at": entry.at}
        self._stanza(device, frame)
        await self._flush(device)
        if phone.online:
            await self._receipt([entry], phone, "delivered")
        return web.json_response({"status": "delivered" if device.live else "queued", "id": entry.wa_id,
                                  "at": entry.at})

    async def client_register(self, request: web.Request) -> web.Response:
        """Script whether a number has WhatsApp: `{"phone": "79001110000", "on_whatsapp": true}`
        (`null` returns it to the default rule)."""
        body = await _json_body(request)
        number, value = body.get("phone"), body.get("on_whatsapp", True)
        if not isinstance(number, str) or not _valid_phone(number) or not isinstance(value, bool | None):
            return _error(400, 'expected JSON {"phone": "<7 to 15 digits>", "on_whatsapp": true|false|null}')
        if value is None:
            self.registered.pop(number, None)
        else:
            self.registered[number] = value
        return web.json_response({"phone": number, "on_whatsapp": self.on_whatsapp(number)})

    async def client_offline(self, request: web.Request) -> web.Response:
        """`{"phone": "79001112233", "offline": true}`: messages to it wait on the server (sent, not
        delivered); `false`: it comes back, receives them and reports them delivered."""
        body = await _json_body(request)
        number, offline = body.get("phone"), body.get("offline", True)
        if not isinstance(number, str) or not _valid_phone(number) or not isinstance(offline, bool):
            return _error(400, 'expected JSON {"phone": "<7 to 15 digits>", "offline": true|false}')
        phone = self._phone(number)
        phone.online = not offline
        delivered = [e for e in phone.inbox if e.status == "sent"] if phone.online else []
        if delivered:
            await self._receipt(delivered, phone, "delivered")
        return web.json_response({"phone": number, "online": phone.online, "delivered": len(delivered)})

    async def client_read(self, request: web.Request) -> web.Response:
        """`{"phone": "79001112233"}`: the client opens the chats: every unread message is read."""
        body = await _json_body(request)
        number = body.get("phone")
        if not isinstance(number, str) or not _valid_phone(number):
            return _error(400, 'expected JSON {"phone": "<7 to 15 digits>"}')
        phone = self._phone(number)
        if not phone.online:
            return _error(409, "the phone is offline: it cannot read")
        unread = [e for e in phone.inbox if e.status != "read"]
        if unread:
            await self._receipt(unread, phone, "read")
        return web.json_response({"phone": number, "read": len(unread)})

    async def client_inbox(self, request: web.Request) -> web.Response:
        """`GET ?phone=79001112233`: what the client's phone received, in order."""
        number = request.query.get("phone", "")
        if not _valid_phone(number):
            return _error(400, "expected ?phone=<7 to 15 digits>")
        phone = self.phones.get(number) or ClientPhone(number)
        return web.json_response({"phone": number, "online": phone.online, "on_whatsapp": self.on_whatsapp(number),
                                  "messages": [e.view() for e in phone.inbox]})


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


def _valid_phone(number: object) -> bool:
    return isinstance(number, str) and number.isdigit() and 7 <= len(number) <= 15 and not number.startswith("0")


def _chat_problem(body: dict[str, Any], number: object, text: object, field: str = "from") -> str | None:
    """What is wrong with a chat message request (None: nothing)."""
    salon_id = body.get("salon_id")
    if isinstance(salon_id, bool) or not isinstance(salon_id, int | str) or not str(salon_id).strip():
        return f'expected JSON {{"salon_id": 4101, "{field}": "79001112233", "text": "..."}}'
    if not _valid_phone(number):
        return f"{field} must be a number of 7 to 15 international digits"
    if not isinstance(text, str) or len(text) > MAX_TEXT_CHARS:
        return f"text must be a string of at most {MAX_TEXT_CHARS} characters"
    return None


def _message_id() -> str:
    """A WhatsApp-like message id (as WhatsApp Web makes them)."""
    return "3EB0" + secrets.token_hex(8).upper()
