"""`python -m wa_runner.healthcheck`: the container health check. Healthy while the runner's
main loop has written its heartbeat file within the last `MAX_AGE_SECONDS`."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

MAX_AGE_SECONDS = 60
HEARTBEAT_FILE = Path(os.environ.get("RUNNER_HEARTBEAT_FILE", "/tmp/wa_runner.heartbeat"))  # noqa: S108


def beat(path: Path = HEARTBEAT_FILE) -> None:
    path.write_text(str(time.time()))


def main() -> int:
    try:
        age = time.time() - float(HEARTBEAT_FILE.read_text())
    except (OSError, ValueError):
        print("no heartbeat yet", file=sys.stderr)
        return 1
    if age > MAX_AGE_SECONDS:
        print(f"heartbeat is {age:.0f} s old", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
