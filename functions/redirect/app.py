"""GET /auth/yclients/redirect (YClients sends the owner here) and GET /marketplace/onboarding
(the page). Thin: parse, call `aiadmin.onboarding`, shape the response."""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlparse

import boto3
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.utilities.typing import LambdaContext

from aiadmin.config import load_settings
from aiadmin.lazy import lazy
from aiadmin.models import parse_salon_id
from aiadmin.observability import logger, metrics, tracer
from aiadmin.onboarding import start_onboarding
from aiadmin.pages import error_page, new_nonce, security_headers
from aiadmin.store import Store
from aiadmin.tokens import issue_token
from aiadmin.yclients import BadUserData, PartnerApiError, YClientsClient, verify_user_data

settings = load_settings([
    "table_name", "yclients_base_url", "yclients_app_id", "yclients_partner_token", "jwt_secret",
    "websocket_url", "token_ttl_seconds",
])
store = lazy(lambda: Store(boto3.resource("dynamodb").Table(settings.table_name)))
yclients = lazy(lambda: YClientsClient(settings.yclients_base_url, settings.yclients_partner_token.reveal(),
                                      settings.yclients_app_id))
PAGE_TEMPLATE = (Path(__file__).parent / "onboarding.html").read_text(encoding="utf-8")
CHOOSER_TEMPLATE = """<!doctype html><html lang="ru"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Выберите филиал</title>
<link rel="icon" href="data:,"><style nonce="{{nonce}}">body{font-family:system-ui,sans-serif;max-width:32rem;
margin:3rem auto;padding:0 1rem}li{margin:.6rem 0;font-size:1.1rem}</style></head>
<body><h1>Выберите филиал</h1><p>WhatsApp подключается к каждому филиалу отдельно.
Выберите, с какого начать; к остальным можно вернуться по этой же ссылке.</p><ul>{{items}}</ul></body></html>
"""
_WS_ORIGIN = "{0.scheme}://{0.netloc}".format(urlparse(settings.websocket_url))

app = APIGatewayHttpResolver()

# YClients app states in which the owner may be onboarded.
_INSTALLED_STATUSES = {"pending", "active"}


def _owner_error(status: int, title: str, message: str) -> Response:
    body, headers = error_page(title, message)
    return Response(status_code=status, body=body, headers=headers)


def _salon_ids(raw_query: str) -> list[str]:
    """Every form YClients uses: salon_id=1, salon_ids[]=1, salon_ids[0]=1."""
    ids = []
    for key, value in parse_qsl(raw_query, keep_blank_values=True):
        if key == "salon_id" or key == "salon_ids[]" or (key.startswith("salon_ids[") and key.endswith("]")):
            ids.append(value.strip())
    return list(dict.fromkeys(ids))


@app.get("/auth/yclients/redirect")
# The response's `Location` carries the onboarding token: X-Ray must not record it.
@tracer.capture_method(capture_response=False)
def redirect() -> Response:
    query = dict(parse_qsl(app.current_event.raw_query_string, keep_blank_values=True))
    ids = _salon_ids(app.current_event.raw_query_string)
    if not ids:
        return _owner_error(400, "Не указан салон", "В ссылке из YClients нет номера салона.")
    if any(parse_salon_id(i) is None for i in ids):
        return _owner_error(400, "Неверный номер салона", "Ссылка из YClients повреждена.")
    user_data, sign = query.get("user_data"), query.get("user_data_sign")
    if not user_data or not sign:
        return _owner_error(400, "Ссылка без подписи", "Ссылка не подписана YClients, мы не можем ей доверять.")
    try:
        user = verify_user_data(user_data, sign, settings.yclients_partner_token.reveal())
    except BadUserData as exc:
        logger.warning("redirect refused", extra={"reason": str(exc)})
        metrics.add_metric(name="RedirectRefused", unit="Count", value=1)
        return _owner_error(400, "Ссылка недействительна", "Подпись YClients не сходится.")
    if len(ids) > 1:
        return _choose_salon(ids, user_data, sign)
    salon_id = int(ids[0])
    try:
        status = yclients.app_status(salon_id)
    except PartnerApiError as exc:
        logger.warning("YClients app status unavailable", extra={"salon_id": salon_id, "error": str(exc)})
        return _owner_error(503, "YClients не отвечает",
                            "Не получилось проверить подключение в YClients. Попробуйте ещё раз через минуту.")
    if status not in _INSTALLED_STATUSES:
        logger.warning("salon has no pending app", extra={"salon_id": salon_id, "status": status})
        return _owner_error(403, "Приложение не подключено",
                            "YClients не подтверждает, что этот салон подключает AI Admin.")
    now = time.time()
    start_onboarding(store, salon_id, user, now, marketplace_status=status or "pending")
    metrics.add_metric(name="RedirectAccepted", unit="Count", value=1)  # the funnel's first step
    token = issue_token(salon_id, settings.jwt_secret.reveal(), settings.token_ttl_seconds, now)
    # The token travels in the fragment: browsers never send it to a server, so no access log holds it.
    return Response(status_code=302, body="", headers={
        "Location": f"/marketplace/onboarding#token={token}", "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
    })


def _choose_salon(ids: list[str], user_data: str, sign: str) -> Response:
    """Several locations at once (`salon_ids[]`): one onboarding per salon, chosen by the owner.
    Each link carries the same signed user data and goes through every check again."""
    nonce = new_nonce()
    links = [(i, urlencode({"salon_id": i, "user_data": user_data, "user_data_sign": sign})) for i in ids]
    items = "".join(
        f'<li><a href="/auth/yclients/redirect?{html.escape(query)}">Филиал №{html.escape(i)}</a></li>'
        for i, query in links
    )
    body = CHOOSER_TEMPLATE.replace("{{nonce}}", nonce).replace("{{items}}", items)
    return Response(status_code=200, body=body, headers=security_headers(nonce))


@app.get("/marketplace/onboarding")
def onboarding_page() -> Response:
    nonce = new_nonce()
    body = PAGE_TEMPLATE.replace("{{nonce}}", nonce).replace("{{ws_url}}", html.escape(settings.websocket_url))
    return Response(status_code=200, body=body, headers=security_headers(nonce, connect_src=_WS_ORIGIN))


@app.exception_handler(Exception)
def unexpected(exc: Exception) -> Response:
    # The owner never sees a traceback; ops see it in the logs with the request id.
    logger.exception("unexpected error")
    return _owner_error(503, "Временная ошибка", "Что-то пошло не так на нашей стороне. Попробуйте через минуту.")


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)  # the redirect's response holds a token
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
