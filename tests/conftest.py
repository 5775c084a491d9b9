"""Shared fixtures: AWS credentials that can never reach a real account, and DynamoDB tables
built from template.yaml inside moto."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

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
