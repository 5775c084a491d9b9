"""Test-only helpers."""

from __future__ import annotations

import sys

import pytest

from local.process import RunningStack


def report_stack_output_on_failure(request: pytest.FixtureRequest, stack: RunningStack) -> None:
    """When a test that used the stack failed, show what the stack printed (bypassing capture,
    so CI logs have it)."""
    if request.session.testsfailed:
        sys.__stderr__.write("\n----- local stack output -----\n" + "".join(stack.output[-300:]) + "\n")
