"""Many owners at the same moment on the local stack: each gets a page for its own salon.

The local gateway used to run handlers on threads of one interpreter, where powertools'
resolver keeps the current request on a class shared by all of them: under concurrent
redirects an owner could receive another salon's token. Handlers now run as Lambda runs them,
one invocation per worker process at a time (local/lambda_worker.py)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest

from local.owner import follow_redirect, press_connect
from local.process import RunningStack, local_stack
from tests.helpers import report_stack_output_on_failure

pytestmark = pytest.mark.integration

OWNERS = 40


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[RunningStack]:
    with local_stack() as running:

        yield running
        report_stack_output_on_failure(request, running)


def test_owners_redirected_at_the_same_moment_each_get_their_own_salons_page(stack: RunningStack) -> None:
    salons = list(range(7001, 7001 + OWNERS))
    redirects = [press_connect(stack.marketplace, salon_id) for salon_id in salons]

    def follow(redirect: str) -> tuple[int, str | None]:
        response, token = follow_redirect(redirect, timeout=60)
        return response.status_code, token

    with ThreadPoolExecutor(max_workers=OWNERS) as pool:
        answers = list(pool.map(follow, redirects))

    assert [status for status, _ in answers] == [302] * OWNERS
    token_salons = [int(jwt.decode(token or "", options={"verify_signature": False})["sub"]) for _, token in answers]
    assert token_salons == salons
