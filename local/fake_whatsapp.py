"""Simulated WhatsApp servers and phone, for the local stack and the tests.

The runner's simulated engine connects here as a whatsmeow client would connect to
WhatsApp. A pairing attempt gets 6 refs, valid 60 s then 5 x 20 s (times `time_scale`);
the simulated phone scans by posting the decoded QR string to `POST /_local/whatsapp/scan`,
which pairs the session only if that string is the attempt's *current, unexpired* code
with the keys the client announced (an old, foreign or altered code is refused, as
WhatsApp would). A device that connects twice replaces its older stream.
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


@dataclass
class PairingAttempt:
    session: str
    socket: web.WebSocketResponse
    keys: tuple[str, str, str]
    refs: list[str]
    windows: list[tuple[float, float]]
    used: bool = False

    def current_ref(self, now: float) -> str | None:
        for ref, (start, end) in zip(self.refs, self.windows, strict=True):
            if start <= now < end:
                return ref
        return None


@dataclass
class Device:
    device_id: str
    session: str
    jid: str
    socket: web.WebSocketResponse | None = None
    resumes: int = 0  # connections with the stored device id (no scan)


@dataclass
class FakeWhatsApp:
    time_scale: float = 1.0
    attempts: dict[str, PairingAttempt] = field(default_factory=dict)
    devices: dict[str, Device] = field(default_factory=dict)
    pairing_attempts: dict[str, int] = field(default_factory=dict)  # per session
    streams_replaced: int = 0  # a device connected twice: two clients had the same keys

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/_local/whatsapp/socket", self.socket),
            web.post("/_local/whatsapp/scan", self.scan),
            web.post("/_local/whatsapp/logout", self.logout),
            web.post("/_local/whatsapp/unlink", self.unlink),
            web.get("/_local/whatsapp/devices", self.device_list),
            web.post("/_local/whatsapp/garble", self.garble),
        ]

    async def socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20)
        await ws.prepare(request)
        try:
            hello = await ws.receive_json(timeout=10)
        except (TypeError, ValueError, TimeoutError):
            await ws.close(code=4000, message=b"expected hello")
            return ws
        device_id = hello.get("device_id")
        if device_id:
            await self._resume(ws, str(device_id))
        else:
            await self._start_pairing(ws, hello)
        async for message in ws:
            if message.type == WSMsgType.ERROR:
                break
        for device in self.devices.values():
            if device.socket is ws:
                device.socket = None
        return ws

    async def _resume(self, ws: web.WebSocketResponse, device_id: str) -> None:
        device = self.devices.get(device_id)
        if device is None:
            # Unknown or unlinked device: WhatsApp answers 401 logged out.
            await ws.send_json({"type": "logged-out", "reason": "401"})
            await ws.close()
            return
        if device.socket is not None and not device.socket.closed:
            self.streams_replaced += 1
            await device.socket.send_json({"type": "stream-replaced"})
            await device.socket.close()
        device.resumes += 1
        device.socket = ws
        await ws.send_json({"type": "connected", "jid": device.jid})

    async def _start_pairing(self, ws: web.WebSocketResponse, hello: dict[str, Any]) -> None:
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

    async def scan(self, request: web.Request) -> web.Response:
        """The simulated phone: `{"qr": "<decoded QR string>"}`."""
        try:
            body = await request.json()
            qr = body["qr"]
            if not isinstance(qr, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return _error(400, 'expected JSON {"qr": "<decoded QR string>"}')
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
        if attempt.socket.closed:
            return _error(410, "client is no longer connected")
        attempt.used = True
        for ref in attempt.refs:
            self.attempts.pop(ref, None)
        jid = f"7900{secrets.randbelow(10**7):07d}.0:{secrets.randbelow(90) + 10}@s.whatsapp.net"
        device = Device(secrets.token_hex(8), attempt.session, jid)
        self.devices[device.device_id] = device
        device.socket = attempt.socket
        await attempt.socket.send_json({"type": "pair-success", "jid": device.jid, "device_id": device.device_id})
        await attempt.socket.send_json({"type": "connected", "jid": device.jid})
        return web.json_response({"status": "paired", "session": attempt.session})

    async def logout(self, request: web.Request) -> web.Response:
        """The client unlinks itself (uninstall)."""
        try:
            device_id = str((await request.json())["device_id"])
        except (ValueError, KeyError, TypeError):
            return _error(400, "expected JSON {\"device_id\": ...}")
        self.devices.pop(device_id, None)
        return web.json_response({"status": "logged out"})

    async def unlink(self, request: web.Request) -> web.Response:
        """The phone unlinks the salon's device: the client gets `logged-out`."""
        try:
            session = str((await request.json())["session"])
        except (ValueError, KeyError, TypeError):
            return _error(400, "expected JSON {\"session\": ...}")
        for device_id, device in list(self.devices.items()):
            if device.session == session:
                del self.devices[device_id]
                if device.socket is not None and not device.socket.closed:
                    await device.socket.send_json({"type": "logged-out", "reason": "401"})
                return web.json_response({"status": "unlinked"})
        return _error(404, "no linked device for this session")

    async def device_list(self, _request: web.Request) -> web.Response:
        """For tests and benchmarks: who is linked, connected, resumed; pairings; replacements."""
        return web.json_response({
            "devices": [{"device_id": d.device_id, "session": d.session, "resumes": d.resumes,
                         "connected": d.socket is not None and not d.socket.closed} for d in self.devices.values()],
            "pairing_attempts": self.pairing_attempts,
            "streams_replaced": self.streams_replaced,
        })

    async def garble(self, request: web.Request) -> web.Response:
        """Fault injection: send the salon's connected device a frame no client can parse."""
        try:
            session = str((await request.json())["session"])
        except (ValueError, KeyError, TypeError):
            return _error(400, "expected JSON {\"session\": ...}")
        for device in self.devices.values():
            if device.session == session and device.socket is not None and not device.socket.closed:
                await device.socket.send_str("\x00garbled frame")
                return web.json_response({"status": "sent"})
        return _error(404, "no connected device for this session")


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=json.dumps({"error": message}), content_type="application/json")
