"""`python -m wa_runner.healthcheck`: the container health check. Healthy while the runner's
main loop has written its heartbeat file within the last `MAX_AGE_SECONDS`.

The file is the runner's status as JSON (`at`, `sessions`, `phases`, `pairings`), so
`cat`-ing it in the container shows what the runner is doing; the check reads only `at`."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MAX_AGE_SECONDS = 60
HEARTBEAT_FILE = Path(os.environ.get("RUNNER_HEARTBEAT_FILE", "/tmp/wa_runner.heartbeat"))  # noqa: S108


def beat(status: Mapping[str, Any] | None = None, path: Path | None = None, at: float | None = None) -> None:
    """Write the heartbeat atomically: the check never reads half a file. `at`: the runner's
    clock (wall time: the check compares it with its own)."""
    target = path or HEARTBEAT_FILE
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(json.dumps({"at": time.time() if at is None else at, **(status or {})}))
    os.replace(temporary, target)


def read_status(path: Path | None = None) -> dict[str, Any]:
    """The last status written; raises OSError or ValueError when there is none readable."""
    status = json.loads((path or HEARTBEAT_FILE).read_text())
    if not isinstance(status, dict) or not isinstance(status.get("at"), int | float):
        raise ValueError("heartbeat file without a time")
    return status


def main(path: Path | None = None) -> int:
    try:
        age = time.time() - float(read_status(path)["at"])
    except (OSError, ValueError):
        print("no heartbeat yet", file=sys.stderr)
        return 1
    if age > MAX_AGE_SECONDS:
        print(f"heartbeat is {age:.0f} s old", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
