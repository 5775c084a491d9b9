"""The ops command line for partner operations, run as a process against the fake marketplace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from local.fake_yclients import FakeSalon, FakeYClients
from local.template import ROOT
from tests.helpers import fake_marketplace

TOKEN = "ops-cli-partner-token"


@pytest.fixture(scope="module")
def marketplace() -> Iterator[tuple[FakeYClients, str]]:
    with fake_marketplace(TOKEN) as (fake, url):
        fake.salons[501] = FakeSalon(501, "Лотос", "Анна", "79001234567", status="active", consent_at=time.time())
        yield fake, url


def _ops(url: str, *args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "YCLIENTS_BASE_URL": url, "YCLIENTS_APP_ID": "4242", "YCLIENTS_PARTNER_TOKEN": token}
    return subprocess.run([sys.executable, "-m", "ops.yclients", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_ops_commands_reach_the_marketplace(marketplace: tuple[FakeYClients, str]) -> None:
    fake, url = marketplace
    assert json.loads(_ops(url, "status", "501").stdout) == {"salon_id": 501, "status": "active"}
    payment = _ops(url, "payment", "501", "2990", "RUB", "2026-11-20", "2026-12-20")
    payment_id = json.loads(payment.stdout)["payment_id"]
    assert fake.payments[payment_id]["period_to"] == "2026-12-20 00:00:00"
    assert _ops(url, "refund", str(payment_id)).returncode == 0 and fake.payments[payment_id]["refunded"]
    assert json.loads(_ops(url, "tariffs").stdout)[0]["currency_iso"] == "RUB"
    assert _ops(url, "channel", "501", "whatsapp", "off").returncode == 0
    assert fake.channels["501:whatsapp"] is False
    assert _ops(url, "uninstall", "501").returncode == 0 and fake.salons[501].status == "uninstalled"


def test_ops_errors_are_one_clear_line(marketplace: tuple[FakeYClients, str]) -> None:
    _, url = marketplace
    refused = _ops(url, "tariffs", token="wrong-partner-token")
    assert refused.returncode == 1 and "401" in refused.stderr and "Traceback" not in refused.stderr
    bad_date = _ops(url, "payment", "501", "10", "RUB", "yesterday", "2026-12-20")
    assert bad_date.returncode == 2 and "expected YYYY-MM-DD" in bad_date.stderr
    unset = subprocess.run([sys.executable, "-m", "ops.yclients", "tariffs"], cwd=ROOT, capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if not k.startswith("YCLIENTS_")}, timeout=60)
    assert unset.returncode == 2 and "YCLIENTS_PARTNER_TOKEN" in unset.stderr


@pytest.mark.parametrize("text", ["٣", "１２３", "²", "-5", "0", " 7", str(2**53)])
def test_ops_read_salon_ids_as_the_service_does(text: str) -> None:
    """argparse's `int` would take `٣` and `１２３`: both CLIs use the service's own parser."""
    from ops.__main__ import _parser as ops_parser
    from ops.yclients import _parser as yclients_parser

    for parser, args in ((ops_parser(), ["status", text]), (yclients_parser(), ["uninstall", text])):
        with pytest.raises(SystemExit) as refused:
            parser.parse_args(args)
        assert refused.value.code == 2
    assert ops_parser().parse_args(["status", "0042"]).salon_id == 42
    assert yclients_parser().parse_args(["channel", "0042", "whatsapp", "on"]).salon_id == 42
