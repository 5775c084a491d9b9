"""The on-disk layout of WhatsApp keys: one SQLite file per salon, shared by both engines."""

from pathlib import Path
from typing import Any

from aiadmin.db import Store
from wa_runner.keys import PostgresKeys, SqliteKeyFiles

DEVICE = {"jid": "79001234567:12@s.whatsapp.net", "sim_device_id": "d1", "noise_key": "n", "identity_key": "i",
          "adv_key": "a"}


def test_a_salon_is_linked_only_once_its_file_holds_a_device(tmp_path: Path) -> None:
    keys = SqliteKeyFiles(tmp_path / "sessions")
    assert keys.device_jid(5) is None                      # no file
    keys.path(5).write_bytes(b"")                          # an empty file (a store that never paired)
    assert keys.device_jid(5) is None
    keys.path(6).write_bytes(b"not a database at all")
    assert keys.device_jid(6) is None
    keys.write_device(5, DEVICE)
    assert keys.device_jid(5) == DEVICE["jid"]
    assert keys.read_row(5, "jid, sim_device_id") == (DEVICE["jid"], "d1")
    assert sorted(p.name for p in keys.sessions_dir.iterdir()) == ["5.db", "6.db"]  # no temporary left


def test_writing_again_replaces_the_device(tmp_path: Path) -> None:
    keys = SqliteKeyFiles(tmp_path)
    keys.write_device(5, DEVICE)
    keys.write_device(5, {**DEVICE, "jid": "79990000000:3@s.whatsapp.net"})
    assert keys.device_jid(5) == "79990000000:3@s.whatsapp.net"


def test_removal_takes_the_file_and_sqlites_side_files(tmp_path: Path) -> None:
    keys = SqliteKeyFiles(tmp_path)
    keys.write_device(5, DEVICE)
    for suffix in ("-wal", "-shm", "-journal"):
        Path(f"{keys.path(5)}{suffix}").write_bytes(b"x")
    keys.write_device(6, DEVICE)
    keys.remove(5)
    keys.remove(5)  # twice is harmless
    assert sorted(p.name for p in tmp_path.iterdir()) == ["6.db"]
    assert keys.device_jid(5) is None and keys.device_jid(6) == DEVICE["jid"]


def test_postgres_keys_remember_each_salons_device_beside_its_lease(store: Store, table: Any) -> None:
    def load(salon_id: int) -> str | None:
        lease = store.sessions.get(salon_id)
        return lease.device_jid if lease else None

    keys = PostgresKeys("postgresql://runner:pw@db.internal/whatsapp", load_jid=load,
                        save_jid=store.sessions.set_device)
    assert keys.database(1) == keys.database(2) == "postgresql://runner:pw@db.internal/whatsapp"
    keys.remember(1, DEVICE["jid"])                         # no session item yet: nothing is created
    assert store.sessions.get(1) is None
    store.sessions.request(1, "link")
    store.sessions.request(2, "link")
    keys.remember(1, DEVICE["jid"])
    assert (keys.device_jid(1), keys.device_jid(2)) == (DEVICE["jid"], None)
    store.sessions.request(1, "run")                         # commands keep the device name
    assert keys.device_jid(1) == DEVICE["jid"]
    keys.remove(1)
    assert keys.device_jid(1) is None and store.sessions.get(1) is not None
