"""Command intake with a fake clock: commands reach the owner through its index with no read
of idle sessions, are acknowledged only once carried out, and the reconcile settles what the
index missed. The upkeep's DynamoDB calls do not grow with idle sessions."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import boto3

from aiadmin.db import Store
from aiadmin.db.transitions import Transition
from aiadmin.states import SalonState
from local.template import create_tables, load_template
from tests.unit.runner_fakes import (
    FakeClock,
    claim_all,
    engine_of,
    linked_sessions,
    live_through,
    make_runner,
    resume_and_connect,
)
from wa_runner.runner import Runner


def _connected_runner(store: Store, clock: FakeClock, salon_ids: range) -> Runner:
    runner = make_runner(store, clock)
    runner.membership.join(clock.now)
    linked_sessions(store, salon_ids)

    async def connect() -> None:
        while len(runner.book) < len(salon_ids):
            await claim_all(runner, clock)
            await resume_and_connect(runner, clock)
        await claim_all(runner, clock)  # polls until the resume shards are seen empty: idle from here

    asyncio.run(connect())
    return runner


class Calls:
    """Every DynamoDB call made through a table's client, by operation."""

    def __init__(self, table: Any) -> None:
        self.counts: Counter[str] = Counter()
        table.meta.client.meta.events.register("before-call.dynamodb.*", self._count)

    def _count(self, model: Any, **_kwargs: Any) -> None:
        self.counts[model.name] += 1


def test_a_command_reaches_the_owner_at_its_next_poll_and_is_acknowledged(store: Store) -> None:
    clock = FakeClock()
    runner = _connected_runner(store, clock, range(1, 4))
    store.sessions.request(2, "pause")  # a freeze in YClients
    assert asyncio.run(runner.intake.poll(clock.now)) == 1
    assert engine_of(runner).sessions.keys() == {1, 3}
    assert 2 not in runner.book
    assert store.sessions.pending_commands("runner-a") == []
    lease = store.sessions.get(2)
    assert lease is not None and lease.owner is None  # retired: nobody runs a paused session


def test_a_command_that_could_not_be_carried_out_comes_back(store: Store) -> None:
    clock = FakeClock()
    runner = _connected_runner(store, clock, range(1, 3))
    engine = engine_of(runner)
    store.sessions.request(1, "link")  # a relink: a fresh attempt
    engine.fail_start.add(1)
    asyncio.run(runner.intake.poll(clock.now))
    # The engine refused: supervision retries it; the command was carried out (acknowledged).
    assert runner.book.get(1).phase.value == "retrying"
    engine.fail_start.clear()

    async def fail_once(*_args: Any, **_kwargs: Any) -> None:
        raise ConnectionError("the engine is gone for a moment")

    store.sessions.request(2, "stop")
    real_stop = engine.stop
    engine.stop = fail_once  # type: ignore[method-assign]
    asyncio.run(runner.intake.poll(clock.now))
    assert store.sessions.pending_commands("runner-a") == [2]  # not acknowledged: never lost
    engine.stop = real_stop  # type: ignore[method-assign]
    asyncio.run(runner.intake.poll(clock.now + 0.5))
    assert store.sessions.pending_commands("runner-a") == [] and 2 not in runner.book


def test_the_reconcile_adopts_a_lost_claim_and_drops_a_session_taken_elsewhere(store: Store) -> None:
    clock = FakeClock()
    runner = _connected_runner(store, clock, range(1, 3))
    linked_sessions(store, [7])
    assert store.sessions.claim(7, runner.membership.fence) is not None  # its answer never arrived
    other = make_runner(store, clock, runner_id="other")
    other.membership.join(clock.now)
    # Another runner got salon 2 (e.g. an operator moved it): the book still says it is ours.
    assert store.sessions.take_over(2, other.membership.fence, runner.membership.fence, clock.now + 100)
    asyncio.run(runner.intake.reconcile(clock.now))
    assert 7 in runner.book and runner.book.get(7).phase.value == "queued"
    assert 2 not in runner.book and 2 not in engine_of(runner).sessions


def _fresh_store() -> Store:
    client = boto3.client("dynamodb")
    if "AppTable" in client.list_tables()["TableNames"]:
        client.delete_table(TableName="AppTable")
    create_tables(client, load_template())
    return Store(boto3.resource("dynamodb").Table("AppTable"))


def test_idle_upkeep_does_not_grow_with_the_sessions(aws: None) -> None:
    """Ten or a hundred idle linked sessions: the same DynamoDB calls, none of them per session."""

    def upkeep_calls(sessions: int) -> Counter[str]:
        store = _fresh_store()
        clock = FakeClock()
        runner = _connected_runner(store, clock, range(1, sessions + 1))
        calls = Calls(store.table)

        async def five_idle_minutes() -> None:
            for _ in range(600):  # the command poll every 0.5 s, the claim poll, the takeover look
                live_through(clock, 0.5, runner)
                await runner.intake.poll(clock.now)
                await runner.claimer.claim_step(clock.now)
            await runner.intake.reconcile(clock.now)  # the safety net, every five minutes
            await runner.claimer.takeover_step(clock.now)

        asyncio.run(five_idle_minutes())
        assert runner.status()["phases"] == {"connected": sessions}
        return calls.counts

    few, many = upkeep_calls(10), upkeep_calls(100)
    assert few == many
    # Reads: the command and claim polls, the takeover look, the reconcile; writes: the
    # membership renewals (every LEASE/6 = 3.3 s). Nothing per session.
    assert set(few) == {"Query", "UpdateItem"}
    assert 300 / 4 <= few["UpdateItem"] <= 300 / (20 / 6) + 1
    assert few["Query"] == 600 + 600 + 1 + 1


def test_a_salon_write_of_the_new_owner_is_not_a_command(store: Store) -> None:
    clock = FakeClock()
    runner = _connected_runner(store, clock, range(1, 2))
    store.transitions.apply(Transition(1, SalonState.FROZEN, actor="yclients"))  # a state change alone commands nothing
    assert asyncio.run(runner.intake.poll(clock.now)) == 0


def test_a_runner_without_sessions_does_not_poll_for_commands(store: Store) -> None:
    clock = FakeClock()
    runner = make_runner(store, clock)
    runner.membership.join(clock.now)
    calls = Calls(store.table)
    assert asyncio.run(runner.intake.poll(clock.now)) == 0
    assert calls.counts == {}
