"""The DynamoDB fault proxy (local/dynamo_faults.py) between boto3 and a moto server: calls
pass through untouched, and while a fault lasts they are held or answered as a throttled
DynamoDB answers, in the wire format botocore parses (and retries)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from botocore.config import Config
from botocore.exceptions import ClientError

from local.dynamo_faults import CONTROL_PATH, DynamoFaults, FaultRequest
from tests.helpers import moto_server
from tests.unit.fakes import FakeClock


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1000.0)  # a small number: remaining seconds come out exact


@pytest.fixture
def proxy(moto_url: str, clock: FakeClock) -> Iterator[DynamoFaults]:
    faults = DynamoFaults(moto_url, clock=clock)
    faults.start()
    yield faults
    faults.stop()


def _client(url: str, attempts: int = 1) -> Any:
    return boto3.client("dynamodb", endpoint_url=url, region_name="eu-central-1",
                        config=Config(retries={"total_max_attempts": attempts, "mode": "legacy"}))


@pytest.fixture
def table(proxy: DynamoFaults) -> str:
    name = f"t{time.monotonic_ns()}"
    _client(proxy.url).create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                                    KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                                    AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}])
    return name


def _timed(call: Any, **params: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = call(**params)
    return result, time.perf_counter() - started


def test_calls_pass_through_unchanged(proxy: DynamoFaults, moto_url: str, table: str) -> None:
    client = _client(proxy.url)
    client.put_item(TableName=table, Item={"pk": {"S": "a"}, "n": {"N": "1"}, "text": {"S": "Салон «Лотос»"}})
    item = client.get_item(TableName=table, Key={"pk": {"S": "a"}}, ConsistentRead=True)["Item"]
    assert item == {"pk": {"S": "a"}, "n": {"N": "1"}, "text": {"S": "Салон «Лотос»"}}
    # What went through the proxy is in moto itself.
    assert _client(moto_url).get_item(TableName=table, Key={"pk": {"S": "a"}})["Item"]["n"] == {"N": "1"}
    with pytest.raises(ClientError) as refused:  # moto's own errors come back as they are
        client.put_item(TableName=table, Item={"pk": {"S": "a"}}, ConditionExpression="attribute_not_exists(pk)")
    assert refused.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    assert proxy.counts["calls"] >= 4 and proxy.counts["delayed"] == proxy.counts["throttled"] == 0


def test_a_delay_holds_every_call_while_it_lasts(proxy: DynamoFaults, clock: FakeClock, table: str) -> None:
    client = _client(proxy.url)
    proxy.inject(FaultRequest(delay_seconds=0.4, for_seconds=20))
    _, slow = _timed(client.put_item, TableName=table, Item={"pk": {"S": "b"}})
    item, slow_read = _timed(client.get_item, TableName=table, Key={"pk": {"S": "b"}})
    assert slow >= 0.4 and slow_read >= 0.4
    assert item["Item"] == {"pk": {"S": "b"}}  # slow, not wrong
    clock.advance(20)
    _, fast = _timed(client.get_item, TableName=table, Key={"pk": {"S": "b"}})
    assert fast < 0.4
    assert proxy.counts["delayed"] == 2 and proxy.current() is None


@pytest.mark.parametrize("error", ["ProvisionedThroughputExceededException", "ThrottlingException",
                                   "RequestLimitExceeded"])
def test_throttling_answers_dynamodbs_own_error(proxy: DynamoFaults, clock: FakeClock, table: str,
                                                error: str) -> None:
    client = _client(proxy.url)
    proxy.inject(FaultRequest(throttle=True, error=error, for_seconds=10))  # type: ignore[arg-type]
    with pytest.raises(ClientError) as throttled:
        client.put_item(TableName=table, Item={"pk": {"S": "c"}})
    assert throttled.value.response["Error"]["Code"] == error
    assert throttled.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    clock.advance(10)
    client.put_item(TableName=table, Item={"pk": {"S": "c"}})
    assert client.get_item(TableName=table, Key={"pk": {"S": "c"}})["Item"] == {"pk": {"S": "c"}}


def test_a_fault_can_be_limited_to_some_operations(proxy: DynamoFaults, table: str) -> None:
    client = _client(proxy.url)
    client.put_item(TableName=table, Item={"pk": {"S": "d"}})
    proxy.inject(FaultRequest(throttle=True, for_seconds=10, operations=["PutItem", "UpdateItem"]))
    assert client.get_item(TableName=table, Key={"pk": {"S": "d"}})["Item"] == {"pk": {"S": "d"}}
    with pytest.raises(ClientError):
        client.put_item(TableName=table, Item={"pk": {"S": "e"}})
    assert proxy.counts["throttled"] == 1


def test_botocore_retries_through_a_short_throttle(moto_url: str) -> None:
    # Real time here: the retries' backoff must outlast the fault (as in AWS).
    faults = DynamoFaults(moto_url)
    faults.start()
    try:
        client = boto3.client("dynamodb", endpoint_url=faults.url, region_name="eu-central-1",
                              config=Config(retries={"mode": "legacy"}))  # DynamoDB's default: 10 attempts
        client.list_tables()
        faults.inject(FaultRequest(throttle=True, for_seconds=0.5))
        assert "TableNames" in client.list_tables()
        assert faults.counts["throttled"] >= 1
    finally:
        faults.stop()


def test_the_control_endpoint(moto_url: str, clock: FakeClock) -> None:
    faults = DynamoFaults(moto_url, clock=clock)

    async def scenario() -> None:
        app = web.Application()
        app.add_routes(faults.control_routes())
        async with TestClient(TestServer(app)) as http:
            for bad in [{"delay_seconds": 2}, {"delay_seconds": -1, "for_seconds": 5},
                        {"delay_seconds": 2, "for_seconds": 100_000}, {"delay_seconds": 60, "for_seconds": 5},
                        {"throttle": True, "for_seconds": 5, "error": "NoSuchError"},
                        {"for_seconds": 5}, {"delay_seconds": 1, "for_seconds": 5, "surprise": 1}]:
                response = await http.post(CONTROL_PATH, json=bad)
                assert response.status == 400, bad
                assert faults.current() is None
            assert (await http.post(CONTROL_PATH, data=b"not json")).status == 400

            response = await http.post(CONTROL_PATH, json={"delay_seconds": 2, "for_seconds": 20})
            assert response.status == 200
            assert (await response.json())["fault"]["delay_seconds"] == 2
            shown = await (await http.get(CONTROL_PATH)).json()
            assert shown["fault"]["remaining_seconds"] == 20
            clock.advance(5)
            assert (await (await http.get(CONTROL_PATH)).json())["fault"]["remaining_seconds"] == 15
            assert (await http.delete(CONTROL_PATH)).status == 200
            assert (await (await http.get(CONTROL_PATH)).json())["fault"] is None

    asyncio.run(scenario())
