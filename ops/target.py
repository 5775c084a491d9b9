"""Which deployment an ops command talks to, as environment variables for aiadmin.config.

- the environment as it is (the same variables the service reads), or
- `--local URL`: a running local stack (`make dev`), which says where its moto server is;
- `--stack NAME`: a deployed stack, read from CloudFormation (outputs and parameters) with
  boto3's default credentials; secrets stay in SSM (their parameter names are passed on).
"""

from __future__ import annotations

from typing import Any

import boto3
import requests


class TargetError(RuntimeError):
    """The target cannot be reached or described (exit 2)."""


def local_environment(base_url: str) -> dict[str, str]:
    from local.stack import stack_settings

    base = base_url.rstrip("/")
    try:
        described = requests.get(f"{base}/_local/stack", timeout=5).json()
    except (requests.RequestException, ValueError) as exc:
        raise TargetError(f"no local stack answers at {base} ({type(exc).__name__}): start it with `make dev`") from exc
    return {**stack_settings(described["moto_url"], base), "TABLE_NAME": described["table_name"]}


def stack_environment(stack_name: str, region: str | None, cloudformation: Any | None = None) -> dict[str, str]:
    cfn = cloudformation or boto3.client("cloudformation", region_name=region)
    try:
        stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
    except Exception as exc:
        raise TargetError(f"stack {stack_name}: {exc}") from exc
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    parameters = {p["ParameterKey"]: p.get("ResolvedValue", p.get("ParameterValue", ""))
                  for p in stack.get("Parameters", [])}
    env = {
        "TABLE_NAME": outputs.get("TableName", ""),
        "WEBSOCKET_URL": outputs.get("WebSocketUrl", ""),
        # The management API is the WebSocket API's https:// twin.
        "WEBSOCKET_MANAGEMENT_URL": outputs.get("WebSocketUrl", "").replace("wss://", "https://", 1),
        "YCLIENTS_APP_ID": parameters.get("YClientsAppId", ""),
        "YCLIENTS_BASE_URL": parameters.get("YClientsBaseUrl", ""),
        "YCLIENTS_PARTNER_TOKEN_PARAM": parameters.get("PartnerTokenParameter", ""),
        "JWT_SECRET_PARAM": parameters.get("JwtSecretParameter", ""),
        "ENTITY_QUEUE_URL": outputs.get("EntityQueueUrl", ""),
    }
    if region:
        env["AWS_DEFAULT_REGION"] = region
    return {key: value for key, value in env.items() if value}
