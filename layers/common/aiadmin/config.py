"""Settings read from the environment, validated all at once.

A component declares which settings it needs; `load_settings` reports *every* missing or
malformed value in one message, so a bad deploy fails at start with the whole list.
Secrets come either from the variable itself or, in AWS, from SSM Parameter Store
(`<NAME>_PARAM` holds the parameter name; read with powertools Parameters, decrypted and
cached). Secret values are wrapped in `Secret`, whose repr never shows the value.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

DEFAULT_YCLIENTS_BASE_URL = "https://api.yclients.com"

# The local stack's built-in credentials (local/stack.py uses these): fine on a developer's
# machine, refused wherever the code runs in AWS (see `_in_aws`). Any secret containing the
# marker is refused there too, so a copied variant is caught as well.
LOCAL_PARTNER_TOKEN = "local-partner-token-not-a-secret"  # noqa: S105
LOCAL_JWT_SECRET = "local-jwt-secret-not-a-secret-0123456789"  # noqa: S105
_LOCAL_SECRET_MARKER = "not-a-secret"  # noqa: S105
# Set by the Lambda runtime and by the ECS (Fargate) agent respectively.
_AWS_RUNTIME_VARIABLES = ("AWS_LAMBDA_FUNCTION_NAME", "ECS_CONTAINER_METADATA_URI_V4")


class SettingsError(RuntimeError):
    """Raised at start-up with every problem found in the environment."""


class Secret:
    """A string that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _url(value: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https", "ws", "wss") or not parsed.netloc:
        raise ValueError("must be an absolute http(s) or ws(s) URL")
    return value.rstrip("/")


def _link(value: str) -> str:
    """A web address shown to people as a link: kept exactly as written (a trailing slash too)."""
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("must be an absolute http(s) URL")
    return value


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive integer")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError("must be a positive number")
    return number


def _channels(value: str) -> tuple[str, ...]:
    if value.strip().lower() == "none":
        return ()
    channels = tuple(c.strip() for c in value.split(",") if c.strip())
    unknown = [c for c in channels if c not in ("whatsapp", "sms")]
    if unknown:
        raise ValueError(f"unknown channel(s) {', '.join(unknown)}; expected whatsapp and/or sms")
    return channels


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _optional_postgres_url(value: str) -> Secret | None:
    """Empty: not configured. Otherwise a postgres:// URL, which holds a password."""
    if not value.strip():
        return None
    parsed = urlparse(value)
    if parsed.scheme not in ("postgres", "postgresql") or not parsed.netloc:
        raise ValueError("must be a postgres:// or postgresql:// URL")
    return Secret(value)


def _optional_secret(value: str) -> Secret | None:
    """Empty: not configured (the caller falls back to another value)."""
    return Secret(value) if value.strip() else None


def _flag(value: str) -> bool:
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if value.strip().lower() in ("", "0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _secret(min_length: int) -> Callable[[str], Secret]:
    def parse(value: str) -> Secret:
        if len(value) < min_length:
            raise ValueError(f"must be at least {min_length} characters")
        return Secret(value)

    return parse


@dataclass(frozen=True)
class _Field:
    env: str
    parse: Callable[[str], Any]
    default: str | None = None
    secret: bool = False
    local_only: bool = False  # any non-empty value is refused in AWS


_FIELDS: dict[str, _Field] = {
    "table_name": _Field("TABLE_NAME", _non_empty),
    "yclients_base_url": _Field("YCLIENTS_BASE_URL", _url, DEFAULT_YCLIENTS_BASE_URL),
    "yclients_app_id": _Field("YCLIENTS_APP_ID", _positive_int),
    "yclients_partner_token": _Field("YCLIENTS_PARTNER_TOKEN", _secret(8), secret=True),
    # The key of `user_data_sign`, when YClients gives one apart from the partner token.
    "yclients_signing_key": _Field("YCLIENTS_SIGNING_KEY", _optional_secret, "", secret=True),
    # Unverified: ask YClients for the salon's users and refuse a consent from anyone else.
    "yclients_check_salon_users": _Field("YCLIENTS_CHECK_SALON_USERS", _flag, "false"),
    "jwt_secret": _Field("JWT_SECRET", _secret(32), secret=True),
    "websocket_url": _Field("WEBSOCKET_URL", _url),
    "websocket_management_url": _Field("WEBSOCKET_MANAGEMENT_URL", _url),
    "public_base_url": _Field("PUBLIC_BASE_URL", _url),
    "token_ttl_seconds": _Field("ONBOARDING_TOKEN_TTL_SECONDS", _positive_int, "1800"),
    "wa_engine": _Field("WA_ENGINE", _non_empty, "simulated"),
    "wa_sim_server_url": _Field("WA_SIM_SERVER_URL", _url),
    "wa_time_scale": _Field("WA_TIME_SCALE", _positive_float, "1"),
    "sessions_dir": _Field("SESSIONS_DIR", _non_empty, "./.local-data/sessions"),
    # Keys of every salon in one Postgres database instead of one SQLite file per salon.
    "wa_keys_postgres_url": _Field("WA_KEYS_POSTGRES_URL", _optional_postgres_url, "", secret=True),
    # How often a runner looks for unowned sessions: half of it is the average wait before a
    # new linking attempt starts (one small index Query each time).
    "runner_poll_seconds": _Field("RUNNER_POLL_SECONDS", _positive_float, "0.1"),
    # A runner's membership lease: it renews every sixth of it; a runner that cannot renew
    # stops its sessions, and the others take them over a tenth of it after it ended.
    "runner_lease_seconds": _Field("RUNNER_LEASE_SECONDS", _positive_int, "20"),
    # How often a runner looks for commands for its sessions (one index query each time).
    "runner_command_poll_seconds": _Field("RUNNER_COMMAND_POLL_SECONDS", _positive_float, "0.5"),
    # The safety net behind the command index: every owned session compared this often.
    "runner_reconcile_seconds": _Field("RUNNER_RECONCILE_SECONDS", _positive_float, "300"),
    # Activations (YClients calls with their retries) one runner runs at once.
    "runner_activation_workers": _Field("RUNNER_ACTIVATION_WORKERS", _positive_int, "16"),
    # Linking attempts one runner runs at once; over it, others take the new ones.
    "runner_max_pairings": _Field("RUNNER_MAX_PAIRINGS", _positive_int, "20"),
    # Linked sessions a runner connects at the same time when resuming (start, takeover).
    "runner_resume_concurrency": _Field("RUNNER_RESUME_CONCURRENCY", _positive_int, "5"),
    # A linking attempt with no page open and no scan for this long is stopped.
    "runner_abandon_seconds": _Field("RUNNER_ABANDON_SECONDS", _positive_float, "160"),
    "activation_retry_seconds": _Field("ACTIVATION_RETRY_SECONDS", _positive_float, "1"),
    # Channels announced at activation (chat-bot category apps): comma-separated, or `none`.
    "yclients_channels": _Field("YCLIENTS_CHANNELS", _channels, "whatsapp"),
    "entity_queue_url": _Field("ENTITY_QUEUE_URL", _url),
    # Least time between two pairing-code requests of one salon (each makes WhatsApp notify a phone).
    "pairing_min_interval_seconds": _Field("PAIRING_MIN_INTERVAL_SECONDS", _positive_float, "30"),
    # Where the owner's page sends them back to: YClients' web app (the local stack: its fake).
    "yclients_app_url": _Field("YCLIENTS_APP_URL", _link, "https://yclients.com/"),
    # Origins besides YClients' that may frame the owner's page: the local stack's test pages
    # only (space-separated CSP sources), refused in AWS.
    "page_local_frame_ancestors": _Field("PAGE_LOCAL_FRAME_ANCESTORS", str.split, "", local_only=True),
}


@dataclass(frozen=True)
class Settings:
    """The values a component asked for; asking for one it did not declare is a bug."""

    values: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(f"setting {name!r} was not loaded by this component") from None


def _read_secret_parameter(name: str) -> str:
    # Imported lazily: only AWS deployments use SSM, and tests of the parsing need no boto3 call.
    from aws_lambda_powertools.utilities import parameters

    value = parameters.get_parameter(name, decrypt=True, max_age=300)
    return str(value)


def _in_aws(env: Mapping[str, str]) -> bool:
    """Running in Lambda or on ECS (Fargate), where only real secrets belong."""
    return any(env.get(name) for name in _AWS_RUNTIME_VARIABLES)


def load_settings(
    names: Iterable[str],
    environ: Mapping[str, str] | None = None,
    read_parameter: Callable[[str], str] = _read_secret_parameter,
) -> Settings:
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name in names:
        spec = _FIELDS[name]
        raw = env.get(spec.env)
        if raw is None and spec.secret and env.get(spec.env + "_PARAM"):
            try:
                raw = read_parameter(env[spec.env + "_PARAM"])
            except Exception as exc:  # any failure to fetch is reported with the rest
                problems.append(f"{spec.env}_PARAM: cannot read the parameter ({type(exc).__name__})")
                continue
        if raw is None:
            raw = spec.default
        if raw is None:
            hint = f" (or {spec.env}_PARAM)" if spec.secret else ""
            problems.append(f"{spec.env}{hint}: missing")
            continue
        if spec.secret and _in_aws(env) and (_LOCAL_SECRET_MARKER in raw or raw in (LOCAL_PARTNER_TOKEN,
                                                                                   LOCAL_JWT_SECRET)):
            problems.append(f"{spec.env}: is the local stack's built-in test value, refused in AWS "
                            f"(set {spec.env}_PARAM to a SecureString parameter holding the real one)")
            continue
        if spec.local_only and _in_aws(env) and raw.strip():
            problems.append(f"{spec.env}: is for the local stack only, refused in AWS")
            continue
        try:
            values[name] = spec.parse(raw)
        except ValueError as exc:
            # The value itself is never echoed: it may be a secret.
            problems.append(f"{spec.env}: {exc}")
    if problems:
        raise SettingsError("Invalid configuration: " + "; ".join(problems))
    return Settings(values)
