"""A fake YClients marketplace for the local stack and the tests.

It plays both sides YClients plays: the owner's marketplace UI (a start page listing salons
with a "Подключить" button that sends the browser to our registration redirect, signed as
YClients signs it: URL-safe base64 `user_data` of compact UTF-8 JSON with raw Cyrillic, and
HMAC-SHA256 of the decoded bytes keyed with the partner token) and the partner API our
service calls (`/marketplace/...`, Bearer partner token). It can also send lifecycle
webhooks on demand. Mounted under a path prefix; `YCLIENTS_BASE_URL` points at that prefix.

What it knows of the real marketplace (../shared/yclients-protocol.md):
- several locations: an owner with several salons (the "network" on the start page) connects
  them at once, `salon_ids[]=201&salon_ids[]=202` (or `salon_ids[0]=..` with `?form=indexed`);
  locations already connected are left out unless `?include_connected=1`;
- the activation window: pending links are accepted for 12 hours; after that the consent
  lapses (the status answers 404, the activation 422);
- both signature forms: over the decoded bytes (default) or over the `user_data` string
  (`POST <prefix>/_config {"signature_form": "string"}` or `?sign=string` on a connect), with
  the partner token or a separate signing key (`_config {"signing_key": ...}`);
- duplicate `uninstall` deliveries (`POST <prefix>/send/{salon}/uninstall?times=2`, or
  `_config {"uninstall_deliveries": 2}` for an uninstall through the partner API).
It answers 429 to a client address above 5 requests/s or 200 requests/min (YClients limits
per IP: every process of the local stack calls from 127.0.0.1, so they share one budget, as
tasks behind one NAT address would). Tests script it (`POST <prefix>/_script`): the
next answers of an operation can be any status, an HTML page, a `success: false` envelope or
a slow answer, and `<prefix>/_calls` lists what our service asked.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import hmac
import html
import itertools
import json
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from aiadmin.yclients import sign_user_data

# The platform accepts a pending link for 12 hours (its own notes; the help pages say one hour).
ACTIVATION_WINDOW_SECONDS = 12 * 3600
MAX_DELIVERIES = 5
RATE_LIMIT_PER_SECOND = 5
RATE_LIMIT_PER_MINUTE = 200
DEFAULT_TARIFFS = [
    {"id": 1, "title": "AI Admin: месяц", "price": 2990, "currency_iso": "RUB", "period_days": 30},
    {"id": 2, "title": "AI Admin: год", "price": 29900, "currency_iso": "RUB", "period_days": 365},
]


@dataclass
class FakeSalon:
    salon_id: int
    name: str
    owner: str
    phone: str
    status: str | None = None  # None (not installed), pending, active, freezed, uninstalled
    consent_at: float | None = None
    owner_id: int | None = None  # the owner's YClients user id; several salons share it in a network

    @property
    def user_id(self) -> int:
        return self.owner_id if self.owner_id is not None else 5000 + self.salon_id

    def lapsed(self, now: float) -> bool:
        """A pending link nobody activated within the window is gone."""
        return self.status == "pending" and self.consent_at is not None \
            and now - self.consent_at > ACTIVATION_WINDOW_SECONDS


def default_salons() -> dict[int, FakeSalon]:
    return {s.salon_id: s for s in [
        FakeSalon(101, "Салон красоты «Лотос»", "Анна Петрова", "79001234567"),
        FakeSalon(102, "Барбершоп «Борода & Ко»", "Дмитрий Иванов", "79007654321"),
        FakeSalon(103, "Студия маникюра <Ноготок>", "Ольга Смирнова", "79005550011"),
        # A network: one owner, two locations, connected together.
        FakeSalon(201, "Сеть «Шарм»: Тверская", "Елена Соколова", "79161112233", owner_id=7001),
        FakeSalon(202, "Сеть «Шарм»: Арбат", "Елена Соколова", "79161112233", owner_id=7001),
    ]}


@dataclass
class ScriptedAnswer:
    """One answer a test wants for the next call of an operation."""

    status: int = 200
    body: Any = None            # JSON body; None: the normal envelope for the status
    html: str | None = None     # an HTML page instead of JSON (what a followed redirect returns)
    delay: float = 0.0          # seconds before answering (our client times out at 10 s)
    headers: dict[str, str] = field(default_factory=dict)
    message: str = ""
    passthrough: bool = False   # after the delay, answer as the marketplace normally would

    def response(self) -> web.Response:
        if self.html is not None:
            return web.Response(status=self.status, text=self.html, content_type="text/html", headers=self.headers)
        if self.body is not None:
            return web.json_response(self.body, status=self.status, headers=self.headers)
        response = _envelope(self.status, {"success": True} if self.status < 300 else None, self.message)
        response.headers.update(self.headers)
        return response


@dataclass
class FakeYClients:
    partner_token: str
    application_id: int
    prefix: str = "/_yclients"
    redirect_url: str = ""   # our registration redirect (set once the gateway knows its address)
    callback_url: str = ""   # our lifecycle webhook URL
    salons: dict[int, FakeSalon] = field(default_factory=default_salons)
    activations: list[dict[str, Any]] = field(default_factory=list)
    payments: dict[int, dict[str, Any]] = field(default_factory=dict)
    tariffs: list[dict[str, Any]] = field(default_factory=lambda: list(DEFAULT_TARIFFS))
    channels: dict[str, bool] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)
    scripts: dict[str, deque[ScriptedAnswer]] = field(default_factory=lambda: defaultdict(deque))
    rate_limit: int = RATE_LIMIT_PER_SECOND
    rate_limit_per_minute: int = RATE_LIMIT_PER_MINUTE
    signature_form: str = "decoded"     # or "string": HMAC over the user_data text as sent
    signing_key: str | None = None      # a separate signing key; None: the partner token
    uninstall_deliveries: int = 1       # lifecycle `uninstall` deliveries per uninstall through the API
    _recent: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    _payment_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(9001))

    def routes(self) -> list[web.RouteDef]:
        p = self.prefix
        m = p + "/marketplace"
        return [
            web.get(p + "/", self.start_page),
            web.post(p + "/connect/{salon_id}", self.connect),
            web.post(p + "/connect-locations/{owner_id}", self.connect_locations),
            web.post(p + "/_config", self.configure),
            web.post(p + "/send/{salon_id}/{event}", self.send_webhook),
            web.post(p + "/send-entity/{salon_id}", self.send_entity_webhook),
            web.get(p + "/_state", self.state),
            web.get(p + "/_calls", self.list_calls),
            web.post(p + "/_script", self.script),
            web.post(p + "/_salon/{salon_id}", self.set_salon),
            web.get(m + "/salon/{salon_id}/application/{application_id}", self._api("app_status", self.app_status)),
            web.post(m + "/salon/{salon_id}/application/{application_id}/uninstall",
                     self._api("uninstall", self.uninstall)),
            web.get(m + "/application/{application_id}/salons", self._api("installed_salons", self.installed_salons)),
            web.post(m + "/partner/callback", self._api("activate", self.partner_callback)),
            web.post(m + "/partner/callback/redirect", self._api("activate_redirect", self.partner_callback_redirect)),
            web.post(m + "/partner/payment", self._api("payment", self.payment)),
            web.post(m + "/partner/payment/refund/{payment_id}", self._api("refund", self.refund)),
            web.get(m + "/application/payment_link", self._api("payment_link", self.payment_link)),
            web.get(m + "/application/{application_id}/tariffs", self._api("tariffs", self.list_tariffs)),
            web.post(m + "/application/update_channel", self._api("update_channel", self.update_channel)),
            web.get(p + "/api/v1/company/{salon_id}/users", self._api("salon_users", self.salon_users)),
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
        networks = []
        for owner_id, members in self._networks().items():
            names = ", ".join(html.escape(m.name) for m in members)
            networks.append(
                f'<li data-network="{owner_id}"><b>{html.escape(members[0].owner)}</b>: {names} '
                f'<form method="post" action="{self.prefix}/connect-locations/{owner_id}">'
                f'<button type="submit">Подключить все филиалы</button></form></li>'
            )
        page = (
            '<!doctype html><html lang="ru"><head><meta charset="utf-8">'
            '<title>YClients Маркетплейс (локальный)</title><link rel="icon" href="data:,">'
            '</head><body><h1>Маркетплейс YClients: AI Admin</h1>'
            '<p>Локальная имитация маркетплейса. Нажмите «Подключить», '
            'чтобы пройти подключение как владелец салона.</p>'
            f'<ul>{"".join(rows)}</ul>'
            '<h2>Сети салонов (несколько филиалов)</h2>'
            f'<ul id="networks">{"".join(networks)}</ul></body></html>'
        )
        return web.Response(text=page, content_type="text/html")

    def _networks(self) -> dict[int, list[FakeSalon]]:
        by_owner: dict[int, list[FakeSalon]] = defaultdict(list)
        for salon in self.salons.values():
            by_owner[salon.user_id].append(salon)
        return {owner: members for owner, members in by_owner.items() if len(members) > 1}

    def signed_user_data(self, salon: FakeSalon, form: str | None = None) -> dict[str, str]:
        """`user_data` and `user_data_sign` of the salon's owner, as YClients puts them in the URL."""
        user = {"id": salon.user_id, "name": salon.owner, "phone": salon.phone,
                "email": f"owner{salon.user_id}@example.ru", "is_approved": True,
                "avatar": "https://assets.yclients.com/general/0/0d/avatar.png", "salon_name": salon.name}
        raw = json.dumps(user, ensure_ascii=False, separators=(",", ":")).encode()
        encoded = base64.urlsafe_b64encode(raw).decode()
        message = encoded.encode() if (form or self.signature_form) == "string" else raw
        return {"user_data": encoded, "user_data_sign": sign_user_data(message, self.signing_key or self.partner_token)}

    def signed_redirect(self, salon: FakeSalon, form: str | None = None) -> str:
        query = urlencode({"salon_id": salon.salon_id, **self.signed_user_data(salon, form)})
        return f"{self.redirect_url}?{query}"

    async def connect(self, request: web.Request) -> web.Response:
        salon_id = _int(request.match_info["salon_id"])
        if not 0 < salon_id < 10**9:
            raise web.HTTPNotFound(text="no such salon")
        # Any salon of the marketplace can press the button; unknown ones get a made-up profile.
        salon = self.salons.setdefault(salon_id, FakeSalon(salon_id, f"Салон №{salon_id}", "Мария Кузнецова",
                                                           "79000000000"))
        self._consent(salon)
        raise web.HTTPFound(self.signed_redirect(salon, request.query.get("sign")))

    @staticmethod
    def _consent(salon: FakeSalon) -> None:
        if salon.status != "active":
            salon.status = "pending"
        salon.consent_at = time.time()

    async def connect_locations(self, request: web.Request) -> web.Response:
        """The network's owner connects all its locations at once. As Altegio documents, the
        locations already connected are left out (`?include_connected=1` keeps them)."""
        members = self._networks().get(_int(request.match_info["owner_id"]))
        if not members:
            raise web.HTTPNotFound(text="no such network")
        include_connected = request.query.get("include_connected") == "1"
        offered = [m for m in members if include_connected or m.status != "active"]
        if not offered:
            raise web.HTTPConflict(text="every location is already connected")
        for salon in offered:
            self._consent(salon)
        indexed = request.query.get("form") == "indexed"
        ids = [(f"salon_ids[{i}]" if indexed else "salon_ids[]", m.salon_id) for i, m in enumerate(offered)]
        query = urlencode([*ids, *self.signed_user_data(offered[0], request.query.get("sign")).items()])
        raise web.HTTPFound(f"{self.redirect_url}?{query}")

    # ---- webhooks YClients sends -----------------------------------------------------------

    async def send_webhook(self, request: web.Request) -> web.Response:
        """A lifecycle webhook to our callback URL, as YClients sends it (`?times=2`: delivered
        twice, as a live partner saw `uninstall`; the answer lists every delivery)."""
        salon = self.salons.get(_int(request.match_info["salon_id"]))
        event = request.match_info["event"]
        if salon is None:
            raise web.HTTPNotFound(text="no such salon")
        if event == "uninstall":
            salon.status = "uninstalled"
        elif event == "freeze":
            salon.status = "freezed"
        elif event == "payment" and salon.status == "freezed":
            salon.status = "active"
        body: dict[str, Any] = {"salon_id": salon.salon_id, "application_id": self.application_id,
                                "event": event, "partner_token": self.partner_token}
        if event == "payment":
            # Altegio's notes mention period fields on `payment`; YClients' are a guess.
            body.update({"payment_sum": 2990, "currency_iso": "RUB",
                         "period_from": time.strftime("%Y-%m-%d 00:00:00"),
                         "period_to": time.strftime("%Y-%m-%d 00:00:00", time.localtime(time.time() + 30 * 86400))})
        times = min(max(_int(request.query.get("times", "1")), 1), MAX_DELIVERIES)
        deliveries = [await self._deliver(self.callback_url, body) for _ in range(times)]
        return web.json_response({**deliveries[-1], "deliveries": deliveries})

    async def send_entity_webhook(self, request: web.Request) -> web.Response:
        """An entity webhook (a record, a client, ...) to the URL our service registered at activation."""
        salon_id = _int(request.match_info["salon_id"])
        urls = [url for a in self.activations if a["salon_id"] == salon_id for url in a["webhook_urls"]]
        if not urls:
            raise web.HTTPNotFound(text="no webhook URL registered for this salon")
        try:
            extra = await request.json() if request.can_read_body else {}
        except ValueError:
            extra = {}
        body = {"company_id": salon_id, "resource": "record", "resource_id": 4242001, "status": "create",
                "data": {"id": 4242001, "datetime": "2026-11-21T12:00:00+03:00", "services": [{"title": "Маникюр"}]},
                **(extra if isinstance(extra, dict) else {})}
        return await self._post_json(urls[-1], body)

    @staticmethod
    async def _deliver(url: str, body: dict[str, Any]) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=15)  # YClients gives up on a webhook after 15 s
        async with aiohttp.ClientSession(timeout=timeout) as http, http.post(url, json=body) as response:
            return {"status": response.status, "body": await response.text()}

    @classmethod
    async def _post_json(cls, url: str, body: dict[str, Any]) -> web.Response:
        return web.json_response(await cls._deliver(url, body))

    # ---- test controls ----------------------------------------------------------------------

    async def state(self, request: web.Request) -> web.Response:
        return web.json_response({
            "salons": {str(s.salon_id): {"status": s.status, "consent_at": s.consent_at} for s in self.salons.values()},
            "activations": self.activations,
            "payments": {str(k): v for k, v in self.payments.items()},
            "channels": self.channels,
        })

    async def list_calls(self, request: web.Request) -> web.Response:
        operation = request.query.get("operation")
        return web.json_response([c for c in self.calls if operation in (None, c["operation"])])

    async def script(self, request: web.Request) -> web.Response:
        """`{"operation": "activate", "answers": [{"status": 503}, {"html": "<html>", "status": 200}, ...]}`;
        `"answers": []` clears the script; `"rate_limit": n` changes the per-second limit,
        `"rate_limit_per_minute": n` the per-minute one."""
        try:
            body = await request.json()
            if "rate_limit" in body:
                self.rate_limit = int(body["rate_limit"])
            if "rate_limit_per_minute" in body:
                self.rate_limit_per_minute = int(body["rate_limit_per_minute"])
            operation = str(body.get("operation", ""))
            answers = [ScriptedAnswer(**answer) for answer in body.get("answers", [])]
        except (ValueError, TypeError, AttributeError) as exc:
            return web.json_response({"error": f"bad script: {exc}"}, status=400)
        if operation:
            self.scripts[operation] = deque(answers)
        return web.json_response({"scripted": {k: len(v) for k, v in self.scripts.items()}})

    async def configure(self, request: web.Request) -> web.Response:
        """`{"signature_form": "decoded"|"string", "signing_key": "..."|null, "uninstall_deliveries": n}`."""
        try:
            body = await request.json()
            if "signature_form" in body:
                if body["signature_form"] not in ("decoded", "string"):
                    raise ValueError("signature_form: decoded or string")
                self.signature_form = body["signature_form"]
            if "signing_key" in body:
                self.signing_key = body["signing_key"] or None
            if "uninstall_deliveries" in body:
                self.uninstall_deliveries = min(max(int(body["uninstall_deliveries"]), 1), MAX_DELIVERIES)
        except (ValueError, TypeError, AttributeError) as exc:
            return web.json_response({"error": f"bad config: {exc}"}, status=400)
        return web.json_response({"signature_form": self.signature_form, "signing_key": bool(self.signing_key),
                                  "uninstall_deliveries": self.uninstall_deliveries})

    async def set_salon(self, request: web.Request) -> web.Response:
        """Move a salon's marketplace state: `{"status": ..., "consent_age_seconds": ...}`; with
        `"name"` (and `"owner_id"`: several salons with one owner make a network) a new salon."""
        salon_id = _int(request.match_info["salon_id"])
        body = await request.json()
        if salon_id not in self.salons and isinstance(body.get("name"), str) and 0 < salon_id < 10**9:
            owner_id = body.get("owner_id")
            self.salons[salon_id] = FakeSalon(salon_id, body["name"], str(body.get("owner", "Мария Кузнецова")),
                                              "79000000000", owner_id=int(owner_id) if owner_id else None)
        salon = self.salons.get(salon_id)
        if salon is None:
            raise web.HTTPNotFound(text="no such salon")
        if "status" in body:
            salon.status = body["status"]
        if body.get("owner_id"):
            salon.owner_id = int(body["owner_id"])  # the salon changed hands
        if "consent_age_seconds" in body:
            salon.consent_at = time.time() - float(body["consent_age_seconds"])
        return web.json_response({"status": salon.status, "consent_at": salon.consent_at})

    # ---- the partner API -----------------------------------------------------------------

    def _api(self, operation: str, handler: Any) -> Any:
        """Every partner call: recorded, throttled like YClients (per client address), checked
        for the partner token, and answered from the test's script when there is one."""
        async def handle(request: web.Request) -> web.StreamResponse:
            now = time.time()
            record: dict[str, Any] = {"operation": operation, "at": now, "path": request.path}
            if request.can_read_body:
                try:
                    record["body"] = await request.json()
                except ValueError:
                    record["body"] = None
            self.calls.append(record)
            recent = self._recent[request.remote or ""]
            while recent and now - recent[0] >= 60.0:
                recent.popleft()
            recent.append(now)
            last_second = len(recent) - bisect.bisect_right(recent, now - 1.0)
            if last_second > self.rate_limit or len(recent) > self.rate_limit_per_minute:
                record["status"] = 429
                record["throttled"] = True      # the fake's own rate limit, not a scripted answer
                return _envelope(429, None, "Too Many Requests")
            script = self.scripts.get(operation)
            if script:
                answer = script.popleft()
                if not answer.passthrough:
                    record["status"] = answer.status
                if answer.delay:
                    await asyncio.sleep(answer.delay)
                if not answer.passthrough:
                    return answer.response()
            if not self._authorised(request):
                record["status"] = 401
                return _envelope(401, None, "Неверный токен партнёра")
            response: web.Response = await handler(request)
            record["status"] = response.status
            return response
        return handle

    def _authorised(self, request: web.Request) -> bool:
        expected = f"Bearer {self.partner_token}".encode()
        return hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected)

    def _installed(self, salon_id: int, application_id: int) -> FakeSalon | None:
        salon = self.salons.get(salon_id)
        if application_id != self.application_id or salon is None or salon.status in (None, "uninstalled"):
            return None
        return salon

    async def app_status(self, request: web.Request) -> web.Response:
        salon = self.salons.get(_int(request.match_info["salon_id"]))
        if salon is not None and salon.lapsed(time.time()):
            salon.status = None  # the pending link was never activated within the window: gone
        if _int(request.match_info["application_id"]) != self.application_id or salon is None or salon.status is None:
            return _envelope(404, None, "Приложение не установлено")
        payments = [p for p in self.payments.values() if p["salon_id"] == salon.salon_id]
        return _envelope(200, {"connection_status": {"status": salon.status}, "payments": payments, "logs": []})

    async def partner_callback(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            salon_id, application_id = int(body["salon_id"]), int(body["application_id"])
            api_key, webhook_urls = body["api_key"], body["webhook_urls"]
            if not isinstance(api_key, str) or not isinstance(webhook_urls, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return _envelope(422, None, "Ошибка валидации", errors={"body": ["salon_id, application_id, api_key"]})
        salon = self.salons.get(salon_id)
        if application_id != self.application_id or salon is None or salon.status is None:
            return _envelope(400, None, "Агрегатор не найден")
        if salon.status == "active":
            return _envelope(403, None, "Пользователь уже установил это приложение")
        if salon.consent_at is None or salon.lapsed(time.time()):
            salon.status = None
            return _envelope(422, None, "Истекло время на подключение")
        salon.status = "active"
        self.activations.append({"salon_id": salon_id, "application_id": application_id, "api_key": api_key,
                                 "webhook_urls": webhook_urls, "channels": body.get("channels"), "at": time.time()})
        return _envelope(201, {"success": True})

    async def partner_callback_redirect(self, request: web.Request) -> web.Response:
        """The same activation, answered with a 301 towards YClients' UI (what trips clients that follow it)."""
        response = await self.partner_callback(request)
        if response.status >= 300:
            return response
        raise web.HTTPMovedPermanently(self.prefix + "/")

    async def uninstall(self, request: web.Request) -> web.Response:
        salon = self._installed(_int(request.match_info["salon_id"]), _int(request.match_info["application_id"]))
        if salon is None:
            return _envelope(404, None, "Приложение не установлено")
        salon.status = "uninstalled"
        if self.callback_url:
            # YClients tells the partner through the lifecycle callback, as for an owner's uninstall.
            for _ in range(self.uninstall_deliveries):
                await self._deliver(self.callback_url, {
                    "salon_id": salon.salon_id, "application_id": self.application_id, "event": "uninstall",
                    "partner_token": self.partner_token})
        return _envelope(200, None)

    async def salon_users(self, request: web.Request) -> web.Response:
        """The salon's YClients users (its owner), for the optional second check of a consent."""
        salon = self._installed(_int(request.match_info["salon_id"]), self.application_id)
        if salon is None:
            return _envelope(403, None, "Нет доступа к компании")
        return _envelope(200, [{"id": salon.user_id, "name": salon.owner, "is_approved": True}])

    async def installed_salons(self, request: web.Request) -> web.Response:
        if _int(request.match_info["application_id"]) != self.application_id:
            return _envelope(404, None, "Приложение не найдено")
        page, count = max(_int(request.query.get("page", "1")), 1), _int(request.query.get("count", "100"))
        if not 0 < count <= 1000:
            return _envelope(422, None, "Ошибка валидации", errors={"count": ["1..1000"]})
        installed = [{"salon_id": s.salon_id, "title": s.name, "status": s.status}
                     for s in self.salons.values() if s.status not in (None, "uninstalled")]
        return _envelope(200, installed[(page - 1) * count:page * count])

    async def payment(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            salon_id, application_id = int(body["salon_id"]), int(body["application_id"])
            amount = float(body["payment_sum"])
            fields = {k: str(body[k]) for k in ("currency_iso", "payment_date", "period_from", "period_to")}
            for key in ("payment_date", "period_from", "period_to"):
                time.strptime(fields[key], "%Y-%m-%d %H:%M:%S")
        except (ValueError, KeyError, TypeError):
            return _envelope(422, None, "Ошибка валидации", errors={"body": ["payment fields, dates as Y-m-d H:i:s"]})
        if self._installed(salon_id, application_id) is None:
            return _envelope(400, None, "Агрегатор не найден")
        payment_id = next(self._payment_ids)
        self.payments[payment_id] = {"id": payment_id, "salon_id": salon_id, "payment_sum": amount, **fields,
                                     "refunded": False}
        return _envelope(201, {"id": payment_id})

    async def refund(self, request: web.Request) -> web.Response:
        payment = self.payments.get(_int(request.match_info["payment_id"]))
        if payment is None:
            return _envelope(404, None, "Платёж не найден")
        payment["refunded"] = True
        return _envelope(200, None)

    async def payment_link(self, request: web.Request) -> web.Response:
        salon_id = _int(request.query.get("salon_id", ""))
        if _int(request.query.get("application_id", "")) != self.application_id or salon_id not in self.salons:
            return _envelope(400, None, "Агрегатор не найден")
        if not self.tariffs:
            return _envelope(404, None, "У приложения нет тарифов")
        discount = request.query.get("discount")
        url = f"https://yclients.example/pay/{self.application_id}/{salon_id}" + (f"?discount={discount}"
                                                                                  if discount else "")
        return _envelope(200, {"url": url})

    async def list_tariffs(self, request: web.Request) -> web.Response:
        if _int(request.match_info["application_id"]) != self.application_id:
            return _envelope(404, None, "Приложение не найдено")
        return _envelope(200, self.tariffs)

    async def update_channel(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            salon_id, application_id = int(body["salon_id"]), int(body["application_id"])
            channel, available = str(body["channel_slug"]), bool(body["is_available"])
        except (ValueError, KeyError, TypeError):
            return _envelope(422, None, "Ошибка валидации")
        if channel not in ("whatsapp", "sms") or self._installed(salon_id, application_id) is None:
            return _envelope(400, None, "Агрегатор не найден")
        self.channels[f"{salon_id}:{channel}"] = available
        return _envelope(200, None)


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
