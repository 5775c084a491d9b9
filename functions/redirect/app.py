"""GET /auth/yclients/redirect (YClients sends the owner here) and GET /marketplace/onboarding
(the page). Thin: parse, call `aiadmin.consent`, shape the response."""

from __future__ import annotations

import html
import re
import time
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlparse

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.utilities.typing import LambdaContext

from aiadmin.i18n import catalogue_json, pick_language, t
from aiadmin.observability import logger, metrics, tracer
from aiadmin.pages import error_page, new_nonce, security_headers
from aiadmin.preload import preload_before_snapshot

if TYPE_CHECKING:
    from aiadmin.db import Store
    from aiadmin.settings import RedirectSettings
    from aiadmin.yclients import YClientsClient

# Cold start: of this function's two routes, only the redirect reads and writes salons (the store
# and the pydantic models under it), talks to YClients (`requests`), issues tokens (pyjwt) and
# reads the owner's phone (phonenumbers). It imports those modules on its first call, not here:
# the page route, which the owner's browser calls right after the redirect, never pays for
# them. The settings (pydantic-settings) are read by the first request too. The function runs
# with SnapStart: the modules are imported, the models' validators and the settings built, before
# the snapshot, so a restored function pays for none of it on either route. Secrets are not read
# then: see aiadmin.config.
FIRST_USE_IMPORTS = ("aiadmin.settings", "aiadmin.consent", "aiadmin.onboarding", "aiadmin.db",
                     "aiadmin.tokens", "aiadmin.yclients", "jwt", "phonenumbers")


@cache
def settings() -> RedirectSettings:
    from aiadmin.settings import RedirectSettings

    return RedirectSettings.load()


def store() -> Store:
    from aiadmin.db import open_store

    return open_store(settings().table_name)


def yclients() -> YClientsClient:
    """The YClients client (its connections kept between requests), made again only when the
    partner token read from SSM has changed."""
    s = settings()
    return _yclients_client(s.yclients_base_url, s.yclients_partner_token.reveal(), s.yclients_app_id)


@lru_cache(maxsize=1)
def _yclients_client(base_url: str, partner_token: str, app_id: int) -> YClientsClient:
    from aiadmin.yclients import YClientsClient

    return YClientsClient(base_url, partner_token, app_id)


preload_before_snapshot(FIRST_USE_IMPORTS, settings)
PAGE_TEMPLATE = (Path(__file__).parent / "onboarding.html").read_text(encoding="utf-8")

app = APIGatewayHttpResolver()


def _language() -> str:
    """The owner's language for pages made on the server: from the browser's Accept-Language
    (Russian by default). The onboarding page lets the owner switch it on the page itself."""
    return pick_language((app.current_event.headers or {}).get("accept-language"))


def _owner_error(status: int, key: str, **params: object) -> Response:
    s = settings()
    body, headers = error_page(_language(), key, back_url=s.yclients_app_url,
                               extra_frame_ancestors=s.page_local_frame_ancestors, **params)
    return Response(status_code=status, body=body, headers=headers)


def _salon_ids(raw_query: str) -> list[int] | None:
    """Every form YClients uses: salon_id=1, salon_ids[]=1, salon_ids[0]=1 (in any mix), each read
    by the one salon id parser; None when any of them is not a salon id. Duplicates are dropped
    after parsing, order kept: `9203` and `09203` are one salon and must get one token."""
    from aiadmin.models import parse_salon_id  # FIRST_USE_IMPORTS

    values = [value for key, value in parse_qsl(raw_query, keep_blank_values=True)
              if key == "salon_id" or key == "salon_ids[]" or (key.startswith("salon_ids[") and key.endswith("]"))]
    parsed = [parse_salon_id(value) for value in values]
    ids = [salon_id for salon_id in parsed if salon_id is not None]
    if len(ids) != len(parsed):
        return None
    return list(dict.fromkeys(ids))


@app.get("/auth/yclients/redirect")
# The response's `Location` carries the onboarding token: X-Ray must not record it.
@tracer.capture_method(capture_response=False)
def redirect() -> Response:
    """One redirect may name several locations (`salon_ids[]`): YClients activates the app only
    when every one of them is activated, so all of them are onboarded together. The owner gets one
    token per location (each opens that location's page state and sockets only) and one page
    that holds the list and walks through them."""
    # This route's own modules (FIRST_USE_IMPORTS), imported on its first call.
    from aiadmin.consent import BadUserData, ConsentRefused, NotInstalled, YClientsUnavailable, accept_consent
    from aiadmin.onboarding import MAX_LOCATIONS
    from aiadmin.tokens import issue_token
    from aiadmin.yclients import UserDataSignatureMismatch

    query = dict(parse_qsl(app.current_event.raw_query_string, keep_blank_values=True))
    salon_ids = _salon_ids(app.current_event.raw_query_string)
    if salon_ids is None:
        return _owner_error(400, "bad_salon")
    if not salon_ids:
        return _owner_error(400, "no_salon")
    if len(salon_ids) > MAX_LOCATIONS:
        return _owner_error(400, "too_many", max=MAX_LOCATIONS)
    user_data, sign = query.get("user_data"), query.get("user_data_sign")
    if not user_data or not sign:
        return _owner_error(400, "unsigned")
    s = settings()
    # `user_data_sign`'s key: a separate signing key where YClients gives one, the partner token otherwise.
    signing_key = (s.yclients_signing_key or s.yclients_partner_token).reveal()
    try:
        consent = accept_consent(store(), yclients(), salon_ids, user_data, sign, signing_key,
                                 check_salon_users=s.yclients_check_salon_users)
    except BadUserData as exc:
        # A signature that does not match, or data we cannot read (signed or not): the owner can
        # do nothing about either but press "Подключить" again; the title says which it was.
        return _owner_error(400, "bad_sign" if isinstance(exc, UserDataSignatureMismatch) else "bad_user_data")
    except ConsentRefused:
        return _owner_error(403, "refused")  # says nothing about the salon: neither its name nor its state
    except YClientsUnavailable:
        return _owner_error(503, "yclients_down")
    except NotInstalled as exc:
        return _owner_error(403, "not_installed", **({} if len(salon_ids) == 1 else {
            "message_key": "error.not_installed.location", "salon_id": exc.salon_id}))
    # Each token names its salon's current consent: a later uninstall, rebinding or re-link ends it.
    jwt_secret = s.jwt_secret.reveal()
    tokens = [issue_token(salon.salon_id, jwt_secret, s.token_ttl_seconds, time.time(), consent_id=salon.consent_id)
              for salon in consent.salons]
    # Tokens travel in the fragment: browsers never send it to a server, so no access log holds them.
    fragment = "&".join(f"token={token}" for token in tokens)
    return Response(status_code=302, body="", headers={
        "Location": f"/marketplace/onboarding#{fragment}", "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
    })


_TEXT = re.compile(r"\{\{t:([a-z0-9_.]+)\}\}")


@app.get("/marketplace/onboarding")
def onboarding_page() -> Response:
    """The page in the browser's language (`{{t:key}}` filled in here, so it reads right before
    its script runs); the page carries both languages' texts and may switch."""
    nonce, language, s = new_nonce(), _language(), settings()
    body = _TEXT.sub(lambda m: html.escape(t(language, m.group(1))), PAGE_TEMPLATE)
    body = (body.replace("{{nonce}}", nonce).replace("{{lang}}", language)
            .replace("{{ws_url}}", html.escape(s.websocket_url))
            .replace("{{yclients_url}}", html.escape(s.yclients_app_url))
            .replace("{{catalogue}}", catalogue_json()))
    return Response(status_code=200, body=body, headers=security_headers(
        nonce, connect_src=_origin(s.websocket_url), extra_frame_ancestors=s.page_local_frame_ancestors))


def _origin(url: str) -> str:
    return "{0.scheme}://{0.netloc}".format(urlparse(url))


@app.exception_handler(Exception)
def unexpected(exc: Exception) -> Response:
    # The owner never sees a traceback; ops see it in the logs with the request id.
    logger.exception("unexpected error")
    return _owner_error(503, "unexpected")


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)  # the redirect's response holds a token
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
