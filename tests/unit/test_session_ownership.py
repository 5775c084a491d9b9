"""Session ownership in DynamoDB (aiadmin.db.sessions, aiadmin.db.memberships; moto, tables from template.yaml):
memberships with epochs, claims, commands through the owner's index, takeover of a dead
runner's sessions, and the fence on salon writes."""

from __future__ import annotations

import time

import pytest

from aiadmin.db import Store
from aiadmin.db.memberships import Fence
from aiadmin.db.sessions import (
    CLAIM_PARTITIONS,
    LIGHT,
    LINK_ATTEMPT,
    LINKING_PARTITION,
    RESUME,
    RESUME_PARTITIONS,
    RESUME_SHARDS,
)
from aiadmin.db.transitions import LeaseLost, StaleAttempt, Transition
from aiadmin.states import SalonState

LEASE = 20.0
GRACE = 2.0
NOW = 1_000_000.0


def _member(store: Store, runner_id: str, now: float = NOW) -> Fence:
    return Fence(runner_id, store.members.join(runner_id, now, LEASE, {}))


def _all_claimable(store: Store, classes: set[str] = frozenset({LINK_ATTEMPT, LIGHT, RESUME})) -> list[int]:
    return [c.salon_id for partition in CLAIM_PARTITIONS
            for c in store.sessions.claimable(partition, set(classes), 100)]


def _owned(store: Store, salon_id: int, fence: Fence, desired: str = "link") -> None:
    store.sessions.request(salon_id, desired, now=NOW)  # type: ignore[arg-type]
    assert store.sessions.claim(salon_id, fence) is not None


def test_joining_again_bumps_the_epoch_and_a_lapsed_membership_is_never_revived(store: Store) -> None:
    first = _member(store, "a")
    assert first.epoch == 1
    assert store.members.renew(first, NOW + 5, LEASE, {"sessions": 2}) is True
    assert store.members.renew(first, NOW + 5 + LEASE + 1, LEASE, {}) is False  # expired: stays dead
    second = _member(store, "a", NOW + 30)
    assert second.epoch == 2
    assert store.members.renew(first, NOW + 31, LEASE, {}) is False  # the old epoch is gone
    [member] = store.members.all()
    assert (member.runner_id, member.epoch, member.expires) == ("a", 2, NOW + 30 + LEASE)


def test_exactly_one_runner_claims_a_session(store: Store) -> None:
    a, b = _member(store, "a"), _member(store, "b")
    store.sessions.request(5, "link", now=NOW)
    assert _all_claimable(store) == [5]
    first = store.sessions.claim(5, a)
    assert first is not None and (first.owner, first.owner_epoch) == ("a", 1)
    assert store.sessions.claim(5, b) is None
    assert _all_claimable(store) == []


def test_linking_attempts_never_wait_behind_resumes_and_a_page_is_never_empty(store: Store) -> None:
    for salon_id in range(100, 160):  # a mass resume (a deploy) waiting
        store.sessions.request(salon_id, "run", now=NOW)
    for salon_id in range(1, 31):     # many owners waiting for a QR
        store.sessions.request(salon_id, "link", now=NOW + 1)
    store.sessions.request(40, "stop", now=NOW + 20)  # an uninstall, the newest of all
    # The linking partition holds no resume: new owners are claimed first, whatever the backlog.
    first = store.sessions.claimable(LINKING_PARTITION, {LINK_ATTEMPT, LIGHT}, limit=2)
    assert [c.klass for c in first] == [LINK_ATTEMPT, LINK_ATTEMPT]
    # A runner at its pairing bound still gets what it may take, however many links are ahead.
    assert [c.salon_id for c in store.sessions.claimable(LINKING_PARTITION, {LIGHT}, limit=1)] == [40]
    # Resumes: a full page of each shard.
    assert [len(store.sessions.claimable(p, {RESUME}, limit=10)) for p in RESUME_PARTITIONS] == [10] * RESUME_SHARDS


def test_resumes_are_spread_over_shards(store: Store) -> None:
    for salon_id in range(1, 41):
        store.sessions.request(salon_id, "run", now=NOW)
    per_shard = [len(store.sessions.claimable(p, {RESUME}, 100)) for p in RESUME_PARTITIONS]
    assert per_shard == [40 // RESUME_SHARDS] * RESUME_SHARDS
    assert store.sessions.claimable(LINKING_PARTITION, {LINK_ATTEMPT, LIGHT, RESUME}, 100) == []


def test_a_command_for_an_owned_session_goes_to_its_owner_only(store: Store) -> None:
    a, b = _member(store, "a"), _member(store, "b")
    _owned(store, 5, a, "run")
    _owned(store, 6, b, "run")
    assert store.sessions.pending_commands("a") == []  # nothing is read while nothing changes
    store.sessions.request(5, "pause")
    assert store.sessions.pending_commands("a") == [5] and store.sessions.pending_commands("b") == []
    assert _all_claimable(store) == []  # still owned: not claimable
    seen = store.sessions.get(5)
    assert seen is not None and seen.desired == "pause" and seen.command_waiting
    store.sessions.request(5, "run", renew_command=True)  # a newer command before the ack
    assert store.sessions.acknowledge(5, a, seen.command_seq) is False
    assert store.sessions.pending_commands("a") == [5]  # never lost
    latest = store.sessions.get(5)
    assert latest is not None and latest.command_waiting
    assert store.sessions.acknowledge(5, b, latest.command_seq) is False  # not b's
    assert store.sessions.acknowledge(5, a, latest.command_seq) is True
    assert store.sessions.pending_commands("a") == []
    done = store.sessions.get(5)
    assert done is not None and not done.command_waiting and done.owner == "a"


def test_release_makes_it_claimable_and_retire_keeps_a_newer_command(store: Store) -> None:
    a = _member(store, "a")
    _owned(store, 5, a, "run")
    lease = store.sessions.get(5)
    assert lease is not None
    store.sessions.request(5, "pause")  # arrived after `lease` was read
    assert store.sessions.retire(lease, a) is False  # the newer command is not thrown away
    current = store.sessions.get(5)
    assert current is not None and current.owner == "a"
    assert store.sessions.release(lease, a) is True  # handed back with the current command
    assert _all_claimable(store, {LIGHT}) == [5]
    b = _member(store, "b")
    claimed = store.sessions.claim(5, b)
    assert claimed is not None and claimed.desired == "pause"
    assert store.sessions.retire(claimed, b) is True
    assert _all_claimable(store) == [] and store.sessions.pending_commands("b") == []
    # A later command makes it claimable again at once.
    store.sessions.request(5, "run", now=NOW)
    assert _all_claimable(store) == [5]


def test_a_dead_runners_sessions_are_taken_over_only_after_the_grace(store: Store) -> None:
    dead, alive = _member(store, "dead"), _member(store, "alive")
    _owned(store, 5, dead, "run")
    expired = NOW + LEASE
    assert store.sessions.take_over(5, alive, dead, cutoff=expired - 1) is None  # still live
    assert store.sessions.take_over(5, alive, dead, cutoff=expired - 0.001) is None
    taken = store.sessions.take_over(5, alive, dead, cutoff=expired + 0.5)  # its end plus the grace has passed
    assert taken is not None and (taken.owner, taken.owner_epoch) == ("alive", alive.epoch)
    assert [s.salon_id for s in store.sessions.owned_by("alive")] == [5] and store.sessions.owned_by("dead") == []


def test_a_runner_that_left_or_joined_again_is_taken_over_at_once(store: Store) -> None:
    left, restarted, other = _member(store, "left"), _member(store, "restarted"), _member(store, "x")
    _owned(store, 5, left, "run")
    _owned(store, 6, restarted, "run")
    store.members.leave(left, NOW + 1)
    assert store.sessions.take_over(5, other, left, cutoff=NOW) is not None
    _member(store, "restarted", NOW + 2)  # a new epoch: the sessions of the old one are dead
    assert store.sessions.take_over(6, other, restarted, cutoff=NOW) is not None
    [gone] = [m for m in store.members.all() if m.runner_id == "left"]
    assert gone.left and gone.dead(NOW, GRACE)
    assert store.members.forget(gone, NOW) is True
    assert "left" not in {m.runner_id for m in store.members.all()}


def test_salon_writes_are_fenced_on_the_sessions_owner_and_epoch(store: Store) -> None:
    now = time.time()
    a, b = _member(store, "a", now), _member(store, "b", now)
    _owned(store, 5, a)
    store.transitions.apply(Transition(5, SalonState.PENDING_WHATSAPP, actor="redirect"))
    salon = store.transitions.apply(Transition(5, SalonState.QR_READY, actor="runner", attrs={"qr": "a"}, fence=a))
    assert salon.qr == "a"
    with pytest.raises(LeaseLost):  # another runner's write
        store.transitions.apply(Transition(5, SalonState.QR_READY, actor="runner", attrs={"qr": "b"}, fence=b))
    with pytest.raises(LeaseLost):  # an earlier epoch of the owner (it lapsed and joined again)
        store.transitions.apply(Transition(
            5, SalonState.QR_READY, actor="runner", attrs={"qr": "old"}, fence=Fence("a", 0)))
    # Taken over (a lapsed): from then on a's writes are refused, b's go through.
    assert store.sessions.take_over(5, b, a, cutoff=now + LEASE + GRACE) is not None
    with pytest.raises(LeaseLost):
        store.transitions.apply(Transition(5, SalonState.QR_READY, actor="runner", attrs={"qr": "stale"}, fence=a))
    stored = store.salons.get(5)
    assert stored is not None and stored.qr == "a" and stored.version == 2
    assert len(store.events.of(5)) == 2
    assert store.transitions.apply(Transition(
        5, SalonState.QR_READY, actor="runner", attrs={"qr": "b"}, fence=b)).qr == "b"


def test_a_write_of_a_replaced_attempt_is_refused_and_the_session_stays_ours(store: Store) -> None:
    now = time.time()
    a, b = _member(store, "a", now), _member(store, "b", now)
    _owned(store, 5, a)
    store.transitions.apply(Transition(5, SalonState.PENDING_WHATSAPP, actor="redirect"))
    attempt = store.sessions.get(5).generation  # type: ignore[union-attr]
    assert store.transitions.apply(Transition(
        5, SalonState.QR_READY, actor="runner", attrs={"qr": "a"}, fence=a, attempt=attempt)).qr
    store.sessions.request(5, "link", "79001234567", now=now)  # the owner asks for a code instead
    with pytest.raises(StaleAttempt):
        store.transitions.apply(Transition(
            5, SalonState.QR_READY, actor="runner", attrs={"qr": "old"}, fence=a, attempt=attempt))
    with pytest.raises(LeaseLost):  # another runner's write is still a lost lease, not a stale attempt
        store.transitions.apply(Transition(
            5, SalonState.QR_READY, actor="runner", attrs={"qr": "b"}, fence=b, attempt=attempt + 1))
    stored = store.salons.get(5)
    assert stored is not None and stored.qr == "a" and stored.version == 2
    # The new attempt's own writes go through.
    assert store.transitions.apply(Transition(
        5, SalonState.QR_READY, actor="runner", attrs={"qr": "new"}, fence=a, attempt=attempt + 1)).qr == "new"


def test_pairing_success_does_not_override_a_newer_command(store: Store) -> None:
    a = _member(store, "a")
    _owned(store, 5, a)
    store.sessions.request(5, "stop")  # uninstalled while the phone was scanning
    assert store.sessions.mark_linked(5, a, generation=1) is False
    assert store.sessions.get(5).desired == "stop"  # type: ignore[union-attr]
    _owned(store, 6, a)
    assert store.sessions.mark_linked(6, a, generation=1) is True
    assert store.sessions.get(6).desired == "run"  # type: ignore[union-attr]


def test_generations_and_the_explicit_activation_retry(store: Store) -> None:
    assert store.sessions.request(5, "link").generation == 1
    assert store.sessions.request(5, "run").generation == 1
    assert store.sessions.request(5, "link").generation == 2
    plain = store.sessions.request(5, "run")
    assert not plain.wants_activation_retry
    retry = store.sessions.request(5, "run", renew_command=True)
    assert retry.generation == 3 and retry.wants_activation_retry
    a = _member(store, "a")
    assert store.sessions.claim(5, a) is not None
    assert store.sessions.take_activation_retry(5, a, 3) is True
    assert store.sessions.take_activation_retry(5, a, 3) is False  # once
    later = store.sessions.get(5)
    assert later is not None and not later.wants_activation_retry


def test_heartbeats_are_the_memberships(store: Store) -> None:
    assert store.members.latest_heartbeat() is None
    a = _member(store, "a")
    store.members.renew(a, NOW + 3, LEASE, {"sessions": 3, "phases": {"connected": 2, "linking": 1}, "pairings": 1})
    _member(store, "b", NOW + 1)
    assert store.members.latest_heartbeat() == NOW + 3
    beats = {b["runner_id"]: b for b in store.members.heartbeats()}
    assert beats["a"] == {"runner_id": "a", "at": NOW + 3, "sessions": 3, "phases": {"connected": 2, "linking": 1},
                          "pairings": 1, "epoch": 1, "expires": NOW + 3 + LEASE, "left": False}
