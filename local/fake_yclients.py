"""A fake YClients marketplace for the local stack and the tests.

It plays both sides YClients plays: the owner's marketplace UI (a start page listing salons
with a "Подключить" button that sends the browser to our registration redirect, signed as
YClients signs it: URL-safe base64 `user_data` of compact UTF-8 JSON with raw Cyrillic, and
HMAC-SHA256 of the decoded bytes keyed with the partner token) and the partner API our
service calls (`/marketplace/...`, Bearer partner token). It can also send lifecycle
webhooks on demand. Mounted under a path prefix; `YCLIENTS_BASE_URL` points at that prefix.
"""

from __future__ import annotations

import base64
import hmac
import html
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from aiadmin.yclients import sign_user_data

ACTIVATION_WINDOW_SECONDS = 3600


@dataclass
class FakeSalon:
    salon_id: int
    name: str
    owner: str
    phone: str
    status: str | None = None  # None (not installed), pending, active, freezed, uninstalled
    consent_at: float | None = None


def default_salons() -> dict[int, FakeSalon]:
    return {s.salon_id: s for s in [
        FakeSalon(101, "Салон красоты «Лотос»", "Анна Петрова", "79001234567"),
        FakeSalon(102, "Барбершоп «Борода & Ко»", "Дмитрий Иванов", "79007654321"),
        FakeSalon(103, "Студия маникюра <Ноготок>", "Ольга Смирнова", "79005550011"),
    ]}


@dataclass
class FakeYClients:
    partner_token: str
    application_id: int
    prefix: str = "/_yclients"
    redirect_url: str = ""   # our registration redirect (set once the gateway knows its address)
    callback_url: str = ""   # our lifecycle webhook URL
    salons: dict[int, FakeSalon] = field(default_factory=default_salons)
    activations: list[dict[str, Any]] = field(default_factory=list)

    def routes(self) -> list[web.RouteDef]:
        p = self.prefix
        return [
            web.get(p + "/", self.start_page),
            web.post(p + "/connect/{salon_id}", self.connect),
            web.post(p + "/send/{salon_id}/{event}", self.send_webhook),
            web.get(p + "/_state", self.state),
            web.get(p + "/marketplace/salon/{salon_id}/application/{application_id}", self.app_status),
            web.post(p + "/marketplace/partner/callback", self.partner_callback),
        ]

    # ---- the owner's side ----------------------------------------------------------------

    async def start_page(self, request: web.Request) -> web.Response:
        labels = {None: "не подключено", "pending": "ожидает подключения", "active": "активно",
                  "freezed": "заморожено", "uninstalled": "отключено"}
        rows = []
        for salon in self.salons.values():
            status = labels.get(salon.status, salon.status)
            rows.append(
                f'<li data-salon="{salon.salon_id}"><b>{html.escape(salon.name)}</b> '
                f'(#{salon.salon_id}) — <span class="status">{html.escape(str(status))}</span> '
                f'<form method="post" action="{self.prefix}/connect/{salon.salon_id}">'
                f'<button type="submit">Подключить</button></form></li>'
            )
        page = (
            '<!doctype html><html lang="ru"><head><meta charset="utf-8">'
            '<title>YClients Маркетплейс (локальный)</title><link rel="icon" href="data:,">'
            '</head><body><h1>Маркетплейс YClients: AI Admin</h1>'
            '<p>Локальная имитация маркетплейса. Нажмите «Подключить», '
            'чтобы пройти подключение как владелец салона.</p>'
            f'<ul>{"".join(rows)}</ul></body></html>'
        )
        return web.Response(text=page, content_type="text/html")

    def signed_redirect(self, salon: FakeSalon) -> str:
        user = {"id": 5000 + salon.salon_id, "name": salon.owner, "phone": salon.phone,
                "email": f"owner{salon.salon_id}@example.ru", "is_approved": True,
                "avatar": "https://assets.yclients.com/general/0/0d/avatar.png", "salon_name": salon.name}
        raw = json.dumps(user, ensure_ascii=False, separators=(",", ":")).encode()
        query = urlencode({
            "salon_id": salon.salon_id,
            "user_data": base64.urlsafe_b64encode(raw).decode(),
            "user_data_sign": sign_user_data(raw, self.partner_token),
        })
        return f"{self.redirect_url}?{query}"

    async def connect(self, request: web.Request) -> web.Response:
        salon_id = _int(request.match_info["salon_id"])
        if not 0 < salon_id < 10**9:
            raise web.HTTPNotFound(text="no such salon")
        # Any salon of the marketplace can press the button; unknown ones get a made-up profile.
        salon = self.salons.setdefault(salon_id, FakeSalon(salon_id, f"Салон №{salon_id}", "Мария Кузнецова",
                                                           "79000000000"))
        if salon.status != "active":
            salon.status = "pending"
        salon.consent_at = time.time()
        raise web.HTTPFound(self.signed_redirect(salon))

    async def send_webhook(self, request: web.Request) -> web.Response:
        salon = self.salons.get(_int(request.match_info["salon_id"]))
        event = request.match_info["event"]
        if salon is None:
            raise web.HTTPNotFound(text="no such salon")
        if event == "uninstall":
            salon.status = "uninstalled"
        elif event == "freeze":
            salon.status = "freezed"
        body = {"salon_id": salon.salon_id, "application_id": self.application_id,
                "event": event, "partner_token": self.partner_token}
        async with aiohttp.ClientSession() as http, http.post(self.callback_url, json=body) as response:
            return web.json_response({"status": response.status, "body": await response.text()})

    async def state(self, request: web.Request) -> web.Response:
        return web.json_response({
            "salons": {str(s.salon_id): {"status": s.status, "consent_at": s.consent_at} for s in self.salons.values()},
            "activations": self.activations,
        })

    # ---- the partner API -----------------------------------------------------------------

    def _authorised(self, request: web.Request) -> bool:
        expected = f"Bearer {self.partner_token}".encode()
        return hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected)

    async def app_status(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _envelope(401, None, "Неверный токен партнёра")
        salon = self.salons.get(_int(request.match_info["salon_id"]))
        if _int(request.match_info["application_id"]) != self.application_id or salon is None or salon.status is None:
            return _envelope(404, None, "Приложение не установлено")
        return _envelope(200, {"connection_status": {"status": salon.status}, "payments": [], "logs": []})

    async def partner_callback(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _envelope(401, None, "Неверный токен партнёра")
        try:
            body = await request.json()
            salon_id, application_id = int(body["salon_id"]), int(body["application_id"])
            api_key, webhook_urls = body["api_key"], body["webhook_urls"]
        except (ValueError, KeyError, TypeError):
            return _envelope(422, None, "Ошибка валидации", errors={"body": ["salon_id, application_id, api_key"]})
        salon = self.salons.get(salon_id)
        if application_id != self.application_id or salon is None or salon.status is None:
            return _envelope(400, None, "Агрегатор не найден")
        if salon.status == "active":
            return _envelope(403, None, "Пользователь уже установил это приложение")
        if salon.consent_at is None or time.time() - salon.consent_at > ACTIVATION_WINDOW_SECONDS:
            return _envelope(422, None, "Истекло время на подключение")
        salon.status = "active"
        self.activations.append({"salon_id": salon_id, "application_id": application_id, "api_key": api_key,
                                 "webhook_urls": webhook_urls, "channels": body.get("channels"), "at": time.time()})
        return _envelope(201, {"success": True})


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return -1


def _envelope(status: int, data: Any, message: str = "", errors: dict[str, Any] | None = None) -> web.Response:
    meta: dict[str, Any] = {"message": message} if message else {}
    if errors:
        meta["errors"] = errors
    return web.json_response({"success": 200 <= status < 300, "data": data, "meta": meta}, status=status)
