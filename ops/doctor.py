"""`python -m ops doctor`: everything a deployment needs, checked read-only, one line each
(ok or FAIL, and what to do)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from aiadmin.config import (
    ComponentSettings,
    JwtSecret,
    PartnerToken,
    SettingsError,
    TableName,
    WebSocketManagementUrl,
    YClientsAppId,
    YClientsBaseUrl,
)
from aiadmin.db import Store
from aiadmin.yclients import PartnerApiError, YClientsClient
from ops.salons import RUNNER_STALE_SECONDS


class DoctorSettings(ComponentSettings):
    """Every setting a handler or the runner refuses to start without."""

    table_name: TableName
    yclients_base_url: YClientsBaseUrl
    yclients_app_id: YClientsAppId
    yclients_partner_token: PartnerToken
    jwt_secret: JwtSecret
    websocket_management_url: WebSocketManagementUrl


SECRET_PARAMETERS = ("YCLIENTS_PARTNER_TOKEN_PARAM", "JWT_SECRET_PARAM")
_QUICK = Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 1})


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"
        return text + (f"\n      -> {self.fix}" if not self.ok and self.fix else "")


def _error(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code')}: {error.get('Message', '')}".strip()
    return f"{type(exc).__name__}: {exc}"


def check_settings(environ: Mapping[str, str]) -> tuple[Check, DoctorSettings | None]:
    try:
        settings = DoctorSettings.load(environ)
        # Secrets in SSM are read on use: read them here, so that one that cannot be read or does not
        # fit fails this check.
        for secret in (settings.yclients_partner_token, settings.jwt_secret):
            secret.reveal()
    except SettingsError as exc:
        return Check("settings", False, str(exc), "set them (the stack's parameters, or the environment)"), None
    count = len(DoctorSettings.model_fields)
    return Check("settings", True, f"{count} present and well-formed (values not shown)"), settings


def check_secret_parameters(environ: Mapping[str, str], ssm_client: Callable[[], Any]) -> list[Check]:
    names = [environ[key] for key in SECRET_PARAMETERS if environ.get(key)]
    if not names:
        direct = [key.removesuffix("_PARAM") for key in SECRET_PARAMETERS]
        if all(environ.get(key) for key in direct):
            return [Check("SSM parameters", True, "none configured: the secrets come from the environment")]
        return [Check("SSM parameters", False, f"no {' / '.join(SECRET_PARAMETERS)}, and no secrets in the "
                      "environment either", "use --stack NAME, or set the *_PARAM names (SSM SecureStrings)")]
    ssm = ssm_client()
    checks = []
    for name in names:
        try:
            kind = ssm.get_parameter(Name=name, WithDecryption=False)["Parameter"].get("Type")
        except (ClientError, BotoCoreError) as exc:
            checks.append(Check(f"SSM {name}", False, _error(exc),
                                f"aws ssm put-parameter --type SecureString --name {name} --value '<secret>'"))
            continue
        checks.append(Check(f"SSM {name}", kind == "SecureString", f"{kind}",
                            "" if kind == "SecureString" else "recreate it as a SecureString"))
    return checks


def check_table(client: Any, table_name: str, indexes: list[str]) -> Check:
    fix = "deploy the stack (sam deploy) or point TABLE_NAME at its table"
    try:
        table = client.describe_table(TableName=table_name)["Table"]
        ttl = client.describe_time_to_live(TableName=table_name)["TimeToLiveDescription"]
    except (ClientError, BotoCoreError) as exc:
        return Check(f"table {table_name}", False, _error(exc), fix)
    problems = []
    if table.get("TableStatus") != "ACTIVE":
        problems.append(f"status {table.get('TableStatus')}")
    present = {i["IndexName"]: i.get("IndexStatus", "ACTIVE") for i in table.get("GlobalSecondaryIndexes", [])}
    for index in indexes:
        if index not in present:
            problems.append(f"index {index} missing")
        elif present[index] != "ACTIVE":
            problems.append(f"index {index} {present[index]}")
    if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING") or ttl.get("AttributeName") != "ttl":
        problems.append("TTL on `ttl` not enabled")
    if not table.get("StreamSpecification", {}).get("StreamEnabled"):
        problems.append("stream disabled")
    if problems:
        return Check(f"table {table_name}", False, "; ".join(problems), fix)
    return Check(f"table {table_name}", True, f"ACTIVE, indexes {', '.join(indexes)} ACTIVE, TTL and stream on")


def check_websocket(management: Any, url: str) -> Check:
    """A probe for a connection that cannot exist: 410 Gone means reachable and allowed."""
    try:
        management.get_connection(ConnectionId="ops-doctor-probe")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("GoneException", "410"):
            return Check("WebSocket management API", True, f"{url} answers (probe: 410 Gone, as expected)")
        return Check("WebSocket management API", False, _error(exc),
                     "check WEBSOCKET_MANAGEMENT_URL and execute-api:ManageConnections")
    except BotoCoreError as exc:
        return Check("WebSocket management API", False, _error(exc), "check WEBSOCKET_MANAGEMENT_URL")
    return Check("WebSocket management API", True, f"{url} answers")


def check_runners(store: Store, now: float) -> Check:
    fix = ("no runner is serving: check the ECS service (RunnerServiceName output) and the runner logs; "
           "locally, the stack's runner process")
    try:
        beats = store.members.heartbeats()
    except (ClientError, BotoCoreError) as exc:
        return Check("runner heartbeat", False, _error(exc), fix)
    if not beats:
        return Check("runner heartbeat", False, "no runner has ever reported", fix)
    fresh = [b for b in beats if now - float(b["at"]) <= RUNNER_STALE_SECONDS]
    newest = min(now - float(b["at"]) for b in beats)
    if not fresh:
        return Check("runner heartbeat", False, f"newest is {newest:.0f} s old (limit {RUNNER_STALE_SECONDS} s)", fix)
    sessions = sum(int(b.get("sessions") or 0) for b in fresh)
    return Check("runner heartbeat", True, f"{len(fresh)} runner(s) alive, newest {newest:.1f} s ago, "
                                           f"{sessions} session(s) owned")


def check_yclients(client: YClientsClient, base_url: str) -> Check:
    try:
        tariffs = client.tariffs()
    except PartnerApiError as exc:
        return Check("YClients", False, f"{base_url}: {exc}",
                     "check the partner token (SSM) and YCLIENTS_APP_ID in the YClients developer cabinet")
    except Exception as exc:  # network errors of any kind: one line, not a traceback
        return Check("YClients", False, f"{base_url}: {type(exc).__name__}", "check YCLIENTS_BASE_URL and egress")
    return Check("YClients", True, f"{base_url} accepts our token (app {client.application_id}: "
                                   f"{len(tariffs)} tariff(s))")


def _template_indexes() -> list[str]:
    try:
        from local.template import load_template

        props = load_template().tables()["AppTable"]
        return [str(i["IndexName"]) for i in props.get("GlobalSecondaryIndexes", [])]
    except Exception:  # ops run from a checkout; without template.yaml, the one index the code queries
        return ["LeaseIndex"]


def doctor(environ: Mapping[str, str] | None = None, clock: Callable[[], float] = time.time) -> list[Check]:
    env = dict(os.environ if environ is None else environ)
    checks: list[Check] = []
    settings_check, settings = check_settings(env)
    checks.append(settings_check)
    checks.extend(check_secret_parameters(env, lambda: boto3.client("ssm", config=_QUICK)))
    table_name = env.get("TABLE_NAME", "")
    dynamodb = boto3.resource("dynamodb", config=_QUICK) if table_name else None
    if dynamodb is not None:
        checks.append(check_table(dynamodb.meta.client, table_name, _template_indexes()))
    else:
        checks.append(Check("table", False, "TABLE_NAME is not set", "set it, or use --stack / --local"))
    url = env.get("WEBSOCKET_MANAGEMENT_URL", "")
    if url:
        management = boto3.client("apigatewaymanagementapi", endpoint_url=url, config=_QUICK)
        checks.append(check_websocket(management, url))
    else:
        checks.append(Check("WebSocket management API", False, "WEBSOCKET_MANAGEMENT_URL is not set", "set it"))
    if dynamodb is not None:
        checks.append(check_runners(Store(dynamodb.Table(table_name)), clock()))
    else:
        checks.append(Check("runner heartbeat", False, "not checked: no table", "set TABLE_NAME"))
    if settings is not None:
        client = YClientsClient(settings.yclients_base_url, settings.yclients_partner_token.reveal(),
                                settings.yclients_app_id)
        checks.append(check_yclients(client, settings.yclients_base_url))
    else:
        checks.append(Check("YClients", False, "not checked: the settings above are incomplete",
                            "fix the settings first"))
    return checks
