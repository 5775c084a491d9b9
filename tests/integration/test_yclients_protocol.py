"""Our contract with YClients over real HTTP against the fake marketplace (scripted per test):
activation answers, lifecycle and entity webhooks, partner operations, the app status check."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

import boto3
import pytest
import requests

from aiadmin.yclients import YClientsClient
from local import observe
from local.owner import follow_redirect, link_whatsapp, open_page, press_connect, receive_until, scan
from local.process import RunningStack
from local.stack import DEFAULT_PARTNER_TOKEN
from tests.helpers import script_marketplace

pytestmark = pytest.mark.integration


# The shared stack (tests/integration/conftest.py); salons 301-309.


def _calls(stack: RunningStack, operation: str) -> list[dict[str, Any]]:
    """The calls YClients answered; those refused by its own rate limit (other tests' traffic
    on the same stack can spend the minute's budget) are retried like any 429 and left out."""
    calls = requests.get(stack.marketplace + "/_calls", params={"operation": operation}, timeout=5).json()
    return [c for c in calls if not c.get("throttled")]


def _activation_of(stack: RunningStack, salon_id: int) -> dict[str, Any]:
    return [a for a in stack.marketplace_state()["activations"] if a["salon_id"] == salon_id][-1]


def _states(seen: list[dict[str, Any]]) -> list[str]:
    return [m["state"] for m in seen]


def _entity_queue(stack: RunningStack) -> tuple[Any, str]:
    sqs = boto3.client("sqs", endpoint_url=stack.moto_url, region_name="eu-central-1")
    return sqs, sqs.get_queue_url(QueueName="EntityQueue")["QueueUrl"]


def _drain(stack: RunningStack) -> list[dict[str, Any]]:
    sqs, url = _entity_queue(stack)
    bodies = []
    while True:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        if not messages:
            return bodies
        for message in messages:
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def test_permanent_refusal_shows_activation_failed_and_a_new_consent_retries(stack: RunningStack) -> None:
    script_marketplace(stack, "activate", {"status": 400, "message": "Агрегатор не найден"})
    seen = asyncio.run(link_whatsapp(stack.base_url, stack.marketplace, 301, {"activation_failed", "active"}))
    assert _states(seen)[-1] == "activation_failed"
    assert [c["status"] for c in _calls(stack, "activate") if c["body"]["salon_id"] == 301] == [400]

    # The owner presses "Подключить" again: a new hour, and the runner activates on the same session.
    response, token = follow_redirect(press_connect(stack.marketplace, 301))
    assert response.status_code == 302

    async def reopen() -> dict[str, Any]:
        async with open_page(stack.ws_url, token) as ws:
            return await receive_until(ws, {"active"})

    assert asyncio.run(reopen())["state"] == "active"
    assert [c["status"] for c in _calls(stack, "activate") if c["body"]["salon_id"] == 301] == [400, 201]


def test_transient_failures_are_retried_until_active(stack: RunningStack) -> None:
    script_marketplace(stack, "activate",
            {"status": 503, "html": "<html>Service Unavailable</html>"},
            {"status": 429},
            {"status": 200, "body": {"success": False, "data": None, "meta": {"message": "Ошибка"}}},
            {"status": 200, "html": "<!doctype html><title>YClients</title>"})
    seen = asyncio.run(link_whatsapp(stack.base_url, stack.marketplace, 302, {"activation_failed", "active"}))
    assert _states(seen)[-1] == "active"
    assert [c["status"] for c in _calls(stack, "activate") if c["body"]["salon_id"] == 302] \
        == [503, 429, 200, 200, 201]
    assert "activating" in _states(seen)


def test_entity_webhooks_are_queued_only_behind_the_salon_secret(stack: RunningStack) -> None:
    asyncio.run(link_whatsapp(stack.base_url, stack.marketplace, 303, {"active"}))
    _drain(stack)
    url = _activation_of(stack, 303)["webhook_urls"][0]
    sent = requests.post(f"{stack.marketplace}/send-entity/303", json={"resource_id": 77}, timeout=10).json()
    assert sent["status"] == 200
    [queued] = _drain(stack)
    assert queued["salon_id"] == 303 and queued["webhook"]["resource"] == "record"
    assert queued["webhook"]["resource_id"] == 77 and queued["webhook"]["status"] == "create"

    good = {"company_id": 303, "resource": "client", "resource_id": 5, "status": "update", "data": {}}
    refused = {
        "wrong secret": (url.rsplit("/", 1)[0] + "/not-the-secret", good, 404),
        "unknown salon": (url.replace("/303/", "/3030303/"), {**good, "company_id": 3030303}, 404),
        "salon id not a number": (url.replace("/303/", "/abc/"), good, 404),
        "other company": (url, {**good, "company_id": 101}, 400),
        "bad status": (url, {**good, "status": "exploded"}, 400),
        "missing fields": (url, {"company_id": 303}, 400),
    }
    for name, (target, body, status) in refused.items():
        assert requests.post(target, json=body, timeout=5).status_code == status, name
    assert requests.post(url, data="{not json", timeout=5).status_code == 400
    assert requests.post(url, data=b"\xff\xfe", timeout=5).status_code == 400
    assert _drain(stack) == []  # nothing stored for any refused webhook


def test_freeze_pauses_payment_unfreezes_and_uninstall_ends_everything(stack: RunningStack) -> None:
    asyncio.run(link_whatsapp(stack.base_url, stack.marketplace, 304, {"active"}))
    _, token = follow_redirect(press_connect(stack.marketplace, 304))
    old_webhook = _activation_of(stack, 304)["webhook_urls"][0]
    entity = {"company_id": 304, "resource": "record", "resource_id": 1, "status": "create"}

    async def lifecycle() -> list[str]:
        states = []
        async with open_page(stack.ws_url, token) as ws:
            states.append((await receive_until(ws, {"active"}))["state"])
            assert requests.post(f"{stack.marketplace}/send/304/freeze", timeout=10).json()["status"] == 200
            states.append((await receive_until(ws, {"frozen"}))["state"])
            paid = requests.post(f"{stack.marketplace}/send/304/payment", timeout=10).json()
            assert paid["status"] == 200 and json.loads(paid["body"])["result"] == "active"
            states.append((await receive_until(ws, {"active"}))["state"])
            # A payment while active is only recorded.
            again = requests.post(f"{stack.marketplace}/send/304/payment?x=1", timeout=10).json()
            assert json.loads(again["body"])["result"] in ("recorded", "active")
            assert requests.post(f"{stack.marketplace}/send/304/uninstall", timeout=10).json()["status"] == 200
            states.append((await receive_until(ws, {"uninstalled"}))["state"])
        return states

    assert asyncio.run(lifecycle()) == ["active", "frozen", "active", "uninstalled"]
    # The uninstalled salon's webhook URL is dead.
    assert requests.post(old_webhook, json=entity, timeout=5).status_code == 404

    # A reinstall starts clean: a new pairing, a new key and webhook URL.
    seen = asyncio.run(link_whatsapp(stack.base_url, stack.marketplace, 304, {"active"}))
    assert "qr_ready" in _states(seen)
    assert _activation_of(stack, 304)["webhook_urls"][0] != old_webhook


def test_partner_operations_against_the_marketplace(stack: RunningStack) -> None:
    asyncio.run(link_whatsapp(stack.base_url, stack.marketplace, 305, {"active"}))
    client = YClientsClient(stack.marketplace, DEFAULT_PARTNER_TOKEN, 4242)
    assert client.app_status(305) == "active"
    assert client.app_status(987654) is None
    assert 305 in [s["salon_id"] for s in client.installed_salons(count=1000)]
    assert [t["id"] for t in client.tariffs()] == [1, 2]
    link = client.payment_link(305, discount=10)
    assert link is not None and "305" in link
    paid_at = datetime(2026, 11, 20, 12, 0, 0)
    payment_id = client.report_payment(305, 2990, "RUB", paid_at, paid_at, datetime(2026, 12, 20, 12, 0, 0))
    payment = stack.marketplace_state()["payments"][str(payment_id)]
    assert payment["payment_date"] == "2026-11-20 12:00:00" and payment["refunded"] is False
    client.refund_payment(payment_id)
    assert stack.marketplace_state()["payments"][str(payment_id)]["refunded"] is True
    client.update_channel(305, "whatsapp", True)
    assert stack.marketplace_state()["channels"]["305:whatsapp"] is True

    _, token = follow_redirect(press_connect(stack.marketplace, 305))

    async def uninstalled_from_our_side() -> dict[str, Any]:
        async with open_page(stack.ws_url, token) as ws:
            await receive_until(ws, {"active"})
            client.uninstall(305)  # YClients confirms through the lifecycle callback
            return await receive_until(ws, {"uninstalled"})

    assert asyncio.run(uninstalled_from_our_side())["state"] == "uninstalled"
    assert client.app_status(305) == "uninstalled"


def test_redirect_confirms_the_salon_with_yclients_first(stack: RunningStack) -> None:
    redirect = press_connect(stack.marketplace, 306)
    # Past the quick retries.
    script_marketplace(stack, "app_status", *[{"status": 503, "html": "<html>down</html>"}] * 3)
    down = requests.get(redirect, allow_redirects=False, timeout=10)
    assert down.status_code == 503 and "YClients не отвечает" in down.text and "Location" not in down.headers
    for status in ("freezed", "uninstalled"):
        requests.post(f"{stack.marketplace}/_salon/306", json={"status": status}, timeout=5)
        refused = requests.get(redirect, allow_redirects=False, timeout=10)
        assert refused.status_code == 403 and "Приложение не подключено" in refused.text
    requests.post(f"{stack.marketplace}/_salon/306", json={"status": "pending"}, timeout=5)
    assert requests.get(redirect, allow_redirects=False, timeout=10).status_code == 302


def test_health_check_says_ok_and_nothing_more(stack: RunningStack) -> None:
    """Unauthenticated: ok or not ok; the heartbeat's age and the store's details are ops' (issue 15)."""
    response = requests.get(stack.base_url + "/marketplace/health-check", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"success": True, "status": "ok"}
    assert DEFAULT_PARTNER_TOKEN not in response.text


def test_a_new_consent_after_an_expired_activation_keeps_the_linked_device(stack: RunningStack) -> None:
    """Bug (issue 10): after `expired_consent`, the owner's next "Подключить" logged out a working
    linked device. YClients lets the consent lapse while the activation is refused: the salon
    ends in `expired_consent` with its WhatsApp still linked; the next consent activates that
    same device again, with no new pairing and no logout."""
    script_marketplace(stack, "activate", {"status": 422, "message": "Истекло время на подключение"})
    requests.post(f"{stack.marketplace}/_salon/307", json={"name": "Салон 307"}, timeout=5)

    async def expire() -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        _, token = follow_redirect(press_connect(stack.marketplace, 307))
        async with open_page(stack.ws_url, token) as ws:
            qr = await receive_until(ws, {"qr_ready"}, seen=seen)
            # YClients forgets the pending link meanwhile (its window passed).
            requests.post(f"{stack.marketplace}/_salon/307", json={"status": None}, timeout=5)
            assert scan(stack.base_url, qr["qr"]).status_code == 200
            await receive_until(ws, {"expired_consent", "activation_failed"}, seen=seen)
        return seen

    assert _states(asyncio.run(expire()))[-1] == "expired_consent"
    linked = observe.wait_until(lambda: observe.whatsapp(stack).devices.get("307"), 10, what="device 307")
    assert linked["connected"]
    attempts = observe.whatsapp(stack).pairing_attempts["307"]

    response, token = follow_redirect(press_connect(stack.marketplace, 307))  # a new consent
    assert response.status_code == 302

    async def reconsent() -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        async with open_page(stack.ws_url, token) as ws:
            await receive_until(ws, {"active"}, seen=seen)
        return seen

    states = _states(asyncio.run(reconsent()))
    assert "qr_ready" not in states and "pending_whatsapp" not in states
    after = observe.whatsapp(stack)
    assert after.devices["307"]["device_id"] == linked["device_id"] and after.devices["307"]["connected"]
    assert after.pairing_attempts["307"] == attempts  # no new pairing
    assert stack.marketplace_state()["salons"]["307"]["status"] == "active"


@pytest.mark.parametrize("form", ["string", "decoded"])
def test_both_signature_forms_and_a_separate_signing_key_over_http(stack: RunningStack, form: str) -> None:
    """YClients signs the decoded bytes (documented); another partner's contract signs the string
    as received. Both are accepted; a signing key other than ours is not."""
    salon = 308 if form == "string" else 309
    requests.post(f"{stack.marketplace}/_salon/{salon}", json={"name": f"Салон {salon}"}, timeout=5)
    try:
        requests.post(f"{stack.marketplace}/_config", json={"signature_form": form}, timeout=5)
        response, token = follow_redirect(press_connect(stack.marketplace, salon))
        assert response.status_code == 302 and token
        requests.post(f"{stack.marketplace}/_config", json={"signing_key": "a-key-we-were-never-given"}, timeout=5)
        refused, _ = follow_redirect(press_connect(stack.marketplace, salon))
        assert refused.status_code == 400 and "Подпись YClients не сходится" in refused.text
    finally:
        requests.post(f"{stack.marketplace}/_config", json={"signature_form": "decoded", "signing_key": None},
                      timeout=5)
