"""One local stack for the whole run, shared by every integration module that does not start
its own: `stack` and `data_dir` below. Starting a stack costs seconds of CPU; most modules only
need one with the usual settings, and each keeps to salon ids of its own (see each module).

A module starts its own stack (`local.process.local_stack`, overriding `stack`) when it needs
other settings or would disturb the others: several runners or a killed one, the DynamoDB fault
proxy, real WhatsApp timings, a check over everything the stack wrote or printed, or a burst
of linking attempts that would fill the runner's pairing slots."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from local.process import RunningStack, local_stack
from tests.helpers import SHARED_STACK_ENV, SHARED_STACK_TIME_SCALE, report_stack_output_on_failure


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shared-stack")


@pytest.fixture(scope="session")
def shared_stack(shared_data_dir: Path) -> Iterator[RunningStack]:
    with local_stack(time_scale=SHARED_STACK_TIME_SCALE, data_dir=shared_data_dir,
                     extra_env=SHARED_STACK_ENV) as running:
        yield running


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, shared_stack: RunningStack) -> Iterator[RunningStack]:
    """The shared stack; what it printed is shown when a test of this module failed."""
    yield shared_stack
    report_stack_output_on_failure(request, shared_stack)


@pytest.fixture(scope="module")
def data_dir(shared_data_dir: Path) -> Path:
    """Where the shared stack's runner keeps WhatsApp keys (`sessions/<salon id>.db`)."""
    return shared_data_dir
