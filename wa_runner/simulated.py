"""Simulated engine: a WhatsApp client that talks to the local stack's simulated WhatsApp
server over a WebSocket, following the whatsmeow pairing flow closely enough that the
runner cannot tell it from the real thing.

Flow: connect -> (no keys) send our public keys, receive `pair-device` with 6 refs and their
timeouts (60 s, then 5 x 20 s, scaled) -> emit one QR per ref on that schedule -> the phone
scans -> `pair-success` (we store the device keys) -> `connected`. With stored keys we send
our device id and the server answers `connected` directly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import time
from pathlib import Path

import aiohttp

from wa_runner.engine import EngineEvent, EventKind

QR_PREFIX = "https://wa.me/settings/linked_devices#"
CLIENT_TYPE = "1"

_SERVER_EVENTS = {
    "logged-out": EventKind.LOGGED_OUT,
    "stream-replaced": EventKind.STREAM_REPLACED,
    "temp-ban": EventKind.BANNED,
    "client-outdated": EventKind.CLIENT_OUTDATED,
}


def _key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


class SimulatedEngine:
    def __init__(self, server_url: str, sessions_dir: str | Path) -> None:
        self._server_url = server_url.rstrip("/")
        self._sessions_dir = Path(sessions_dir)
        self._sessions_dir.mkdir(parents=True, exist_ok=True)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._http: aiohttp.ClientSession | None = None
        self.events: asyncio.Queue[EngineEvent] = asyncio.Queue()

    def _keys_file(self, salon_id: int) -> Path:
        return self._sessions_dir / f"{salon_id}.json"

    def has_credentials(self, salon_id: int) -> bool:
        return self._keys_file(salon_id).exists()

    def running(self) -> set[int]:
        return {salon_id for salon_id, task in self._tasks.items() if not task.done()}

    async def start(self, salon_id: int, generation: int) -> None:
        await self.stop(salon_id)
        if self._http is None:
            # No connection limit: each session holds one WebSocket (aiohttp allows 100 by default).
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self._tasks[salon_id] = asyncio.create_task(self._session(salon_id, generation))

    async def stop(self, salon_id: int, logout: bool = False) -> None:
        task = self._tasks.pop(salon_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if logout:
            device = self._load_device(salon_id)
            if device is not None and self._http is not None:
                with contextlib.suppress(aiohttp.ClientError):
                    await self._http.post(f"{self._server_url}/_local/whatsapp/logout",
                                          json={"device_id": device["device_id"]})
            self._keys_file(salon_id).unlink(missing_ok=True)

    async def close(self) -> None:
        for salon_id in list(self._tasks):
            await self.stop(salon_id)
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _load_device(self, salon_id: int) -> dict[str, str] | None:
        try:
            return dict(json.loads(self._keys_file(salon_id).read_text()))
        except (OSError, ValueError):
            return None

    def _save_device(self, salon_id: int, device: dict[str, str]) -> None:
        path = self._keys_file(salon_id)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(device))
        os.replace(temporary, path)  # atomic: a crash never leaves half a key file

    async def _session(self, salon_id: int, generation: int) -> None:
        def emit(kind: EventKind, **fields: object) -> None:
            self.events.put_nowait(EngineEvent(kind, salon_id, generation, **fields))  # type: ignore[arg-type]

        assert self._http is not None
        device = self._load_device(salon_id)
        keys = {"noise": _key(), "identity": _key(), "adv": _key()}
        hello: dict[str, object] = {"type": "hello", "session": str(salon_id)}
        if device:
            hello["device_id"] = device["device_id"]
        else:
            hello.update(keys)
        schedule: asyncio.Task[None] | None = None
        try:
            async with self._http.ws_connect(f"{self._server_url}/_local/whatsapp/socket", heartbeat=20) as ws:
                await ws.send_json(hello)
                async for message in ws:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break
                    data = json.loads(message.data)
                    kind = data.get("type")
                    if kind == "pair-device":
                        schedule = asyncio.create_task(self._emit_codes(emit, data["refs"], data["timeouts"], keys))
                    elif kind == "pair-success":
                        if schedule:
                            schedule.cancel()
                        self._save_device(salon_id, {"device_id": data["device_id"], "jid": data["jid"]})
                        emit(EventKind.PAIR_SUCCESS, detail=data["jid"])
                    elif kind == "connected":
                        emit(EventKind.CONNECTED)
                    elif kind in _SERVER_EVENTS:
                        if kind == "logged-out":
                            self._keys_file(salon_id).unlink(missing_ok=True)
                        emit(_SERVER_EVENTS[kind], detail=str(data.get("reason", "")))
                        return
            emit(EventKind.DISCONNECTED)
        except aiohttp.ClientError as exc:
            emit(EventKind.DISCONNECTED, detail=type(exc).__name__)
        finally:
            if schedule:
                schedule.cancel()

    @staticmethod
    async def _emit_codes(emit: object, refs: list[str], timeouts: list[float], keys: dict[str, str]) -> None:
        for ref, timeout in zip(refs, timeouts, strict=True):
            code = QR_PREFIX + ",".join([ref, keys["noise"], keys["identity"], keys["adv"], CLIENT_TYPE])
            emit(EventKind.QR, code=code, expires_at=time.time() + timeout)  # type: ignore[operator]
            await asyncio.sleep(timeout)
        emit(EventKind.QR_TIMEOUT)  # type: ignore[operator]
