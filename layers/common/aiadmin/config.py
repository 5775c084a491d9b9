"""Settings read from the environment: typed, checked all at once, secrets read when used.

Every setting is defined here once, as a type that carries its variable's name, its default and
its check (`TableName`, `JwtSecret`, ...). A component's settings class (`aiadmin.settings`, the
runner's in `wa_runner.__main__`) is a `ComponentSettings` naming exactly the settings it reads;
`load()` reports *every* missing or malformed value in one `SettingsError`, so a bad deploy fails
with the whole list.

A secret (`Secret`) is given either in its variable (the local stack, tests) or, in AWS, as the
name of an SSM SecureString in `<NAME>_PARAM`. That one is read (decrypted, with powertools
Parameters) when a request first needs it and again once it is `SECRET_MAX_AGE_SECONDS` old:
never at load, so a SnapStart snapshot holds no secret, and a rotated one is used within minutes.
The local stack's built-in secrets are refused wherever the code runs in Lambda or on ECS.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Self
from urllib.parse import urlparse

from pydantic import Field, PlainValidator, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_YCLIENTS_BASE_URL = "https://api.yclients.com"
# A secret read from SSM is read again once this old (powertools' cache): rotation takes effect.
SECRET_MAX_AGE_SECONDS = 300

# The local stack's built-in credentials (local/stack.py uses these): fine on a developer's
# machine, refused wherever the code runs in AWS (see `_in_aws`). Any secret containing the
# marker is refused there too, so a copied variant is caught as well.
LOCAL_PARTNER_TOKEN = "local-partner-token-not-a-secret"  # noqa: S105
LOCAL_JWT_SECRET = "local-jwt-secret-not-a-secret-0123456789"  # noqa: S105
# The local stack's key for the messages API (`Authorization: Bearer <key>`, checked by its
# gateway); in AWS the API takes IAM (SigV4) only, and `MESSAGES_API_KEY` is refused there.
LOCAL_MESSAGES_API_KEY = "local-messages-api-key-not-a-secret"
_LOCAL_SECRET_MARKER = "not-a-secret"  # noqa: S105
# Set by the Lambda runtime and by the ECS (Fargate) agent respectively.
_AWS_RUNTIME_VARIABLES = ("AWS_LAMBDA_FUNCTION_NAME", "ECS_CONTAINER_METADATA_URI_V4")


class SettingsError(RuntimeError):
    """Raised with every problem found in the environment (or, for a secret in SSM, in its value)."""


def _in_aws(env: Mapping[str, str]) -> bool:
    """Running in Lambda or on ECS (Fargate), where only real secrets belong."""
    return any(env.get(name) for name in _AWS_RUNTIME_VARIABLES)


def read_secret_parameter(name: str) -> str:
    """An SSM SecureString, decrypted; powertools keeps it for `SECRET_MAX_AGE_SECONDS`."""
    # Imported here: only AWS deployments use SSM, and no import pays for it.
    from aws_lambda_powertools.utilities import parameters

    return str(parameters.get_parameter(name, decrypt=True, max_age=SECRET_MAX_AGE_SECONDS))


# ---- what the environment gives a secret or local-only setting ----------------------------------

@dataclass(frozen=True)
class _Given:
    """A secret or local-only setting as the environment gives it: the variable's value, or (a
    secret) the name of the SSM parameter holding it; and whether the code runs in AWS."""

    env: str
    value: str | None
    parameter: str | None
    in_aws: bool


class _SecretMarker:
    """In a setting type's metadata: a secret (`<NAME>_PARAM` is read too)."""


class _LocalOnlyMarker:
    """In a setting type's metadata: for the local stack only (any value is refused in AWS)."""


_SECRET = _SecretMarker()
_LOCAL_ONLY = _LocalOnlyMarker()


def _is(field: FieldInfo, marker: object) -> bool:
    return any(item is marker for item in field.metadata)


def _env_name(field: FieldInfo) -> str:
    alias = field.validation_alias
    assert isinstance(alias, str), "every setting type names its variable"
    return alias


class _Environment(PydanticBaseSettingsSource):
    """Each setting's variable; for a secret whose variable is unset, its `<NAME>_PARAM` (the
    parameter's name only: its value is read on use)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self._environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        env = _env_name(field)
        raw = self._environ.get(env)
        secret, local_only = _is(field, _SECRET), _is(field, _LOCAL_ONLY)
        parameter = self._environ.get(env + "_PARAM") or None if secret and raw is None else None
        if raw is None and parameter is None:
            return None, env, False
        if secret or local_only:
            return _Given(env, raw, parameter, _in_aws(self._environ)), env, False
        return raw, env, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            value, env, _ = self.get_field_value(field, name)
            if value is not None:
                values[env] = value
        return values


class ComponentSettings(BaseSettings):
    """The settings one component reads: a subclass names them as fields typed with the setting
    types below. Read from the environment only (no .env file, no secrets directory)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", validate_default=True)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _Environment(settings_cls, os.environ))

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> Self:
        """The settings from `environ` (default: the process's environment), or SettingsError
        naming every problem. No secret is read here: see `Secret`."""
        values = _Environment(cls, os.environ if environ is None else environ)()
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise SettingsError("Invalid configuration: " + "; ".join(_problems(cls, exc))) from None


def _problems(cls: type[BaseSettings], error: ValidationError) -> list[str]:
    """One line per setting, named by its variable. The value itself is never echoed: it may be a
    secret."""
    secrets = {_env_name(f) for f in cls.model_fields.values() if _is(f, _SECRET)}
    problems = []
    for detail in error.errors(include_input=False, include_url=False):
        env = str(detail["loc"][0]) if detail["loc"] else "settings"
        if detail["type"] == "missing":
            problems.append(f"{env} (or {env}_PARAM): missing" if env in secrets else f"{env}: missing")
        else:
            problems.append(f"{env}: {detail['msg'].removeprefix('Value error, ')}")
    return problems


# ---- secrets ----------------------------------------------------------------------------------

class Secret:
    """A secret setting. From its variable, the value is checked at load and kept as a SecretStr;
    from SSM (`<NAME>_PARAM`), it is read and checked by `reveal()`, when a request needs it."""

    __slots__ = ("_check", "_env", "_in_aws", "_parameter", "_value")

    def __init__(self, env: str, check: Callable[[str, bool], str], in_aws: bool,
                 value: SecretStr | None = None, parameter: str | None = None) -> None:
        self._env, self._check, self._in_aws = env, check, in_aws
        self._value, self._parameter = value, parameter

    @property
    def parameter(self) -> str | None:
        """The SSM parameter's name, when the value is read from there."""
        return self._parameter

    def reveal(self) -> str:
        """The value: from SSM, read now unless powertools has it from the last
        `SECRET_MAX_AGE_SECONDS`. Raises SettingsError when it cannot be read or is not fit."""
        if self._value is not None:
            return self._value.get_secret_value()
        assert self._parameter is not None
        try:
            raw = read_secret_parameter(self._parameter)
        except Exception as exc:  # the parameter's name is not secret; the cause is in the type
            raise SettingsError(f"{self._env}_PARAM: cannot read the parameter ({type(exc).__name__})") from None
        try:
            return self._check(raw, self._in_aws)
        except ValueError as exc:
            raise SettingsError(f"{self._env}_PARAM: the parameter's value {exc}") from None

    def __repr__(self) -> str:
        return f"Secret({self._env}, {'from ' + self._parameter if self._parameter else '***'})"

    __str__ = __repr__


def _refuse_local_value(raw: str, in_aws: bool, env: str) -> None:
    if in_aws and (_LOCAL_SECRET_MARKER in raw or raw in (LOCAL_PARTNER_TOKEN, LOCAL_JWT_SECRET)):
        raise ValueError(f"is the local stack's built-in test value, refused in AWS "
                         f"(set {env}_PARAM to a SecureString parameter holding the real one)")


def _secret(check: Callable[[str], str], optional: bool = False) -> PlainValidator:
    """A Secret from what the environment gives (`_Given`); with `optional`, an empty variable
    (or none at all: the field's default) is None."""

    def validate(given: _Given | None) -> Secret | None:
        if given is None:
            return None
        if optional and given.parameter is None and not (given.value or "").strip():
            return None

        def checked(raw: str, in_aws: bool) -> str:
            _refuse_local_value(raw, in_aws, given.env)
            return check(raw)

        if given.value is None:  # in SSM: read and checked on use
            return Secret(given.env, checked, given.in_aws, parameter=given.parameter)
        return Secret(given.env, checked, given.in_aws, value=SecretStr(checked(given.value, given.in_aws)))

    return PlainValidator(validate)


def _min_length(length: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        if len(value) < length:
            raise ValueError(f"must be at least {length} characters")
        return value

    return check


def _any_secret(value: str) -> str:
    return value


def _postgres_url(value: str) -> str:
    """A postgres:// URL (it holds a password)."""
    parsed = urlparse(value)
    if parsed.scheme not in ("postgres", "postgresql") or not parsed.netloc:
        raise ValueError("must be a postgres:// or postgresql:// URL")
    return value


# ---- checks of plain settings (each takes the variable's text) --------------------------------

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
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise ValueError("must be a positive integer")
    return number


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not number > 0:
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


def _flag(value: str) -> bool:
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if value.strip().lower() in ("", "0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _local_frame_ancestors(given: _Given | str) -> list[str]:
    if isinstance(given, str):  # the default
        return given.split()
    value = given.value or ""
    if given.in_aws and value.strip():
        raise ValueError("is for the local stack only, refused in AWS")
    return value.split()


def _local_only_text(given: _Given | None) -> str | None:
    """A local-only value: None when unset or empty; refused in AWS."""
    if given is None:
        return None
    value = (given.value or "").strip()
    if given.in_aws and value:
        raise ValueError("is for the local stack only, refused in AWS")
    return value or None


def _text(check: Callable[[str], Any]) -> PlainValidator:
    """`check` applied to the variable's text (a default is written as text too)."""

    def validate(value: object) -> Any:
        if not isinstance(value, str):
            raise ValueError("must be text")
        return check(value)

    return PlainValidator(validate)


def _var(env: str, default: str | None = None) -> Any:
    return Field(validation_alias=env) if default is None else Field(validation_alias=env, default=default)


# ---- the settings ----------------------------------------------------------------------------

TableName = Annotated[str, _var("TABLE_NAME"), _text(_non_empty)]
YClientsBaseUrl = Annotated[str, _var("YCLIENTS_BASE_URL", DEFAULT_YCLIENTS_BASE_URL), _text(_url)]
YClientsAppId = Annotated[int, _var("YCLIENTS_APP_ID"), _text(_positive_int)]
PartnerToken = Annotated[Secret, _var("YCLIENTS_PARTNER_TOKEN"), _SECRET, _secret(_min_length(8))]
# The key of `user_data_sign`, when YClients gives one apart from the partner token.
SigningKey = Annotated[Secret | None, Field(validation_alias="YCLIENTS_SIGNING_KEY", default=None),
                       _SECRET, _secret(_any_secret, optional=True)]
# Unverified: ask YClients for the salon's users and refuse a consent from anyone else.
CheckSalonUsers = Annotated[bool, _var("YCLIENTS_CHECK_SALON_USERS", "false"), _text(_flag)]
JwtSecret = Annotated[Secret, _var("JWT_SECRET"), _SECRET, _secret(_min_length(32))]
WebSocketUrl = Annotated[str, _var("WEBSOCKET_URL"), _text(_url)]
WebSocketManagementUrl = Annotated[str, _var("WEBSOCKET_MANAGEMENT_URL"), _text(_url)]
PublicBaseUrl = Annotated[str, _var("PUBLIC_BASE_URL"), _text(_url)]
TokenTtlSeconds = Annotated[int, _var("ONBOARDING_TOKEN_TTL_SECONDS", "1800"), _text(_positive_int)]
WaEngine = Annotated[str, _var("WA_ENGINE", "simulated"), _text(_non_empty)]
WaSimServerUrl = Annotated[str, _var("WA_SIM_SERVER_URL"), _text(_url)]
WaTimeScale = Annotated[float, _var("WA_TIME_SCALE", "1"), _text(_positive_float)]
SessionsDir = Annotated[str, _var("SESSIONS_DIR", "./.local-data/sessions"), _text(_non_empty)]
# Keys of every salon in one Postgres database instead of one SQLite file per salon.
WaKeysPostgresUrl = Annotated[Secret | None, Field(validation_alias="WA_KEYS_POSTGRES_URL", default=None),
                              _SECRET, _secret(_postgres_url, optional=True)]
# How often a runner looks for unowned sessions: half of it is the average wait before a new
# linking attempt starts (one small index Query each time).
RunnerPollSeconds = Annotated[float, _var("RUNNER_POLL_SECONDS", "0.1"), _text(_positive_float)]
# A runner's membership lease: it renews every sixth of it; a runner that cannot renew stops its
# sessions, and the others take them over a tenth of it after it ended.
RunnerLeaseSeconds = Annotated[int, _var("RUNNER_LEASE_SECONDS", "20"), _text(_positive_int)]
# How often a runner looks for commands for its sessions (one index query each time).
RunnerCommandPollSeconds = Annotated[float, _var("RUNNER_COMMAND_POLL_SECONDS", "0.5"), _text(_positive_float)]
# The safety net behind the command index: every owned session compared this often.
RunnerReconcileSeconds = Annotated[float, _var("RUNNER_RECONCILE_SECONDS", "300"), _text(_positive_float)]
# Activations (YClients calls with their retries) one runner runs at once.
RunnerActivationWorkers = Annotated[int, _var("RUNNER_ACTIVATION_WORKERS", "16"), _text(_positive_int)]
# Linking attempts one runner runs at once; over it, others take the new ones.
RunnerMaxPairings = Annotated[int, _var("RUNNER_MAX_PAIRINGS", "20"), _text(_positive_int)]
# Linked sessions a runner connects at the same time when resuming (start, takeover).
RunnerResumeConcurrency = Annotated[int, _var("RUNNER_RESUME_CONCURRENCY", "5"), _text(_positive_int)]
# A linking attempt with no page open and no scan for this long is stopped.
RunnerAbandonSeconds = Annotated[float, _var("RUNNER_ABANDON_SECONDS", "160"), _text(_positive_float)]
ActivationRetrySeconds = Annotated[float, _var("ACTIVATION_RETRY_SECONDS", "1"), _text(_positive_float)]
# Channels announced at activation (chat-bot category apps): comma-separated (`whatsapp`, `sms`).
# None by default: declaring `whatsapp` offers YClients' client notifications to us, which we
# do not serve (YClients sends them to the partner, `../shared/yclients-protocol.md` §2).
YClientsChannels = Annotated[tuple[str, ...], _var("YCLIENTS_CHANNELS", ""), _text(_channels)]
EntityQueueUrl = Annotated[str, _var("ENTITY_QUEUE_URL"), _text(_url)]
# ---- messages through the salon's WhatsApp (README "Messages") ----
# The SQS FIFO queue the runner puts clients' messages and receipts on, for AI Admin. Required by
# the runner: WhatsApp has acknowledged a message by the time it reaches us, so one with nowhere to
# go would be lost.
InboundQueueUrl = Annotated[str, _var("INBOUND_QUEUE_URL"), _text(_url)]
# Messages a salon's outbox holds at most (accepted, not sent yet): past it the API answers 429.
MessagesOutboxMax = Annotated[int, _var("MESSAGES_OUTBOX_MAX", "500"), _text(_positive_int)]
# Pace of replies in chats whose client wrote within the last 24 h: a token bucket of this rate
# per salon, with this burst (a conversation's quick answers go at once).
MessagesReplyPerSecond = Annotated[float, _var("MESSAGES_REPLY_PER_SECOND", "1"), _text(_positive_float)]
MessagesReplyBurst = Annotated[int, _var("MESSAGES_REPLY_BURST", "100"), _text(_positive_int)]
# Pace of messages to chats whose client has not written (reminders, first contact) per salon:
# what unofficial WhatsApp clients get banned for first.
MessagesFirstContactPerMinute = Annotated[float, _var("MESSAGES_FIRST_CONTACT_PER_MINUTE", "6"),
                                          _text(_positive_float)]
# Every message of one salon, whatever the chat: the ceiling over both paces.
MessagesPerMinute = Annotated[int, _var("MESSAGES_PER_MINUTE", "120"), _text(_positive_int)]
# The local stack's key for the messages API (its gateway checks it); refused in AWS, where the
# API takes IAM auth.
MessagesApiKey = Annotated[str | None, Field(validation_alias="MESSAGES_API_KEY", default=None), _LOCAL_ONLY,
                           PlainValidator(_local_only_text)]
# Least time between two pairing-code requests of one salon (each makes WhatsApp notify a phone).
PairingMinIntervalSeconds = Annotated[float, _var("PAIRING_MIN_INTERVAL_SECONDS", "30"), _text(_positive_float)]
# Where the owner's page sends them back to: YClients' web app (the local stack: its fake).
YClientsAppUrl = Annotated[str, _var("YCLIENTS_APP_URL", "https://yclients.com/"), _text(_link)]
# Origins besides YClients' that may frame the owner's page: the local stack's test pages only
# (space-separated CSP sources), refused in AWS.
LocalFrameAncestors = Annotated[list[str], _var("PAGE_LOCAL_FRAME_ANCESTORS", ""), _LOCAL_ONLY,
                                PlainValidator(_local_frame_ancestors)]
