"""The YClients marketplace protocol (see ../shared/yclients-protocol.md).

Signature: `user_data_sign` is the lowercase hex HMAC-SHA256 of the *base64-decoded bytes*
of `user_data`, keyed with the partner token. Partner API: Bearer partner token, the v2
Accept header, JSON bodies in a `{success, data, meta}` envelope.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import requests
from pydantic import ValidationError

from aiadmin.models import UserData
from aiadmin.observability import logger

ACCEPT = "application/vnd.yclients.v2+json"
DEFAULT_TIMEOUT = (3.05, 10)


class BadUserData(ValueError):
    """The redirect's user data is missing, malformed or not signed by YClients."""


def decode_base64_lenient(value: str) -> bytes:
    """Standard or URL-safe alphabet, padding optional: YClients has sent URL-safe, padded."""
    cleaned = value.strip().replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadUserData("user_data is not base64") from exc


def sign_user_data(raw: bytes, partner_token: str) -> str:
    return hmac.new(partner_token.encode(), raw, hashlib.sha256).hexdigest()


def verify_user_data(user_data: str, user_data_sign: str, partner_token: str) -> UserData:
    raw = decode_base64_lenient(user_data)
    expected = sign_user_data(raw, partner_token)
    if not hmac.compare_digest(expected.encode(), user_data_sign.strip().lower().encode()):
        raise BadUserData("user_data_sign does not match")
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadUserData("user_data is not UTF-8 JSON") from exc
    if not isinstance(parsed, dict):
        raise BadUserData("user_data is not a JSON object")
    try:
        return UserData.model_validate(parsed)
    except ValidationError as exc:
        raise BadUserData("user_data fields have unexpected types") from exc


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


_ALREADY_INSTALLED_MARKERS = ("уже установил", "already installed")


class YClientsClient:
    """Partner-side calls to the marketplace API."""

    def __init__(self, base_url: str, partner_token: str, application_id: int,
                 session: requests.Session | None = None) -> None:
        self._base_url = base_url.rstrip("/")
        self._application_id = application_id
        self._session = session or requests.Session()
        self._session.headers.update({
            "Authorization": f"Bearer {partner_token}",
            "Accept": ACCEPT,
            "Content-Type": "application/json",
        })

    @property
    def application_id(self) -> int:
        return self._application_id

    def app_status(self, salon_id: int) -> str | None:
        """`pending`, `active`, `freezed`, ... for our app in the salon; None when not installed."""
        response = self._session.get(
            f"{self._base_url}/marketplace/salon/{salon_id}/application/{self._application_id}",
            timeout=DEFAULT_TIMEOUT,
        )
        if response.status_code == 404:
            return None
        response.raise_for_status()
        body = _json_or_none(response)
        status = (((body or {}).get("data") or {}).get("connection_status") or {}).get("status")
        return str(status) if status else None

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
            response = self._session.post(
                f"{self._base_url}/marketplace/partner/callback",
                json=payload, timeout=DEFAULT_TIMEOUT, allow_redirects=False,
            )
        except requests.RequestException as exc:
            return ActivationResult(ActivationOutcome.TRANSIENT_FAILURE, None, type(exc).__name__)
        body = _json_or_none(response)
        message = str(((body or {}).get("meta") or {}).get("message") or "")
        status = response.status_code
        if 200 <= status < 300:
            if body is None or body.get("success") is False:
                return ActivationResult(ActivationOutcome.TRANSIENT_FAILURE, status, message or "unexpected body")
            return ActivationResult(ActivationOutcome.ACTIVATED, status, message)
        if status == 403 and any(marker in message.lower() for marker in _ALREADY_INSTALLED_MARKERS):
            return ActivationResult(ActivationOutcome.ALREADY_ACTIVE, status, message)
        if status in (400, 401, 403, 404, 422):
            logger.error("activation refused",
                         extra={"salon_id": salon_id, "status": status, "yclients_message": message})
            return ActivationResult(ActivationOutcome.PERMANENT_FAILURE, status, message)
        return ActivationResult(ActivationOutcome.TRANSIENT_FAILURE, status, message)


def _json_or_none(response: requests.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
