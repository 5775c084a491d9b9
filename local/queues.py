"""The template's SQS queues in the local stack's moto server, FIFO ones included.

`local.template.create_queues` makes standard queues; a FIFO queue (`FifoQueue: true`, the inbound
queue and its dead-letter queue) is made here with its FIFO attributes, under its logical id plus
the `.fifo` suffix SQS requires (CloudFormation adds it to the names it generates too)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from local.template import Template, create_queues

# moto's default account: a queue's URL is `<moto URL>/<account>/<name>`.
MOTO_ACCOUNT_ID = "123456789012"
INBOUND_QUEUE = "InboundQueue"
_FIFO_ATTRIBUTES = ("ContentBasedDeduplication", "DeduplicationScope", "FifoThroughputLimit",
                    "MessageRetentionPeriod", "VisibilityTimeout", "DelaySeconds", "ReceiveMessageWaitTimeSeconds")


def _queues(template: Template) -> dict[str, dict[str, Any]]:
    return {name: res.get("Properties", {}) for name, res in template.resources.items()
            if res.get("Type") == "AWS::SQS::Queue"}


def _fifo(props: dict[str, Any]) -> bool:
    return str(props.get("FifoQueue", "")).lower() == "true"


def queue_name(logical_id: str, fifo: bool) -> str:
    return f"{logical_id}.fifo" if fifo else logical_id


def local_queue_url(moto_url: str, logical_id: str = INBOUND_QUEUE, fifo: bool = True) -> str:
    """Where moto serves a queue of the stack (known before the queue exists: a process started
    against a running stack, such as a benchmark's runner, finds it with this)."""
    return f"{moto_url.rstrip('/')}/{MOTO_ACCOUNT_ID}/{queue_name(logical_id, fifo)}"


def _dead_letter_target(props: dict[str, Any]) -> str | None:
    target = (props.get("RedrivePolicy") or {}).get("deadLetterTargetArn")
    if isinstance(target, dict) and "Fn::GetAtt" in target:
        value = target["Fn::GetAtt"]
        return str(value[0] if isinstance(value, list) else str(value).split(".")[0])
    return None


def create_fifo_queues(sqs: Any, template: Template) -> dict[str, str]:
    """Create the template's FIFO queues (dead-letter queues first); logical id -> queue URL."""
    queues = {name: props for name, props in _queues(template).items() if _fifo(props)}
    urls: dict[str, str] = {}
    for logical_id in sorted(queues, key=lambda name: "RedrivePolicy" in queues[name]):
        props = queues[logical_id]
        attributes = {"FifoQueue": "true"}
        attributes.update({key: str(props[key]).lower() if isinstance(props[key], bool) else str(props[key])
                           for key in _FIFO_ATTRIBUTES if key in props})
        target = _dead_letter_target(props)
        if target in urls:
            arn = sqs.get_queue_attributes(QueueUrl=urls[str(target)], AttributeNames=["QueueArn"])
            attributes["RedrivePolicy"] = json.dumps({
                "deadLetterTargetArn": arn["Attributes"]["QueueArn"],
                "maxReceiveCount": int(props["RedrivePolicy"].get("maxReceiveCount", 5))})
        urls[logical_id] = sqs.create_queue(QueueName=queue_name(logical_id, True), Attributes=attributes)["QueueUrl"]
    return urls


def create_all_queues(sqs: Any, template: Template) -> dict[str, str]:
    """Every queue of the template, standard (`local.template.create_queues`) and FIFO; logical
    id -> queue URL."""
    standard = {name: res for name, res in template.resources.items()
                if not (res.get("Type") == "AWS::SQS::Queue" and _fifo(res.get("Properties", {})))}
    return {**create_queues(sqs, dataclasses.replace(template, resources=standard)),
            **create_fifo_queues(sqs, template)}
