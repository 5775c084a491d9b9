"""Shared fixtures: AWS credentials that can never reach a real account, and DynamoDB tables
built from template.yaml inside moto."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.dynamodb.models.table import Table as MotoTable

from local.template import Template, create_tables, load_template

os.environ.update({
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "eu-central-1", "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_METRICS_DISABLED": "true",
})
for _name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_PROFILE"):
    os.environ.pop(_name, None)

# moto's backends still start empty for every test; only boto3's default session is kept. By
# default moto replaces it per test, and every client of the new one parses its service model
# again: most of a moto test's set-up time.
KEEP_BOTO3_SESSION = {"core": {"reset_boto3_session": False}}



def _queries_without_a_whole_table_sort() -> None:
    """moto's `Table.query` starts from `all_items()`, which sorts every item of the table, and
    then sorts the items it kept by their keys again: with a few hundred items, most of each
    query's time (DynamoDB's own cost does not grow with the table). Within a query the first
    sort is left out; the second, on every key attribute, decides the order alone, so each query
    answers exactly as before. Scans and everything else keep moto's own `all_items`."""
    if getattr(MotoTable.query, "_unsorted_start", False):
        return
    query, all_items = MotoTable.query, MotoTable.all_items
    inside = threading.local()

    def items_for_query(self: Any) -> list[Any]:
        if not getattr(inside, "query", False):
            return all_items(self)
        if not self.range_key_attr:
            return list(self.items.values())
        return [item for by_range in self.items.values() for item in by_range.values()]

    def unsorted_query(self: Any, *args: Any, **kwargs: Any) -> Any:
        inside.query = True
        try:
            return query(self, *args, **kwargs)
        finally:
            inside.query = False

    unsorted_query._unsorted_start = True  # type: ignore[attr-defined]
    MotoTable.query = unsorted_query  # type: ignore[method-assign]
    MotoTable.all_items = items_for_query  # type: ignore[method-assign]


_queries_without_a_whole_table_sort()


@pytest.fixture(scope="session")
def template() -> Template:
    """template.yaml, parsed once (a third of a second each time)."""
    return load_template()


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws(config=KEEP_BOTO3_SESSION):
        yield


@pytest.fixture
def table(aws: None, template: Template) -> Any:
    names = create_tables(boto3.client("dynamodb"), template)
    return boto3.resource("dynamodb").Table(names["AppTable"])


@pytest.fixture
def store(table: Any) -> Any:
    from aiadmin.db import Store

    return Store(table)


# The longest modules (each a minute or more of waiting on real time) run first. Under xdist
# (`make test`: whole modules per worker, --no-loadscope-reorder) the other worker meanwhile
# takes the rest, so none of these starts last while a worker idles. Only the order of whole
# modules changes; the tests within each keep theirs.
LONGEST_FIRST = (
    "tests/browser/test_owner_page.py",
    "tests/integration/test_dynamo_faults.py",
    "tests/integration/test_ownership.py",
    "tests/integration/test_bad_input.py",
    "tests/unit/test_runner_intake.py",  # the longest unit module (`make unit`)
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every other module, and every module's tests, in collection order
