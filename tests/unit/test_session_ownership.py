"""Session ownership in DynamoDB (aiadmin.ownership, moto, tables from template.yaml):
memberships with epochs, claims, commands through the owner's index, takeover of a dead
runner's sessions, and the fence on salon writes."""

from __future__ import annotations

import time

import pytest

from aiadmin.ownership import (
    CLAIM_PARTITIONS,
    LIGHT,
    LINK_ATTEMPT,
    LINKING_PARTITION,
    RESUME,
    RESUME_PARTITIONS,
    RESUME_SHARDS,
    Fence,
    Ownership,
)
from aiadmin.states import SalonState
from aiadmin.store import LeaseLost, StaleAttempt, Store

LEASE = 20.0
GRACE = 2.0
NOW = 1_000_000.0


@pytest.fixture
def ownership(store: Store) -> Ownership:
    return store.ownership


def _member(ownership: Ownership, runner_id: str, now: float = NOW) -> Fence:
    return Fence(runner_id, ownership.join(runner_id, now, LEASE, {}))


def _all_claimable(ownership: Ownership, classes: set[str] = frozenset({LINK_ATTEMPT, LIGHT, RESUME})) -> list[int]:
    return [c.salon_id for partition in CLAIM_PARTITIONS for c in ownership.claimable(partition, set(classes), 100)]


def _owned(ownership: Ownership, salon_id: int, fence: Fence, desired: str = "link") -> None:
    ownership.request_session(salon_id, desired, now=NOW)  # type: ignore[arg-type]
    assert ownership.claim(salon_id, fence) is not None


def test_joining_again_bumps_the_epoch_and_a_lapsed_membership_is_never_revived(ownership: Ownership) -> None:
    first = _member(ownership, "a")
    assert first.epoch == 1
    assert ownership.renew(first, NOW + 5, LEASE, {"sessions": 2}) is True
    assert ownership.renew(first, NOW + 5 + LEASE + 1, LEASE, {}) is False  # expired: stays dead
    second = _member(ownership, "a", NOW + 30)
    assert second.epoch == 2
    assert ownership.renew(first, NOW + 31, LEASE, {}) is False  # the old epoch is gone
    [member] = ownership.members()
    assert (member.runner_id, member.epoch, member.expires) == ("a", 2, NOW + 30 + LEASE)


def test_exactly_one_runner_claims_a_session(ownership: Ownership) -> None:
    a, b = _member(ownership, "a"), _member(ownership, "b")
    ownership.request_session(5, "link", now=NOW)
    assert _all_claimable(ownership) == [5]
    first = ownership.claim(5, a)
    assert first is not None and (first.owner, first.owner_epoch) == ("a", 1)
    assert ownership.claim(5, b) is None
    assert _all_claimable(ownership) == []


def test_linking_attempts_never_wait_behind_resumes_and_a_page_is_never_empty(ownership: Ownership) -> None:
    for salon_id in range(100, 160):  # a mass resume (a deploy) waiting
        ownership.request_session(salon_id, "run", now=NOW)
    for salon_id in range(1, 31):     # many owners waiting for a QR
        ownership.request_session(salon_id, "link", now=NOW + 1)
    ownership.request_session(40, "stop", now=NOW + 20)  # an uninstall, the newest of all
    # The linking partition holds no resume: new owners are claimed first, whatever the backlog.
    first = ownership.claimable(LINKING_PARTITION, {LINK_ATTEMPT, LIGHT}, limit=2)
    assert [c.klass for c in first] == [LINK_ATTEMPT, LINK_ATTEMPT]
    # A runner at its pairing bound still gets what it may take, however many links are ahead.
    assert [c.salon_id for c in ownership.claimable(LINKING_PARTITION, {LIGHT}, limit=1)] == [40]
    # Resumes: a full page of each shard.
    assert [len(ownership.claimable(p, {RESUME}, limit=10)) for p in RESUME_PARTITIONS] == [10] * RESUME_SHARDS


def test_resumes_are_spread_over_shards(ownership: Ownership) -> None:
    for salon_id in range(1, 41):
        ownership.request_session(salon_id, "run", now=NOW)
    per_shard = [len(ownership.claimable(p, {RESUME}, 100)) for p in RESUME_PARTITIONS]
    assert per_shard == [40 // RESUME_SHARDS] * RESUME_SHARDS
    assert ownership.claimable(LINKING_PARTITION, {LINK_ATTEMPT, LIGHT, RESUME}, 100) == []


def test_a_command_for_an_owned_session_goes_to_its_owner_only(ownership: Ownership) -> None:
    a, b = _member(ownership, "a"), _member(ownership, "b")
    _owned(ownership, 5, a, "run")
    _owned(ownership, 6, b, "run")
    assert ownership.pending_commands("a") == []  # nothing is read while nothing changes
    ownership.request_session(5, "pause")
    assert ownership.pending_commands("a") == [5] and ownership.pending_commands("b") == []
    assert _all_claimable(ownership) == []  # still owned: not claimable
    seen = ownership.get_session(5)
    assert seen is not None and seen.desired == "pause" and seen.command_waiting
    ownership.request_session(5, "run", renew_command=True)  # a newer command before the ack
    assert ownership.acknowledge(5, a, seen.command_seq) is False
    assert ownership.pending_commands("a") == [5]  # never lost
    latest = ownership.get_session(5)
    assert latest is not None and latest.command_waiting
    assert ownership.acknowledge(5, b, latest.command_seq) is False  # not b's
    assert ownership.acknowledge(5, a, latest.command_seq) is True
    assert ownership.pending_commands("a") == []
    done = ownership.get_session(5)
    assert done is not None and not done.command_waiting and done.owner == "a"


def test_release_makes_it_claimable_and_retire_keeps_a_newer_command(ownership: Ownership) -> None:
    a = _member(ownership, "a")
    _owned(ownership, 5, a, "run")
    lease = ownership.get_session(5)
    assert lease is not None
    ownership.request_session(5, "pause")  # arrived after `lease` was read
    assert ownership.retire(lease, a) is False  # the newer command is not thrown away
    current = ownership.get_session(5)
    assert current is not None and current.owner == "a"
    assert ownership.release(lease, a) is True  # handed back with the current command
    assert _all_claimable(ownership, {LIGHT}) == [5]
    b = _member(ownership, "b")
    claimed = ownership.claim(5, b)
    assert claimed is not None and claimed.desired == "pause"
    assert ownership.retire(claimed, b) is True
    assert _all_claimable(ownership) == [] and ownership.pending_commands("b") == []
    # A later command makes it claimable again at once.
    ownership.request_session(5, "run", now=NOW)
    assert _all_claimable(ownership) == [5]


def test_a_dead_runners_sessions_are_taken_over_only_after_the_grace(ownership: Ownership) -> None:
    dead, alive = _member(ownership, "dead"), _member(ownership, "alive")
    _owned(ownership, 5, dead, "run")
    expired = NOW + LEASE
    assert ownership.take_over(5, alive, dead, cutoff=expired - 1) is None  # still live
    assert ownership.take_over(5, alive, dead, cutoff=expired - 0.001) is None
    taken = ownership.take_over(5, alive, dead, cutoff=expired + 0.5)  # its end plus the grace has passed
    assert taken is not None and (taken.owner, taken.owner_epoch) == ("alive", alive.epoch)
    assert [s.salon_id for s in ownership.owned_by("alive")] == [5] and ownership.owned_by("dead") == []


def test_a_runner_that_left_or_joined_again_is_taken_over_at_once(ownership: Ownership) -> None:
    left, restarted, other = _member(ownership, "left"), _member(ownership, "restarted"), _member(ownership, "x")
    _owned(ownership, 5, left, "run")
    _owned(ownership, 6, restarted, "run")
    ownership.leave(left, NOW + 1)
    assert ownership.take_over(5, other, left, cutoff=NOW) is not None
    _member(ownership, "restarted", NOW + 2)  # a new epoch: the sessions of the old one are dead
    assert ownership.take_over(6, other, restarted, cutoff=NOW) is not None
    [gone] = [m for m in ownership.members() if m.runner_id == "left"]
    assert gone.left and gone.dead(NOW, GRACE)
    assert ownership.forget(gone, NOW) is True
    assert "left" not in {m.runner_id for m in ownership.members()}


def test_salon_writes_are_fenced_on_the_sessions_owner_and_epoch(store: Store, ownership: Ownership) -> None:
    now = time.time()
    a, b = _member(ownership, "a", now), _member(ownership, "b", now)
    _owned(ownership, 5, a)
    store.transition(5, SalonState.PENDING_WHATSAPP, actor="redirect")
    salon = store.transition(5, SalonState.QR_READY, actor="runner", attrs={"qr": "a"}, fence=a)
    assert salon.qr == "a"
    with pytest.raises(LeaseLost):  # another runner's write
        store.transition(5, SalonState.QR_READY, actor="runner", attrs={"qr": "b"}, fence=b)
    with pytest.raises(LeaseLost):  # an earlier epoch of the owner (it lapsed and joined again)
        store.transition(5, SalonState.QR_READY, actor="runner", attrs={"qr": "old"}, fence=Fence("a", 0))
    # Taken over (a lapsed): from then on a's writes are refused, b's go through.
    assert ownership.take_over(5, b, a, cutoff=now + LEASE + GRACE) is not None
    with pytest.raises(LeaseLost):
        store.transition(5, SalonState.QR_READY, actor="runner", attrs={"qr": "stale"}, fence=a)
    stored = store.get_salon(5)
    assert stored is not None and stored.qr == "a" and stored.version == 2
    assert len(store.events_of(5)) == 2
    assert store.transition(5, SalonState.QR_READY, actor="runner", attrs={"qr": "b"}, fence=b).qr == "b"


def test_a_write_of_a_replaced_attempt_is_refused_and_the_session_stays_ours(store: Store,
                                                                           ownership: Ownership) -> None:
    now = time.time()
    a, b = _member(ownership, "a", now), _member(ownership, "b", now)
    _owned(ownership, 5, a)
    store.transition(5, SalonState.PENDING_WHATSAPP, actor="redirect")
    attempt = ownership.get_session(5).generation  # type: ignore[union-attr]
    assert store.transition(5, SalonState.QR_READY, actor="runner", attrs={"qr": "a"}, fence=a, attempt=attempt).qr
    ownership.request_session(5, "link", "79001234567", now=now)  # the owner asks for a code instead
    with pytest.raises(StaleAttempt):
        store.transition(5, SalonState.QR_READY, actor="runner", attrs={"qr": "old"}, fence=a, attempt=attempt)
    with pytest.raises(LeaseLost):  # another runner's write is still a lost lease, not a stale attempt
        store.transition(5, SalonState.QR_READY, actor="runner", attrs={"qr": "b"}, fence=b, attempt=attempt + 1)
    stored = store.get_salon(5)
    assert stored is not None and stored.qr == "a" and stored.version == 2
    # The new attempt's own writes go through.
    assert store.transition(5, SalonState.QR_READY, actor="runner", attrs={"qr": "new"}, fence=a,
                            attempt=attempt + 1).qr == "new"


def test_pairing_success_does_not_override_a_newer_command(ownership: Ownership) -> None:
    a = _member(ownership, "a")
    _owned(ownership, 5, a)
    ownership.request_session(5, "stop")  # uninstalled while the phone was scanning
    assert ownership.mark_linked(5, a, generation=1) is False
    assert ownership.get_session(5).desired == "stop"  # type: ignore[union-attr]
    _owned(ownership, 6, a)
    assert ownership.mark_linked(6, a, generation=1) is True
    assert ownership.get_session(6).desired == "run"  # type: ignore[union-attr]


def test_generations_and_the_explicit_activation_retry(ownership: Ownership) -> None:
    assert ownership.request_session(5, "link").generation == 1
    assert ownership.request_session(5, "run").generation == 1
    assert ownership.request_session(5, "link").generation == 2
    plain = ownership.request_session(5, "run")
    assert not plain.wants_activation_retry
    retry = ownership.request_session(5, "run", renew_command=True)
    assert retry.generation == 3 and retry.wants_activation_retry
    a = _member(ownership, "a")
    assert ownership.claim(5, a) is not None
    assert ownership.take_activation_retry(5, a, 3) is True
    assert ownership.take_activation_retry(5, a, 3) is False  # once
    later = ownership.get_session(5)
    assert later is not None and not later.wants_activation_retry


def test_heartbeats_are_the_memberships(store: Store, ownership: Ownership) -> None:
    assert store.latest_heartbeat() is None
    a = _member(ownership, "a")
    ownership.renew(a, NOW + 3, LEASE, {"sessions": 3, "phases": {"connected": 2, "linking": 1}, "pairings": 1})
    _member(ownership, "b", NOW + 1)
    assert store.latest_heartbeat() == NOW + 3
    beats = {b["runner_id"]: b for b in store.runner_heartbeats()}
    assert beats["a"] == {"runner_id": "a", "at": NOW + 3, "sessions": 3, "phases": {"connected": 2, "linking": 1},
                          "pairings": 1, "epoch": 1, "expires": NOW + 3 + LEASE, "left": False}
