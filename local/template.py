"""Reads template.yaml so the local stack and the tests follow the infrastructure as declared:
HTTP routes, WebSocket routes, function handlers and environment, and DynamoDB tables.

Intrinsic functions are resolved only as far as the local stack needs: `Ref` to a table or a
parameter, and `Sub` strings that name resources; anything else is a local override."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    code_dir: Path
    module: str
    handler: str
    environment: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HttpRoute:
    method: str
    path: str
    function: str


@dataclass(frozen=True)
class StreamSource:
    function: str
    table: str


@dataclass
class Template:
    resources: dict[str, Any]
    globals_env: dict[str, Any]
    functions: dict[str, FunctionSpec]
    http_routes: list[HttpRoute]
    ws_routes: dict[str, str]
    ws_route_selection: str
    streams: list[StreamSource]

    def tables(self) -> dict[str, dict[str, Any]]:
        return {name: res.get("Properties", {}) for name, res in self.resources.items()
                if res.get("Type") == "AWS::DynamoDB::Table"}


_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _CfnLoader(_Loader):
    """YAML with CloudFormation's short forms: `!Ref X` is `{"Ref": "X"}`, `!GetAtt A.B` is
    `{"Fn::GetAtt": ["A", "B"]}`, any other `!Name` is `{"Fn::Name": ...}` (as cfn-lint reads
    them; cfn-lint itself is not imported: it pulls in sympy and networkx, seconds per process)."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    key = suffix if suffix in ("Ref", "Condition") else f"Fn::{suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if key == "Fn::GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:  # pragma: no cover - yaml has no other node kinds
        raise ValueError(f"bad tag !{suffix}")
    return {key: value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


def _read_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_CfnLoader)  # noqa: S506 - a safe loader


_SUB_REF = re.compile(r"\$\{(\w+)(?:\.Arn)?\}")


def _referenced(value: Any) -> str | None:
    """The logical id named by a `Ref`, or by the first `${X}` / `${X.Arn}` of a `Sub`."""
    if isinstance(value, dict):
        if "Ref" in value:
            return str(value["Ref"])
        if "Fn::Sub" in value:
            text = value["Fn::Sub"] if isinstance(value["Fn::Sub"], str) else value["Fn::Sub"][0]
            for name in _SUB_REF.findall(text):
                if not name.startswith("AWS"):
                    return name
        if "Fn::GetAtt" in value:
            target = value["Fn::GetAtt"]
            return str(target[0] if isinstance(target, list) else target.split(".")[0])
    return None


def load_template(path: Path = TEMPLATE) -> Template:
    raw = _read_yaml(path)
    resources: dict[str, Any] = raw["Resources"]
    globals_env = raw.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    functions: dict[str, FunctionSpec] = {}
    http_routes: list[HttpRoute] = []
    streams: list[StreamSource] = []
    for name, res in resources.items():
        if res.get("Type") != "AWS::Serverless::Function":
            continue
        props = res["Properties"]
        module, handler = props["Handler"].rsplit(".", 1)
        functions[name] = FunctionSpec(
            name, (path.parent / props["CodeUri"]).resolve(), module, handler,
            props.get("Environment", {}).get("Variables", {}),
        )
        for event in props.get("Events", {}).values():
            if event["Type"] == "HttpApi":
                http_routes.append(HttpRoute(event["Properties"]["Method"].upper(), event["Properties"]["Path"], name))
            elif event["Type"] == "DynamoDB":
                table = _referenced(event["Properties"]["Stream"])
                if table:
                    streams.append(StreamSource(name, table))
    integrations = {name: _referenced(res["Properties"].get("IntegrationUri"))
                    for name, res in resources.items() if res.get("Type") == "AWS::ApiGatewayV2::Integration"}
    ws_routes: dict[str, str] = {}
    selection = "$request.body.action"
    for res in resources.values():
        if res.get("Type") == "AWS::ApiGatewayV2::Route":
            integration = _referenced(res["Properties"]["Target"])
            function = integrations.get(integration or "")
            if function:
                ws_routes[res["Properties"]["RouteKey"]] = function
        elif res.get("Type") == "AWS::ApiGatewayV2::Api" and res["Properties"].get("ProtocolType") == "WEBSOCKET":
            selection = res["Properties"].get("RouteSelectionExpression", selection)
    return Template(resources, globals_env, functions, http_routes, ws_routes, selection, streams)


def resolve_environment(
    spec: Mapping[str, Any], overrides: Mapping[str, str], resource_names: Mapping[str, str]
) -> dict[str, str]:
    """Environment values for local runs: overrides win; `Ref`s to resources become their local names."""
    env: dict[str, str] = {}
    for key, value in spec.items():
        if key in overrides:
            env[key] = overrides[key]
        elif isinstance(value, (str, int, float)):
            env[key] = str(value)
        elif (ref := _referenced(value)) in resource_names:
            env[key] = resource_names[ref]  # type: ignore[index]
    for key, value in overrides.items():
        env.setdefault(key, value)
    return env


def create_tables(dynamodb: Any, template: Template) -> dict[str, str]:
    """Create every table of the template (named by logical id) through the given boto3 client.
    Returns logical id -> table name."""
    names: dict[str, str] = {}
    for logical_id, props in template.tables().items():
        request: dict[str, Any] = {
            "TableName": logical_id,
            "AttributeDefinitions": props["AttributeDefinitions"],
            "KeySchema": props["KeySchema"],
            "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
        }
        if "GlobalSecondaryIndexes" in props:
            request["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
        if "StreamSpecification" in props:
            request["StreamSpecification"] = {"StreamEnabled": True, **props["StreamSpecification"]}
        dynamodb.create_table(**request)
        ttl = props.get("TimeToLiveSpecification")
        if ttl:
            dynamodb.update_time_to_live(TableName=logical_id, TimeToLiveSpecification=ttl)
        names[logical_id] = logical_id
    return names


def create_queues(sqs: Any, template: Template) -> dict[str, str]:
    """Create every SQS queue of the template (named by logical id) through the given boto3
    client; dead-letter redrive is resolved to the local queue. Returns logical id -> queue URL."""
    queues = {name: res.get("Properties", {}) for name, res in template.resources.items()
              if res.get("Type") == "AWS::SQS::Queue"}
    urls: dict[str, str] = {}
    # Dead-letter queues first: a redrive policy names one by ARN.
    for logical_id in sorted(queues, key=lambda name: "RedrivePolicy" in queues[name]):
        props = queues[logical_id]
        attributes = {key: str(props[key]) for key in ("MessageRetentionPeriod", "VisibilityTimeout") if key in props}
        redrive = props.get("RedrivePolicy")
        if redrive and _referenced(redrive.get("deadLetterTargetArn")) in urls:
            target = urls[str(_referenced(redrive["deadLetterTargetArn"]))]
            arn = sqs.get_queue_attributes(QueueUrl=target, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            attributes["RedrivePolicy"] = json.dumps({"deadLetterTargetArn": arn,
                                                      "maxReceiveCount": int(redrive.get("maxReceiveCount", 5))})
        urls[logical_id] = sqs.create_queue(QueueName=logical_id, Attributes=attributes)["QueueUrl"]
    return urls
