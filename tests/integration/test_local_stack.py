"""The local stack as a developer runs it: starts, serves, and stops cleanly on Ctrl-C."""

import signal

import pytest
import requests

from local.process import local_stack

pytestmark = pytest.mark.integration


def test_stack_starts_prints_its_urls_and_stops_on_ctrl_c() -> None:
    with local_stack() as stack:
        output = "".join(stack.output)
        assert "Start here (fake YClients marketplace)" in output
        page = requests.get(stack.base_url + "/", timeout=5)
        assert page.status_code == 200 and "Подключить" in page.text
        stack.process.send_signal(signal.SIGINT)
        assert stack.process.wait(timeout=20) == 0
        assert "Stopped." in "".join(stack.output)
