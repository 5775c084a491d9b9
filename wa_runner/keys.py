"""Where a salon's WhatsApp device keys live, and the rules for removing them.

Default layout (both engines): one SQLite file per salon, `<SESSIONS_DIR>/<salon id>.db`
(EFS in AWS, a local folder otherwise). neonize/whatsmeow writes its own tables there; the
simulated engine writes the same `whatsmeow_device` table (fewer columns), so "linked"
means the same thing for both: the file holds a `whatsmeow_device` row. The file is
removed on logout (the phone unlinked the device) and on uninstall; a restart resumes
from it without a new scan.

Alternative for neonize: a Postgres URL (`WA_KEYS_POSTGRES_URL`), one database shared by
every salon. whatsmeow then holds many devices, so each salon's device JID is remembered
beside its session lease in DynamoDB, and the device is named when the session resumes.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

# whatsmeow's table of linked devices (one row per device in the store).
DEVICE_TABLE = "whatsmeow_device"
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


class KeyStore(Protocol):
    def database(self, salon_id: int) -> str:
        """What neonize's NewClient gets as its database: a SQLite path or a Postgres URL."""

    def device_jid(self, salon_id: int) -> str | None:
        """The salon's linked device, or None when nothing is linked."""

    def remember(self, salon_id: int, jid: str) -> None:
        """Record that the salon's device is linked as `jid` (after pair success)."""

    def remove(self, salon_id: int) -> None:
        """Forget the salon's keys (logout or uninstall)."""


class SqliteKeyFiles:
    """One SQLite file per salon under the sessions directory."""

    def __init__(self, sessions_dir: str | Path) -> None:
        self.sessions_dir = Path(sessions_dir)
        self.sessions_dir.mkdir(parents=True, exist_ok=True)

    def path(self, salon_id: int) -> Path:
        return self.sessions_dir / f"{int(salon_id)}.db"

    def database(self, salon_id: int) -> str:
        return str(self.path(salon_id))

    def device_jid(self, salon_id: int) -> str | None:
        row = self.read_row(salon_id, "jid")
        return row[0] if row else None

    def remember(self, salon_id: int, jid: str) -> None:
        """whatsmeow saved the device in the file itself: nothing more to keep."""

    def remove(self, salon_id: int) -> None:
        path = self.path(salon_id)
        for suffix in ("", *_SQLITE_SIDE_FILES):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

    def read_row(self, salon_id: int, columns: str) -> tuple[str, ...] | None:
        """One device row's `columns` (comma-separated), or None when nothing is linked."""
        path = self.path(salon_id)
        if not path.exists():
            return None
        try:
            # Read-only: looking must never create or lock a file neonize is about to open.
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
                row = db.execute(f"SELECT {columns} FROM {DEVICE_TABLE} LIMIT 1").fetchone()  # noqa: S608
        except sqlite3.Error:
            return None  # no device table yet (a store that never paired) or an unreadable file
        return tuple(str(value) for value in row) if row else None

    def write_device(self, salon_id: int, columns: dict[str, str]) -> None:
        """Write a linked device's row as a whole new file, atomically: a crash leaves either
        the old file or the new one, never half a key file (used by the simulated engine)."""
        path = self.path(salon_id)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.unlink(missing_ok=True)
        names = ", ".join(columns)
        with contextlib.closing(sqlite3.connect(temporary)) as db, db:
            db.execute(f"CREATE TABLE {DEVICE_TABLE} ({', '.join(f'{n} TEXT' for n in columns)}, "
                       "PRIMARY KEY (jid))")
            db.execute(f"INSERT INTO {DEVICE_TABLE} ({names}) VALUES ({', '.join('?' for _ in columns)})",  # noqa: S608
                       list(columns.values()))
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)


class PostgresKeys:
    """A Postgres database shared by every salon; each salon's device JID is remembered
    through `load_jid`/`save_jid` (the session lease item in DynamoDB)."""

    def __init__(self, url: str, load_jid: Callable[[int], str | None],
                 save_jid: Callable[[int, str | None], None]) -> None:
        self._url = url
        self._load_jid = load_jid
        self._save_jid = save_jid

    def database(self, salon_id: int) -> str:
        return self._url

    def device_jid(self, salon_id: int) -> str | None:
        return self._load_jid(salon_id)

    def remember(self, salon_id: int, jid: str) -> None:
        self._save_jid(salon_id, jid)

    def remove(self, salon_id: int) -> None:
        # whatsmeow deletes the device's rows itself on logout; the name is what ties the
        # salon to them, and without it the session is never resumed.
        self._save_jid(salon_id, None)
