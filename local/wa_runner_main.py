"""`python -m local.wa_runner_main`: the runner as the local stack starts it: `python -m wa_runner`
itself, with the stack's shared YClients limit installed first (owners first: local.rate_priority),
as the stack's Lambda workers have it."""

from __future__ import annotations

import runpy

from local import rate_priority

if __name__ == "__main__":
    rate_priority.install()
    runpy.run_module("wa_runner", run_name="__main__", alter_sys=True)
