"""template.yaml for messages (issue 17): the API's routes take IAM auth (and only they), its
function's least privilege, the inbound FIFO queue with its dead-letter queue and alarm, the
runner's publishing right and setting, what AI Admin is given; and the local stack reading the
same: the gateway's IAM routes, the FIFO queues in moto."""

from __future__ import annotations

from typing import Any

import boto3
from cfnlint.decode import cfn_yaml

from local.gateway import iam_routes
from local.queues import create_all_queues
from local.template import TEMPLATE, Template

SEND, STATUS = ("POST", "/salons/{salon_id}/messages"), ("GET", "/salons/{salon_id}/messages/{message_id}")


def test_the_messages_routes_and_only_they_take_iam_auth(template: Template) -> None:
    routes = {(r.method, r.path): r.function for r in template.http_routes}
    assert routes[SEND] == routes[STATUS] == "MessagesFunction"
    assert iam_routes(template) == {SEND, STATUS}
    assert template.resources["HttpApi"]["Properties"]["Auth"] == {"EnableIamAuthorizer": True}


def test_the_messages_function_reads_and_writes_items_only(template: Template) -> None:
    props = template.resources["MessagesFunction"]["Properties"]
    [statement] = [s for policy in props["Policies"] for s in policy["Statement"]]
    assert sorted(statement["Action"]) == ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"]
    assert statement["Resource"] == {"Fn::GetAtt": ["AppTable", "Arn"]}


def test_the_inbound_queue_is_fifo_deduplicated_by_the_runner_with_an_alarmed_dead_letter_queue(
        template: Template) -> None:
    resources = template.resources
    queue = resources["InboundQueue"]["Properties"]
    assert queue["FifoQueue"] is True and queue["ContentBasedDeduplication"] is False
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["InboundDeadLetterQueue", "Arn"]}
    assert resources["InboundDeadLetterQueue"]["Properties"]["FifoQueue"] is True
    alarm = resources["InboundDeadLetterAlarm"]["Properties"]
    assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["InboundDeadLetterQueue",
                                                                                  "QueueName"]}}]


def test_the_runner_publishes_to_the_inbound_queue_and_knows_where_it_is(template: Template) -> None:
    statements = template.resources["RunnerTaskRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    sqs = [s for s in statements if "sqs:" in str(s["Action"])]
    assert [(s["Action"], s["Resource"]) for s in sqs] == [("sqs:SendMessage", {"Fn::GetAtt": ["InboundQueue",
                                                                                                 "Arn"]})]
    [container] = template.resources["RunnerTaskDefinition"]["Properties"]["ContainerDefinitions"]
    assert {"Name": "INBOUND_QUEUE_URL", "Value": {"Ref": "InboundQueue"}} in container["Environment"]


def test_ai_admin_is_given_the_api_url_the_queue_and_a_policy_to_call_them(template: Template) -> None:
    outputs: dict[str, Any] = dict(cfn_yaml.load(str(TEMPLATE))["Outputs"])
    assert {"MessagesApiUrl", "MessagesApiCallerPolicyArn", "InboundQueueUrl", "InboundQueueArn"} <= set(outputs)
    policy = template.resources["MessagesApiCallerPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    invoke = next(s for s in policy if s["Action"] == "execute-api:Invoke")
    assert [r["Fn::Sub"].rsplit("}/", 1)[1] for r in invoke["Resource"]] == [
        "*/POST/salons/*/messages", "*/GET/salons/*/messages/*"]
    read = next(s for s in policy if s["Sid"] == "ReadInboundQueue")
    assert "sqs:SendMessage" not in read["Action"] and read["Resource"] == {"Fn::GetAtt": ["InboundQueue", "Arn"]}


def test_the_local_stack_makes_the_fifo_queues_with_their_redrive(aws: None, template: Template) -> None:
    sqs = boto3.client("sqs")
    urls = create_all_queues(sqs, template)
    assert urls["InboundQueue"].endswith("/InboundQueue.fifo")
    assert urls["InboundDeadLetterQueue"].endswith("/InboundDeadLetterQueue.fifo")
    assert not urls["EntityQueue"].endswith(".fifo")
    attributes = sqs.get_queue_attributes(QueueUrl=urls["InboundQueue"], AttributeNames=["All"])["Attributes"]
    assert attributes["FifoQueue"] == "true" and attributes["ContentBasedDeduplication"] == "false"
    assert "InboundDeadLetterQueue.fifo" in attributes["RedrivePolicy"]
    # The runner's publish: grouped per salon and chat, deduplicated on WhatsApp's id.
    for _ in range(2):
        sqs.send_message(QueueUrl=urls["InboundQueue"], MessageBody="{}", MessageGroupId="1:7900",
                         MessageDeduplicationId="3EB0")
    assert len(sqs.receive_message(QueueUrl=urls["InboundQueue"], MaxNumberOfMessages=10)["Messages"]) == 1
