"""Simulated engine: a WhatsApp client that talks to the local stack's simulated WhatsApp
server over a WebSocket, following the whatsmeow pairing flow closely enough that the
runner cannot tell it from the real thing.

Flow: connect -> (no keys) send our public keys, receive `pair-device` with 6 refs and their
timeouts (60 s, then 5 x 20 s, scaled) -> emit one QR per ref on that schedule -> the phone
scans -> `pair-success` (we store the device keys) -> `connected`. With stored keys we send
our device id and the server answers `connected` directly. Once `pair-device` has arrived
the attempt can also ask for a pairing code for a phone number (`pair-phone`), valid for
the rest of the attempt. WhatsApp may instead refuse the link (`pair-error`) or ask for a
passkey (`passkey-request`).

Chats, once `connected`: the server sends `message` and `receipt` stanzas (reported as MESSAGE /
RECEIPT) and the engine acks each once it is on the runner's queue (as whatsmeow acks after its
handlers ran: until then the server keeps it and sends it again on the next connection);
`send_text` sends `{"type": "send", "ref", "to", "text"}` and waits for `send-ack` (WhatsApp's
id and time) or `send-error` (`not_on_whatsapp`). One socket per session, read by one task:
messages and receipts keep the server's order.

Keys: one SQLite file per salon in the sessions directory, the same layout as neonize's
(`wa_runner.keys`), written atomically at pair success and removed on logout.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from aiadmin.observability import logger
from wa_runner.engine import ChatMessage, EngineEvent, EventKind, Receipt, SendFailed, Sent
from wa_runner.keys import SqliteKeyFiles

QR_PREFIX = "https://wa.me/settings/linked_devices#"
CLIENT_TYPE = "1"
SEND_TIMEOUT_SECONDS = 30.0
MESSAGE_KINDS = frozenset({"text", "image", "video", "audio", "document", "sticker", "location", "contact",
                           "reaction", "other"})

_SERVER_EVENTS = {
    "logged-out": EventKind.LOGGED_OUT,
    "stream-replaced": EventKind.STREAM_REPLACED,
    "temp-ban": EventKind.BANNED,
    "client-outdated": EventKind.CLIENT_OUTDATED,
}

Emit = Callable[..., None]


def _key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass
class _Attempt:
    """What a running session knows about its linking attempt (loop thread only)."""

    ws: aiohttp.ClientWebSocketResponse | None = None
    deadline: float | None = None        # end of the attempt, once `pair-device` has arrived
    pending_phone: str | None = None     # a pairing code asked for before the attempt was up
    connected: bool = False              # the linked session is up: it may send
    sends: dict[str, asyncio.Future[Sent]] = field(default_factory=dict)  # by `ref`, awaiting the answer


class SimulatedEngine:
    def __init__(self, server_url: str, sessions_dir: str | Path) -> None:
        self._server_url = server_url.rstrip("/")
        self._keys = SqliteKeyFiles(sessions_dir)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._attempts: dict[int, _Attempt] = {}
        self._http: aiohttp.ClientSession | None = None
        self._refs = 0
        self.events: asyncio.Queue[EngineEvent] = asyncio.Queue()

    def has_credentials(self, salon_id: int) -> bool:
        return self._keys.device_jid(salon_id) is not None

    def running(self) -> set[int]:
        return {salon_id for salon_id, task in self._tasks.items() if not task.done()}

    async def start(self, salon_id: int, generation: int) -> None:
        await self.stop(salon_id)
        if self._http is None:
            # No connection limit: each session holds one WebSocket (aiohttp allows 100 by default).
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self._attempts[salon_id] = _Attempt()
        self._tasks[salon_id] = asyncio.create_task(self._session(salon_id, generation))

    async def request_pairing_code(self, salon_id: int, phone: str) -> None:
        attempt = self._attempts.get(salon_id)
        if attempt is None:
            self.events.put_nowait(EngineEvent(EventKind.PAIRING_CODE_FAILED, salon_id, 0,
                                               detail="no linking attempt is running"))
            return
        attempt.pending_phone = phone
        if attempt.ws is not None and attempt.deadline is not None:
            await self._send_pair_phone(attempt)

    async def stop(self, salon_id: int, logout: bool = False) -> None:
        task = self._tasks.pop(salon_id, None)
        self._attempts.pop(salon_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if logout:
            device = self._keys.read_row(salon_id, "sim_device_id")
            if device is not None and self._http is not None:
                with contextlib.suppress(aiohttp.ClientError):
                    await self._http.post(f"{self._server_url}/_local/whatsapp/logout",
                                          json={"device_id": device[0]})
            self._keys.remove(salon_id)

    async def send_text(self, salon_id: int, to_phone: str, text: str) -> Sent:
        attempt = self._attempts.get(salon_id)
        ws = attempt.ws if attempt is not None else None
        if attempt is None or ws is None or ws.closed or not attempt.connected:
            raise SendFailed("salon_not_linked", "the salon's session is not connected")
        self._refs += 1
        ref = str(self._refs)
        answer: asyncio.Future[Sent] = asyncio.get_running_loop().create_future()
        attempt.sends[ref] = answer
        try:
            try:
                await ws.send_json({"type": "send", "ref": ref, "to": to_phone, "text": text})
            except (ConnectionError, RuntimeError) as exc:  # the frame never left: nothing was sent
                raise SendFailed("salon_not_linked", type(exc).__name__) from exc
            # A lost connection from here on leaves it unknown whether WhatsApp took it.
            return await asyncio.wait_for(answer, SEND_TIMEOUT_SECONDS)
        finally:
            attempt.sends.pop(ref, None)

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(salon_id) for salon_id in list(self._tasks)))  # all at once
        if self._http is not None:
            await self._http.close()
            self._http = None

    @staticmethod
    async def _send_pair_phone(attempt: _Attempt) -> None:
        phone, attempt.pending_phone = attempt.pending_phone, None
        if attempt.ws is not None and phone:
            await attempt.ws.send_json({"type": "pair-phone", "phone": phone})

    async def _session(self, salon_id: int, generation: int) -> None:
        def emit(kind: EventKind, **fields: object) -> None:
            self.events.put_nowait(EngineEvent(kind, salon_id, generation, **fields))  # type: ignore[arg-type]

        assert self._http is not None
        attempt = self._attempts[salon_id]
        device = self._keys.read_row(salon_id, "sim_device_id")
        keys = {"noise": _key(), "identity": _key(), "adv": _key()}
        hello: dict[str, Any] = {"type": "hello", "session": str(salon_id)}
        if device:
            hello["device_id"] = device[0]
        else:
            hello.update(keys)
        schedule: asyncio.Task[None] | None = None
        try:
            async with self._http.ws_connect(f"{self._server_url}/_local/whatsapp/socket", heartbeat=20) as ws:
                attempt.ws = ws
                await ws.send_json(hello)
                async for message in ws:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break
                    data = json.loads(message.data)
                    kind = data.get("type")
                    if kind == "pair-device":
                        attempt.deadline = time.time() + sum(data["timeouts"])
                        schedule = asyncio.create_task(self._emit_codes(emit, data["refs"], data["timeouts"], keys))
                        if attempt.pending_phone:
                            await self._send_pair_phone(attempt)
                    elif kind == "pair-phone-code":
                        emit(EventKind.PAIRING_CODE, code=data["code"], expires_at=attempt.deadline)
                    elif kind == "pair-phone-error":
                        emit(EventKind.PAIRING_CODE_FAILED, detail=str(data.get("error", "")))
                    elif kind in ("pair-error", "passkey-request"):
                        # WhatsApp ended the attempt: no more codes.
                        if schedule:
                            schedule.cancel()
                        refused = kind == "pair-error"
                        emit(EventKind.LINK_REFUSED if refused else EventKind.PASSKEY_REQUIRED,
                             detail=str(data.get("error", "passkey requested")))
                        return
                    elif kind == "pair-success":
                        if schedule:
                            schedule.cancel()
                        self._keys.write_device(salon_id, {
                            "jid": data["jid"], "sim_device_id": data["device_id"], "noise_key": keys["noise"],
                            "identity_key": keys["identity"], "adv_key": keys["adv"],
                        })
                        emit(EventKind.PAIR_SUCCESS, detail=data["jid"])
                    elif kind == "connected":
                        attempt.connected = True
                        emit(EventKind.CONNECTED)
                    elif kind in ("message", "receipt"):
                        if kind == "message":
                            emit(EventKind.MESSAGE, message=chat_message(data))
                        else:
                            emit(EventKind.RECEIPT, receipt=receipt(data))
                        # On the runner's queue now: WhatsApp may forget it.
                        await ws.send_json({"type": "ack", "id": data["stanza"]})
                    elif kind in ("send-ack", "send-error"):
                        _answer(attempt.sends.get(str(data.get("ref"))), data)
                    elif kind in _SERVER_EVENTS:
                        if kind == "logged-out":
                            self._keys.remove(salon_id)
                        emit(_SERVER_EVENTS[kind], detail=str(data.get("reason", "")))
                        return
            emit(EventKind.DISCONNECTED)
        except aiohttp.ClientError as exc:
            emit(EventKind.DISCONNECTED, detail=type(exc).__name__)
        except (ValueError, KeyError) as exc:
            logger.warning("malformed message from the simulated server", extra={"salon_id": salon_id})
            emit(EventKind.DISCONNECTED, detail=type(exc).__name__)
        finally:
            attempt.ws = None
            attempt.connected = False
            for answer in attempt.sends.values():
                if not answer.done():
                    answer.set_exception(ConnectionError("the connection ended before WhatsApp answered"))
            if schedule:
                schedule.cancel()

    @staticmethod
    async def _emit_codes(emit: Emit, refs: list[str], timeouts: list[float], keys: dict[str, str]) -> None:
        for ref, timeout in zip(refs, timeouts, strict=True):
            code = QR_PREFIX + ",".join([ref, keys["noise"], keys["identity"], keys["adv"], CLIENT_TYPE])
            emit(EventKind.QR, code=code, expires_at=time.time() + timeout)
            await asyncio.sleep(timeout)
        emit(EventKind.QR_TIMEOUT)


def chat_message(frame: dict[str, Any]) -> ChatMessage:
    """A `message` stanza of the simulated server."""
    chat = str(frame["chat"])
    kind = str(frame.get("kind") or "text")
    quoted = frame.get("quoted_id")
    return ChatMessage(wa_id=str(frame["id"]), chat_phone=chat.partition("@")[0], chat_jid=chat,
                       at=float(frame["at"]), kind=kind if kind in MESSAGE_KINDS else "other",
                       text=str(frame.get("text") or ""), push_name=str(frame.get("push_name") or ""),
                       quoted_id=str(quoted) if quoted else None, from_me=bool(frame.get("from_me")))


def receipt(frame: dict[str, Any]) -> Receipt:
    """A `receipt` stanza of the simulated server."""
    ids = frame["ids"]
    if not isinstance(ids, list) or frame.get("status") not in ("delivered", "read"):
        raise ValueError("malformed receipt")
    return Receipt(wa_ids=tuple(str(i) for i in ids), chat_phone=str(frame["chat"]).partition("@")[0],
                   status=str(frame["status"]), at=float(frame["at"]))


def _answer(answer: asyncio.Future[Sent] | None, frame: dict[str, Any]) -> None:
    if answer is None or answer.done():
        return  # a send we gave up on
    if frame.get("type") == "send-ack":
        answer.set_result(Sent(wa_id=str(frame["id"]), at=float(frame["at"])))
    else:
        error = str(frame.get("error") or "")
        reason = "not_on_whatsapp" if error == "not_on_whatsapp" else "send_error"
        answer.set_exception(SendFailed(reason, "" if error == reason else error))
