"""Least privilege, throttling and secrets in template.yaml (issue 9), read as the local stack
reads it."""

from __future__ import annotations

import json
import re
from typing import Any

from local.template import load_template

TEMPLATE = load_template()
RESOURCES = TEMPLATE.resources
TABLE_ARNS = ({"Fn::GetAtt": ["AppTable", "Arn"]}, {"Fn::Sub": "${AppTable.Arn}/index/*"})


def _statements(resource: dict[str, Any]) -> list[dict[str, Any]]:
    props = resource["Properties"]
    if resource["Type"] == "AWS::Serverless::Function":
        return [s for policy in props.get("Policies", []) if isinstance(policy, dict)
                for s in policy.get("Statement", [])]
    return [s for policy in props.get("Policies", []) for s in policy["PolicyDocument"]["Statement"]]


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


ROLES = {name: res for name, res in RESOURCES.items()
         if res["Type"] in ("AWS::Serverless::Function", "AWS::IAM::Role") and name != "RunnerTaskExecutionRole"}


def test_no_function_gets_a_managed_crud_or_read_policy() -> None:
    for name, res in ROLES.items():
        if res["Type"] == "AWS::Serverless::Function":
            names = [next(iter(p)) for p in res["Properties"].get("Policies", []) if isinstance(p, dict)]
            assert not {"DynamoDBCrudPolicy", "DynamoDBReadPolicy", "DynamoDBWritePolicy"} & set(names), name


def test_dynamodb_access_is_named_actions_on_the_table_and_its_indexes_only() -> None:
    allowed = {"dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query", "dynamodb:PutItem",
               "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:ConditionCheckItem"}
    for name, res in ROLES.items():
        for statement in _statements(res):
            dynamo = [a for a in _actions(statement) if a.startswith("dynamodb:")]
            if not dynamo:
                continue
            assert set(dynamo) <= allowed and "*" not in "".join(dynamo), (name, dynamo)
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            assert all(r in TABLE_ARNS for r in resources), (name, resources)
            if any("index" in json.dumps(r) for r in resources):
                assert dynamo == ["dynamodb:Query"], name


def test_manage_connections_is_post_and_delete_of_connections_only() -> None:
    """Push (POST) and close an ended token's socket (DELETE); never read a connection (GET)."""
    found = 0
    for name, res in ROLES.items():
        for statement in _statements(res):
            if "execute-api:ManageConnections" in _actions(statement):
                found += 1
                resources = statement["Resource"] if isinstance(statement["Resource"], list) \
                    else [statement["Resource"]]
                endings = sorted(r["Fn::Sub"].rsplit("/${Stage}/", 1)[1] for r in resources)
                assert endings == ["DELETE/@connections/*", "POST/@connections/*"], name
    assert found >= 3  # WsMessage, StateStream, the runner


def test_no_websocket_log_can_record_the_token_in_the_query() -> None:
    """The page's token travels in the `$connect` query string. API Gateway's execution logs with
    data tracing record whole requests, query included: they stay off. An access log, if one is
    ever added, may only use `$context` variables that hold no query string or header."""
    stage = RESOURCES["WebSocketStage"]["Properties"]
    for route in [stage.get("DefaultRouteSettings", {}), *stage.get("RouteSettings", {}).values()]:
        assert not route.get("DataTraceEnabled"), route
        assert route.get("LoggingLevel", "OFF") in ("OFF", "ERROR"), route
    access_log = stage.get("AccessLogSettings")
    if access_log:
        variables = set(re.findall(r"\$context\.[A-Za-z.]+", json.dumps(access_log.get("Format", ""))))
        safe = {"$context.requestId", "$context.extendedRequestId", "$context.connectionId", "$context.routeKey",
                "$context.eventType", "$context.status", "$context.requestTime", "$context.requestTimeEpoch",
                "$context.integrationLatency", "$context.identity.sourceIp", "$context.error.message",
                "$context.integration.status", "$context.messageId", "$context.stage", "$context.apiId"}
        assert variables <= safe, variables - safe


def test_the_runner_cannot_read_the_jwt_secret_but_can_read_the_keys_database_url() -> None:
    role = json.dumps(RESOURCES["RunnerTaskRole"])
    assert "JwtSecretParameter" not in role
    assert "WaKeysPostgresUrlParameter" in role
    [container] = RESOURCES["RunnerTaskDefinition"]["Properties"]["ContainerDefinitions"]
    environment = json.dumps(container["Environment"])
    assert "JWT_SECRET" not in environment and "WA_KEYS_POSTGRES_URL_PARAM" in environment


def test_every_route_has_its_own_throttling() -> None:
    http = RESOURCES["HttpApi"]["Properties"]["RouteSettings"]
    assert {f"{r.method} {r.path}" for r in TEMPLATE.http_routes} <= set(http)
    ws = RESOURCES["WebSocketStage"]["Properties"]["RouteSettings"]
    assert set(TEMPLATE.ws_routes) <= set(ws)
    for settings in [*http.values(), *ws.values()]:
        rate, burst = settings["ThrottlingRateLimit"], settings["ThrottlingBurstLimit"]
        assert 0 < rate <= burst


def test_the_webhook_function_has_reserved_concurrency() -> None:
    assert RESOURCES["CallbackFunction"]["Properties"]["ReservedConcurrentExecutions"] == {
        "Ref": "WebhookReservedConcurrency"}


def test_no_handler_response_is_recorded_by_xray() -> None:
    assert TEMPLATE.globals_env["POWERTOOLS_TRACER_CAPTURE_RESPONSE"] == "false"


def _matches(pattern: Any, value: Any) -> bool:
    """EventBridge-style content filter, as far as the template's FilterCriteria use it."""
    if isinstance(pattern, list):
        return value in pattern
    return isinstance(value, dict) and all(k in value and _matches(p, value[k]) for k, p in pattern.items())


def test_the_salon_secrets_item_is_in_no_index_and_never_reaches_the_stream_consumer() -> None:
    secrets_item = {"pk": {"S": "SALON#1"}, "sk": {"S": "SECRETS"}, "api_key": {"S": "k"},
                    "webhook_secret": {"S": "w"}}
    for index in TEMPLATE.tables()["AppTable"].get("GlobalSecondaryIndexes", []):
        keys = {k["AttributeName"] for k in index["KeySchema"]}
        assert not keys & set(secrets_item), index["IndexName"]
    [pattern] = [json.loads(f["Pattern"]) for f in
                 RESOURCES["StateStreamFunction"]["Properties"]["Events"]["SalonStateChanges"]["Properties"]
                 ["FilterCriteria"]["Filters"]]
    assert not _matches(pattern, {"dynamodb": {"NewImage": secrets_item}})
    assert _matches(pattern, {"dynamodb": {"NewImage": {**secrets_item, "sk": {"S": "STATE"}}}})
