"""Sessions written before runner memberships become claimable once, and only those."""

from __future__ import annotations

from aiadmin.db import Store
from aiadmin.db.sessions import CLAIM_PARTITIONS, LIGHT, LINK_ATTEMPT, RESUME
from wa_runner.migrate import migrate


def test_old_sessions_become_claimable_and_new_ones_are_left_alone(store: Store) -> None:
    table = store.table
    for salon_id, desired in ((1, "run"), (2, "link")):
        table.put_item(Item={"pk": f"SALON#{salon_id}", "sk": "SESSION", "salon_id": salon_id, "desired": desired,
                             "generation": 3, "lease_pk": "LEASE", "lease_expires": 12, "owner": "old-runner"})
    store.sessions.request(3, "run")  # already in the new scheme
    assert migrate(table) == 2
    assert migrate(table) == 0
    claimable = {c.salon_id: c.klass for partition in CLAIM_PARTITIONS
                 for c in store.sessions.claimable(partition, {LINK_ATTEMPT, LIGHT, RESUME})}
    assert claimable == {1: RESUME, 2: LINK_ATTEMPT, 3: RESUME}
    lease = store.sessions.get(1)
    assert lease is not None and lease.owner is None and lease.generation == 3
