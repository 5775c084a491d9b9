"""GET /auth/yclients/redirect (YClients sends the owner here) and GET /marketplace/onboarding
(the page). Thin: parse, call `aiadmin.onboarding`, shape the response."""

from __future__ import annotations

import html
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlparse

import boto3
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.utilities.typing import LambdaContext

from aiadmin.config import load_settings
from aiadmin.i18n import catalogue_json, pick_language, t
from aiadmin.lazy import lazy, preload_before_snapshot
from aiadmin.observability import logger, metrics, tracer
from aiadmin.pages import error_page, new_nonce, security_headers

if TYPE_CHECKING:
    from aiadmin.models import UserData
    from aiadmin.onboarding import Location
    from aiadmin.store import Store
    from aiadmin.yclients import YClientsClient

# Cold start: of this function's two routes, only the redirect reads and writes salons (the store
# and the pydantic models under it), talks to YClients (`requests`), issues tokens (pyjwt) and
# reads the owner's phone (phonenumbers). It imports those modules on its first call, not here:
# the page route, which the owner's browser calls right after the redirect, never pays for
# them. The function runs with SnapStart: they are imported, and the models' validators built,
# before the snapshot, so a restored function pays for none of it on either route.
FIRST_USE_IMPORTS = ("aiadmin.onboarding", "aiadmin.store", "aiadmin.tokens", "aiadmin.yclients", "jwt",
                     "phonenumbers")
preload_before_snapshot(FIRST_USE_IMPORTS)

settings = load_settings([
    "table_name", "yclients_base_url", "yclients_app_id", "yclients_partner_token", "yclients_signing_key",
    "yclients_check_salon_users", "jwt_secret", "websocket_url", "token_ttl_seconds", "yclients_app_url",
    "page_local_frame_ancestors",
])


def _store() -> Store:
    from aiadmin.store import Store

    return Store(boto3.resource("dynamodb").Table(settings.table_name))


store = lazy(_store)


def _yclients_client() -> YClientsClient:
    from aiadmin.yclients import YClientsClient

    return YClientsClient(settings.yclients_base_url, settings.yclients_partner_token.reveal(),
                          settings.yclients_app_id)


yclients = lazy(_yclients_client)
# `user_data_sign`'s key: a separate signing key where YClients gives one, the partner token otherwise.
SIGNING_KEY = (settings.yclients_signing_key or settings.yclients_partner_token).reveal()
PAGE_TEMPLATE = (Path(__file__).parent / "onboarding.html").read_text(encoding="utf-8")
_WS_ORIGIN = "{0.scheme}://{0.netloc}".format(urlparse(settings.websocket_url))

app = APIGatewayHttpResolver()

# YClients app states in which the owner may be onboarded.
_INSTALLED_STATUSES = {"pending", "active"}


def _language() -> str:
    """The owner's language for pages made on the server: from the browser's Accept-Language
    (Russian by default). The onboarding page lets the owner switch it on the page itself."""
    return pick_language((app.current_event.headers or {}).get("accept-language"))


def _owner_error(status: int, key: str, **params: object) -> Response:
    body, headers = error_page(_language(), key, back_url=settings.yclients_app_url,
                               extra_frame_ancestors=settings.page_local_frame_ancestors, **params)
    return Response(status_code=status, body=body, headers=headers)


def _refused_page() -> Response:
    # Says nothing about the salon: neither its name nor its state.
    return _owner_error(403, "refused")


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
    from aiadmin.onboarding import MAX_LOCATIONS, ConsentRefused, check_consent, start_locations
    from aiadmin.tokens import issue_token
    from aiadmin.yclients import BadUserData, UserDataSignatureMismatch, check_user_data

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
    try:
        verified = check_user_data(user_data, sign, SIGNING_KEY)
    except BadUserData as exc:
        logger.warning("redirect refused", extra={"reason": str(exc)})
        metrics.add_metric(name="RedirectRefused", unit="Count", value=1)
        # A signature that does not match, or data we cannot read (signed or not): the owner can
        # do nothing about either but press "Подключить" again; the title says which it was.
        return _owner_error(400, "bad_sign" if isinstance(exc, UserDataSignatureMismatch) else "bad_user_data")
    # Which message YClients signed (the decoded bytes, as documented, or the string as sent).
    metrics.add_metric(name=f"UserDataSigned_{verified.form.value}", unit="Count", value=1)
    user = verified.user
    try:
        # Bindings first: a refused user costs no call to YClients.
        check_consent(store, salon_ids, user)
        locations = _confirm_with_yclients(salon_ids, user)
        salons = start_locations(store, locations, user, time.time())
    except ConsentRefused:
        return _refused_page()
    except _NotConfirmed as exc:
        return exc.response
    now = time.time()
    metrics.add_metric(name="RedirectAccepted", unit="Count", value=1)  # the funnel's first step
    # Each token names its salon's current consent: a later uninstall, rebinding or re-link ends it.
    tokens = [issue_token(s.salon_id, settings.jwt_secret.reveal(), settings.token_ttl_seconds, now,
                          consent_id=s.consent_id) for s in salons]
    # Tokens travel in the fragment: browsers never send it to a server, so no access log holds them.
    fragment = "&".join(f"token={token}" for token in tokens)
    return Response(status_code=302, body="", headers={
        "Location": f"/marketplace/onboarding#{fragment}", "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
    })


class _NotConfirmed(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _confirm_with_yclients(salon_ids: list[int], user: UserData) -> list[Location]:
    """`salon_id` is not signed: YClients must confirm our app pending or active in every location
    before anything is written. With `YCLIENTS_CHECK_SALON_USERS`, also that the consenting user
    is one of the salon's users (where YClients shows them to us)."""
    from aiadmin.onboarding import Location
    from aiadmin.yclients import PartnerApiError

    locations = []
    for salon_id in salon_ids:
        try:
            status = yclients.app_status(salon_id)
        except PartnerApiError as exc:
            logger.warning("YClients app status unavailable", extra={"salon_id": salon_id, "error": str(exc)})
            raise _NotConfirmed(_owner_error(503, "yclients_down")) from exc
        if status not in _INSTALLED_STATUSES:
            logger.warning("salon has no pending app", extra={"salon_id": salon_id, "status": status})
            raise _NotConfirmed(_owner_error(
                403, "not_installed",
                **({} if len(salon_ids) == 1
                   else {"message_key": "error.not_installed.location", "salon_id": salon_id})))
        if settings.yclients_check_salon_users:
            _check_salon_user(salon_id, user)
        locations.append(Location(salon_id, status or "pending"))
    return locations


def _check_salon_user(salon_id: int, user: UserData) -> None:
    """The second, unverified check: refused only when YClients does list the salon's users and
    the consenting user is not among them; when it shows us none, the binding alone decides."""
    from aiadmin.onboarding import ConsentRefused, consenting_user, record_refusal

    users = yclients.salon_user_ids(salon_id)
    if users is None:
        metrics.add_metric(name="SalonUsersUnavailable", unit="Count", value=1)
        return
    user_id = consenting_user(user)
    if user_id is None or user_id not in users:
        record_refusal(store, salon_id, user_id, "not a user of the salon in YClients")
        raise ConsentRefused(salon_id, "not a user of the salon in YClients")


_TEXT = re.compile(r"\{\{t:([a-z0-9_.]+)\}\}")


@app.get("/marketplace/onboarding")
def onboarding_page() -> Response:
    """The page in the browser's language (`{{t:key}}` filled in here, so it reads right before
    its script runs); the page carries both languages' texts and may switch."""
    nonce, language = new_nonce(), _language()
    body = _TEXT.sub(lambda m: html.escape(t(language, m.group(1))), PAGE_TEMPLATE)
    body = (body.replace("{{nonce}}", nonce).replace("{{lang}}", language)
            .replace("{{ws_url}}", html.escape(settings.websocket_url))
            .replace("{{yclients_url}}", html.escape(settings.yclients_app_url))
            .replace("{{catalogue}}", catalogue_json()))
    return Response(status_code=200, body=body, headers=security_headers(
        nonce, connect_src=_WS_ORIGIN, extra_frame_ancestors=settings.page_local_frame_ancestors))


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
