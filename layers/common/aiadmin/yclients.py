"""The YClients marketplace protocol (see ../shared/yclients-protocol.md).

Signature: `user_data_sign` is the lowercase hex HMAC-SHA256 of the *base64-decoded bytes*
of `user_data` (documented), or of the `user_data` string as received (another partner's
contract), keyed with the signing key (`YCLIENTS_SIGNING_KEY`, default: the partner token).
Both forms are accepted; which one matched is reported. Partner API: Bearer partner token,
the v2 Accept header, JSON bodies in a `{success, data, meta}` envelope.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING, Any

import requests
from pydantic import ValidationError

from aiadmin.models import UserData
from aiadmin.observability import logger, metrics
from aiadmin.untrusted_json import UntrustedJsonError, load_json

if TYPE_CHECKING:
    from pyrate_limiter import Limiter

ACCEPT = "application/vnd.yclients.v2+json"
DEFAULT_TIMEOUT = (3.05, 10)
PAYMENT_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

# YClients allows 5 requests/s (and 200/min) per IP. One limiter per process, shared by every
# client instance, so no combination of handlers or sessions in a process can exceed it. The
# window is 1.1 s rather than 1 s: requests leave at the limit's edge, and network jitter must
# not squeeze six of them into one second on YClients' side.
# `YCLIENTS_RATE_LIMIT_FILE` (a path) shares the limit between the processes of one host through
# pyrate-limiter's SQLite bucket with a file lock: the local stack sets it, since its function
# workers and runners all call from one address, as they would from behind one NAT (and there
# installs its own `LimiterFactory`: local.rate_priority).
RATE_LIMIT_FILE_ENV = "YCLIENTS_RATE_LIMIT_FILE"


@cache
def process_limiter() -> Limiter:
    # Built (and pyrate-limiter imported) on the first client, not at import: cold start.
    from pyrate_limiter import Duration, Limiter, Rate, SQLiteBucket

    rates = [Rate(5, 1100), Rate(200, Duration.MINUTE)]
    shared_file = os.environ.get(RATE_LIMIT_FILE_ENV)
    if not shared_file:
        return Limiter(rates)
    return Limiter(SQLiteBucket.init_from_file(rates, db_path=shared_file, use_file_lock=True))


# A client's limiter, given whether its calls are background ones (no owner waits on them).
LimiterFactory = Callable[[bool], Any]
_limiter_factories: list[LimiterFactory] = []


def install_limiter_factory(factory: LimiterFactory) -> None:
    """Where clients get their limiter from in this process (instead of `process_limiter`): set
    once at start-up by a host that orders callers (the local stack)."""
    _limiter_factories[:] = [factory]


def client_limiter(background: bool) -> Any:
    """The limiter for a new client: the installed factory's, or the process's own."""
    return _limiter_factories[0](background) if _limiter_factories else process_limiter()


class BadUserData(ValueError):
    """The redirect's user data is missing, malformed or not signed by YClients."""


class UserDataSignatureMismatch(BadUserData):
    """`user_data_sign` matches no form of `user_data` under our key: not signed by YClients."""


# `user_data` is a flat profile of a few hundred bytes (id, name, phone, email, avatar URL, salon
# name). 4 KiB of base64 text (3 KiB of JSON) is ten times that, room for long names and new
# fields, and bounds what a request nobody has authenticated yet makes us decode and hash: checked
# before anything else. Not 8 KiB: front ends refuse a URL that long before we see it (the local
# gateway past 8,190 bytes), so such a bound would never be met, nor tested, end to end.
MAX_USER_DATA_CHARS = 4 * 1024
# The profile is one object (depth 1); a few levels spare for a nested field YClients may add.
MAX_USER_DATA_DEPTH = 8


def decode_base64_lenient(value: str) -> bytes:
    """Standard or URL-safe alphabet, padding optional: YClients has sent URL-safe, padded. A space
    is a `+` that a query-string decoder turned into a space (an unescaped standard-alphabet value)."""
    cleaned = value.strip().replace(" ", "+").replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadUserData("user_data is not base64") from exc


def sign_user_data(raw: bytes, partner_token: str) -> str:
    return hmac.new(partner_token.encode(), raw, hashlib.sha256).hexdigest()


class SignatureForm(StrEnum):
    """What `user_data_sign` was computed over."""

    DECODED = "decoded"  # the base64-decoded bytes (YClients' documentation)
    STRING = "string"    # the `user_data` string as received (another partner's contract)


@dataclass(frozen=True)
class VerifiedUserData:
    user: UserData
    form: SignatureForm


def _matches(message: bytes, signature: bytes, key: str) -> bool:
    return hmac.compare_digest(sign_user_data(message, key).encode(), signature)


def check_user_data(user_data: str, user_data_sign: str, signing_key: str) -> VerifiedUserData:
    """Verify `user_data_sign` over the decoded bytes first, then over the string as received
    (also with spaces read back as `+`, in case a query decoder turned them into spaces). Every
    comparison is constant-time and every candidate is tried, so timing tells nothing about
    which form, if any, came close. The JSON is parsed as signed, never re-serialised, and only
    once the signature matched: shallow (MAX_USER_DATA_DEPTH) and valid Unicode text throughout,
    so every name stored is valid UTF-8."""
    if len(user_data) > MAX_USER_DATA_CHARS:
        raise BadUserData("user_data is too large")
    raw = decode_base64_lenient(user_data)
    signature = user_data_sign.strip().lower().encode()
    as_received = user_data.encode("utf-8", "surrogatepass")
    candidates = [(raw, SignatureForm.DECODED), (as_received, SignatureForm.STRING)]
    if " " in user_data:
        candidates.append((user_data.replace(" ", "+").encode("utf-8", "surrogatepass"), SignatureForm.STRING))
    matched = [form for message, form in candidates if _matches(message, signature, signing_key)]
    if not matched:
        raise UserDataSignatureMismatch("user_data_sign does not match")
    try:
        parsed = load_json(raw.decode("utf-8"), MAX_USER_DATA_DEPTH)
    except UnicodeDecodeError as exc:
        raise BadUserData("user_data is not UTF-8") from exc
    except UntrustedJsonError as exc:
        raise BadUserData(f"user_data: {exc}") from exc
    if not isinstance(parsed, dict):
        raise BadUserData("user_data is not a JSON object")
    try:
        return VerifiedUserData(UserData.model_validate(parsed), matched[0])
    except ValidationError as exc:
        raise BadUserData("user_data fields have unexpected types") from exc


def verify_user_data(user_data: str, user_data_sign: str, signing_key: str) -> UserData:
    """`check_user_data` without the form."""
    return check_user_data(user_data, user_data_sign, signing_key).user


class ActivationOutcome(StrEnum):
    ACTIVATED = "activated"
    ALREADY_ACTIVE = "already_active"
    PERMANENT_FAILURE = "permanent_failure"
    TRANSIENT_FAILURE = "transient_failure"


@dataclass(frozen=True)
class ActivationResult:
    outcome: ActivationOutcome
    status: int | None
    message: str = ""
    retry_after: float | None = None


@dataclass(frozen=True)
class PartnerResponse:
    """One partner API answer: the status, the JSON envelope when there was one."""

    status: int
    body: dict[str, Any] | None
    retry_after: float | None = None

    @property
    def message(self) -> str:
        return str(((self.body or {}).get("meta") or {}).get("message") or "")

    @property
    def data(self) -> Any:
        return (self.body or {}).get("data")

    @property
    def ok(self) -> bool:
        # `success: false` inside a 2xx is a failure (seen in another partner's client).
        return 200 <= self.status < 300 and self.body is not None and self.body.get("success") is not False


class PartnerApiError(RuntimeError):
    """YClients refused a partner call or answered something that is not its JSON envelope."""

    def __init__(self, operation: str, status: int | None, message: str) -> None:
        super().__init__(f"{operation}: YClients answered {status or 'nothing'} {message}".strip())
        self.status = status
        self.message = message


_ALREADY_INSTALLED_MARKERS = ("уже установил", "already installed")
_QUICK_ATTEMPTS = 3
_QUICK_PAUSE = 0.5
# The reading of the live errors: a wrong application ("Агрегатор не найден"), a bad
# partner token and a validation error do not get better by retrying; they need ops.
_PERMANENT_ACTIVATION_STATUSES = frozenset({400, 401, 403, 404, 422})


def classify_activation(response: PartnerResponse | None, error: str = "") -> ActivationResult:
    """What an activation answer means for the salon. `None`: no answer (network error, timeout)."""
    if response is None:
        return ActivationResult(ActivationOutcome.TRANSIENT_FAILURE, None, error)
    status, message = response.status, response.message
    if response.ok:
        return ActivationResult(ActivationOutcome.ACTIVATED, status, message)
    if 200 <= status < 300:
        return ActivationResult(ActivationOutcome.TRANSIENT_FAILURE, status, message or "not the JSON envelope")
    if status == 403 and any(marker in message.lower() for marker in _ALREADY_INSTALLED_MARKERS):
        return ActivationResult(ActivationOutcome.ALREADY_ACTIVE, status, message)
    if status in _PERMANENT_ACTIVATION_STATUSES:
        return ActivationResult(ActivationOutcome.PERMANENT_FAILURE, status, message)
    # 5xx, 429, and anything unexpected (3xx from a redirecting proxy, 408, ...): try again later.
    return ActivationResult(ActivationOutcome.TRANSIENT_FAILURE, status, message, response.retry_after)


class YClientsClient:
    """Partner-side calls to the marketplace API (Bearer partner token, v2 Accept header),
    throttled by the process-wide limiter. `background`: the calls of no waiting owner (the
    runner's activations), which yield to an owner's under a limit shared between processes."""

    def __init__(self, base_url: str, partner_token: str, application_id: int,
                 session: requests.Session | None = None, limiter: Limiter | None = None,
                 timeout: tuple[float, float] = DEFAULT_TIMEOUT, background: bool = False) -> None:
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._application_id = application_id
        self._session = session or requests.Session()
        from requests_ratelimiter import LimiterAdapter

        adapter = LimiterAdapter(limiter=limiter or client_limiter(background), per_host=False)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers.update({
            "Authorization": f"Bearer {partner_token}",
            "Accept": ACCEPT,
            "Content-Type": "application/json",
        })

    @property
    def application_id(self) -> int:
        return self._application_id

    def _call(self, method: str, path: str, json_body: dict[str, Any] | None = None,
              params: dict[str, Any] | None = None) -> PartnerResponse:
        """One request. Redirects are never followed: a redirect to YClients' UI returns an HTML
        page, which must not be mistaken for an answer. Network errors propagate."""
        try:
            response = self._session.request(method, f"{self._base_url}{path}", json=json_body, params=params,
                                             timeout=self._timeout, allow_redirects=False)
        except requests.RequestException:
            metrics.add_metric(name="YClientsApiError", unit="Count", value=1)
            raise
        # For the dashboard: 429s apart (our limiter should prevent them), other refusals and 5xx.
        if response.status_code == 429:
            metrics.add_metric(name="YClientsRateLimited", unit="Count", value=1)
        elif response.status_code >= 400:
            metrics.add_metric(name="YClientsApiError", unit="Count", value=1)
        return PartnerResponse(response.status_code, _json_or_none(response), _retry_after(response))

    def _patient_call(self, operation: str, method: str, path: str, json_body: dict[str, Any] | None = None,
                      params: dict[str, Any] | None = None) -> PartnerResponse:
        """A call for someone waiting (an owner, ops): a 429 is retried after a short pause (the
        request was refused, not processed); so are 5xx and network errors of a GET, which
        changes nothing. The activation has its own, longer retry policy."""
        for attempt in range(_QUICK_ATTEMPTS):
            last = attempt == _QUICK_ATTEMPTS - 1
            try:
                response = self._call(method, path, json_body, params)
            except requests.RequestException as exc:
                if method != "GET" or last:
                    raise PartnerApiError(operation, None, type(exc).__name__) from exc
                time.sleep(_QUICK_PAUSE * 2 ** attempt)
                continue
            retryable = response.status == 429 or (method == "GET" and response.status >= 500)
            if not retryable or last:
                return response
            time.sleep(min(5.0, max(response.retry_after or 0.0, _QUICK_PAUSE * 2 ** attempt)))
        raise AssertionError("unreachable")

    def _checked(self, operation: str, method: str, path: str, json_body: dict[str, Any] | None = None,
                 params: dict[str, Any] | None = None) -> PartnerResponse:
        response = self._patient_call(operation, method, path, json_body, params)
        if not response.ok:
            raise PartnerApiError(operation, response.status, response.message or "unexpected answer")
        return response

    # ---- onboarding ----------------------------------------------------------------------

    def app_status(self, salon_id: int) -> str | None:
        """`pending`, `active`, `freezed`, ... for our app in the salon; None when not installed.
        Raises PartnerApiError when YClients cannot say (down, throttled, refused)."""
        response = self._patient_call("app status", "GET",
                                      f"/marketplace/salon/{salon_id}/application/{self._application_id}")
        if response.status == 404:
            return None
        if not response.ok:
            raise PartnerApiError("app status", response.status, response.message)
        status = ((response.data or {}).get("connection_status") or {}).get("status") \
            if isinstance(response.data, dict) else None
        return str(status) if status else None

    def salon_user_ids(self, salon_id: int) -> set[str] | None:
        """The ids of the salon's YClients users (`GET /api/v1/company/{id}/users`), or None when
        YClients does not show them to the partner token (401/403/404) or answers something else.

        UNVERIFIED: that the partner token alone may read a salon's users once the owner has
        granted our app API access is a guess; the call may need a user token. That is why
        the redirect uses it only behind `YCLIENTS_CHECK_SALON_USERS`, as a second check."""
        try:
            response = self._patient_call("salon users", "GET", f"/api/v1/company/{salon_id}/users")
        except PartnerApiError:
            return None
        if not response.ok or not isinstance(response.data, list):
            return None
        return {str(user["id"]) for user in response.data[:10_000]
                if isinstance(user, dict) and user.get("id") is not None}

    def activate(self, salon_id: int, api_key: str, webhook_urls: list[str],
                 channels: list[str] | None = None) -> ActivationResult:
        """POST /marketplace/partner/callback: 201 installed; 403 "already installed" is success."""
        payload: dict[str, Any] = {
            "salon_id": salon_id,
            "application_id": self._application_id,
            "api_key": api_key,
            "webhook_urls": webhook_urls,
        }
        if channels:
            payload["channels"] = channels
        try:
            response = self._call("POST", "/marketplace/partner/callback", payload)
        except requests.RequestException as exc:
            return classify_activation(None, type(exc).__name__)
        result = classify_activation(response)
        if result.outcome == ActivationOutcome.PERMANENT_FAILURE:
            logger.error("activation refused",
                         extra={"salon_id": salon_id, "status": result.status, "yclients_message": result.message})
        return result

    # ---- partner operations (for ops) ----------------------------------------------------

    def installed_salons(self, page: int = 1, count: int = 100) -> list[dict[str, Any]]:
        """Salons that installed the app, one page (`count` <= 1000)."""
        response = self._checked("installed salons", "GET", f"/marketplace/application/{self._application_id}/salons",
                                 params={"page": page, "count": min(max(count, 1), 1000)})
        return list(response.data or [])

    def uninstall(self, salon_id: int) -> None:
        """Disable the app in the salon from our side (YClients then sends `uninstall`)."""
        path = f"/marketplace/salon/{salon_id}/application/{self._application_id}/uninstall"
        self._checked("uninstall", "POST", path)

    def report_payment(self, salon_id: int, amount: float, currency_iso: str, paid_at: datetime,
                       period_from: datetime, period_to: datetime) -> int:
        """Report a payment received outside YClients; returns YClients' payment id."""
        response = self._checked("payment report", "POST", "/marketplace/partner/payment", {
            "salon_id": salon_id, "application_id": self._application_id, "payment_sum": amount,
            "currency_iso": currency_iso, "payment_date": paid_at.strftime(PAYMENT_DATE_FORMAT),
            "period_from": period_from.strftime(PAYMENT_DATE_FORMAT),
            "period_to": period_to.strftime(PAYMENT_DATE_FORMAT),
        })
        try:
            return int(response.data["id"])
        except (TypeError, KeyError, ValueError) as exc:
            raise PartnerApiError("payment report", response.status, "no payment id in the answer") from exc

    def refund_payment(self, payment_id: int) -> None:
        self._checked("payment refund", "POST", f"/marketplace/partner/payment/refund/{int(payment_id)}")

    def payment_link(self, salon_id: int, discount: int | None = None) -> str | None:
        """A link where the salon pays for the app; None when the app has no tariffs (404, seen live)."""
        params: dict[str, Any] = {"salon_id": salon_id, "application_id": self._application_id}
        if discount is not None:
            params["discount"] = discount
        try:
            response = self._checked("payment link", "GET", "/marketplace/application/payment_link", params=params)
        except PartnerApiError as exc:
            if exc.status == 404:
                return None
            raise
        url = (response.data or {}).get("url") if isinstance(response.data, dict) else None
        return str(url) if url else None

    def tariffs(self) -> list[dict[str, Any]]:
        response = self._checked("tariffs", "GET", f"/marketplace/application/{self._application_id}/tariffs")
        return list(response.data or [])

    def update_channel(self, salon_id: int, channel: str, available: bool) -> None:
        self._checked("channel update", "POST", "/marketplace/application/update_channel", {
            "salon_id": salon_id, "application_id": self._application_id, "channel_slug": channel,
            "is_available": available,
        })


def _json_or_none(response: requests.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _retry_after(response: requests.Response) -> float | None:
    """`Retry-After` in seconds (either form of the header), if YClients sends one."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - datetime.now().timestamp())
    except (TypeError, ValueError):
        return None
