"""The page socket's limits (aiadmin.sockets) on moto DynamoDB: slots per salon, messages per
window and per token, a token's expiry and its consent; concurrent connects with the table's
calls serialised (moto's conditional writes are not atomic across threads; DynamoDB's are)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from aiadmin.db import Store
from aiadmin.db.connections import CONNECTION_TTL_SECONDS
from aiadmin.models import Salon
from aiadmin.sockets import (
    MAX_SOCKETS_PER_SALON,
    MESSAGES_PER_TOKEN_WINDOW,
    MESSAGES_PER_WINDOW,
    Opening,
    Verdict,
    admit_message,
    open_socket,
)
from aiadmin.states import SalonState
from aiadmin.tokens import TokenClaims

NOW = 1_000_000.0
CLAIMS = TokenClaims(salon_id=7, expires_at=int(NOW) + 1800, consent_id="consent-7")
OPENED = Opening.OPENED


@pytest.fixture(autouse=True)
def salons(store: Store) -> None:
    for salon_id in (7, 8):
        store.salons.put(Salon(salon_id=salon_id, state=SalonState.QR_READY, consent_id=f"consent-{salon_id}"))


def test_a_sixth_socket_is_refused_and_writes_nothing(store: Store, table: Any) -> None:
    for i in range(MAX_SOCKETS_PER_SALON):
        assert open_socket(store, f"c{i}", CLAIMS, NOW) == OPENED
    items = table.scan()["Count"]
    assert open_socket(store, "c-sixth", CLAIMS, NOW) == Opening.SALON_FULL
    assert table.scan()["Count"] == items
    assert sorted(store.connections.ids_of(7)) == [f"c{i}" for i in range(MAX_SOCKETS_PER_SALON)]
    # Other salons are not affected.
    assert open_socket(store, "other", TokenClaims(salon_id=8, expires_at=CLAIMS.expires_at,
                                                   consent_id="consent-8"), NOW) == OPENED


def test_a_closed_socket_frees_its_slot_once(store: Store) -> None:
    for i in range(MAX_SOCKETS_PER_SALON):
        open_socket(store, f"c{i}", CLAIMS, NOW)
    store.connections.remove("c2")
    store.connections.remove("c2")  # a replayed $disconnect frees nothing more
    assert open_socket(store, "c-new", CLAIMS, NOW) == OPENED
    assert open_socket(store, "c-newer", CLAIMS, NOW) == Opening.SALON_FULL
    assert "c2" not in store.connections.ids_of(7) and "c-new" in store.connections.ids_of(7)
    assert store.connections.salon_of("c2") is None


def test_a_slot_whose_disconnect_was_lost_is_taken_after_the_longest_connection(store: Store) -> None:
    for i in range(MAX_SOCKETS_PER_SALON):
        open_socket(store, f"c{i}", CLAIMS, NOW)
    later = NOW + CONNECTION_TTL_SECONDS + 1
    assert open_socket(store, "c-late", TokenClaims(salon_id=7, expires_at=int(later) + 1800,
                                                    consent_id="consent-7"), later) == OPENED
    # The stale connection's late $disconnect does not free the slot its successor holds.
    store.connections.remove("c0")
    assert "c-late" in store.connections.ids_of(7)


def test_concurrent_connects_never_exceed_the_bound(store: Store) -> None:
    lock = threading.Lock()
    client: Any = store.table.meta.client
    table: Any = store.table
    for owner, name in ((client, "transact_write_items"), (table, "query")):
        original = getattr(owner, name)

        def locked(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            with lock:
                return _original(*args, **kwargs)

        setattr(owner, name, locked)
    results: list[Opening] = []
    threads = [threading.Thread(target=lambda i=i: results.append(open_socket(store, f"c{i}", CLAIMS, NOW)))
               for i in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(OPENED) == MAX_SOCKETS_PER_SALON
    assert len(store.connections.ids_of(7)) == MAX_SOCKETS_PER_SALON


def test_messages_over_the_window_limit_are_refused_and_only_the_first_is_answered(store: Store) -> None:
    open_socket(store, "c1", CLAIMS, NOW)
    verdicts = [admit_message(store, "c1", NOW + i * 0.1).verdict for i in range(MESSAGES_PER_WINDOW + 3)]
    assert verdicts == [Verdict.ALLOWED] * MESSAGES_PER_WINDOW + [Verdict.RATE_LIMITED] + [Verdict.SILENCED] * 2
    # The next window starts afresh.
    assert admit_message(store, "c1", NOW + 10).verdict == Verdict.ALLOWED


def test_the_sockets_of_one_token_share_its_message_budget(store: Store) -> None:
    """Five sockets of one token must not give five times the messages (issue 15): beyond each
    socket's opening message (paid for by its $connect), they share one socket's budget, and the
    first message over it is the only one answered."""
    claims = TokenClaims(salon_id=7, expires_at=int(NOW) + 1800, consent_id="consent-7", token_id="t-1")
    for i in range(MAX_SOCKETS_PER_SALON):
        assert open_socket(store, f"c{i}", claims, NOW) == OPENED
    verdicts = [admit_message(store, f"c{i % MAX_SOCKETS_PER_SALON}", NOW + i * 0.01).verdict
                for i in range(MAX_SOCKETS_PER_SALON + MESSAGES_PER_TOKEN_WINDOW + 3)]
    allowed = MAX_SOCKETS_PER_SALON + MESSAGES_PER_TOKEN_WINDOW
    assert verdicts == [Verdict.ALLOWED] * allowed + [Verdict.RATE_LIMITED] + [Verdict.SILENCED] * 2
    # Another token of the salon has a budget of its own.
    other = TokenClaims(salon_id=8, expires_at=int(NOW) + 1800, consent_id="consent-8", token_id="t-3")
    open_socket(store, "d2", other, NOW)
    assert admit_message(store, "d2", NOW + 0.5).verdict == Verdict.ALLOWED


def test_a_page_reloaded_again_and_again_with_one_token_keeps_getting_its_state(store: Store) -> None:
    """Each reload is a new socket whose opening message is paid for by its $connect."""
    claims = TokenClaims(salon_id=7, expires_at=int(NOW) + 1800, consent_id="consent-7", token_id="t-4")
    for i in range(3 * MESSAGES_PER_TOKEN_WINDOW):
        open_socket(store, f"reload-{i}", claims, NOW)
        assert admit_message(store, f"reload-{i}", NOW + i * 0.01).verdict == Verdict.ALLOWED
        store.connections.remove(f"reload-{i}")


def test_one_message_in_each_of_two_windows_is_counted_in_each(store: Store) -> None:
    """A new window's count starts at one where the last window's also ended at one (the update
    leaves `msg_count` as it was: the count must still be read back)."""
    claims = TokenClaims(salon_id=7, expires_at=int(NOW) + 1800, consent_id="consent-7", token_id="t-3")
    open_socket(store, "c1", claims, NOW)
    assert [admit_message(store, "c1", NOW + 10 * i).verdict for i in range(3)] == [Verdict.ALLOWED] * 3


def test_a_token_of_an_ended_consent_opens_no_socket_and_writes_nothing(store: Store, table: Any) -> None:
    items = table.scan()["Count"]
    old = TokenClaims(salon_id=7, expires_at=int(NOW) + 1800, consent_id="consent-before-the-uninstall")
    assert open_socket(store, "c-old", old, NOW) == Opening.CONSENT_ENDED
    legacy = TokenClaims(salon_id=7, expires_at=int(NOW) + 1800)  # issued before consents had ids
    assert open_socket(store, "c-legacy", legacy, NOW) == Opening.CONSENT_ENDED
    unknown = TokenClaims(salon_id=99, expires_at=int(NOW) + 1800, consent_id="consent-7")
    assert open_socket(store, "c-unknown", unknown, NOW) == Opening.CONSENT_ENDED
    assert table.scan()["Count"] == items


def test_commands_are_refused_once_the_token_expired(store: Store) -> None:
    open_socket(store, "c1", TokenClaims(salon_id=7, expires_at=int(NOW) + 60, consent_id="consent-7"), NOW)
    assert admit_message(store, "c1", NOW + 59) == admit_message(store, "c1", NOW + 59.5)
    assert admit_message(store, "c1", NOW + 59).verdict == Verdict.ALLOWED
    assert admit_message(store, "c1", NOW + 60).verdict == Verdict.TOKEN_EXPIRED


def test_an_unknown_connection_is_refused(store: Store) -> None:
    assert admit_message(store, "never-connected", NOW).verdict == Verdict.UNKNOWN
    assert store.connections.salon_of("never-connected") is None
