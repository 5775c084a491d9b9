"""The activation worker: runs `aiadmin.activation` for the runner's salons on a bounded pool
of its own. A YClients outage can hold every one of its threads (each activation retries until
the owner's hour ends) and nothing else waits: membership, commands, claims and pushes have
their own threads. One activation per salon at a time; stopping ends the backoff waits at once.

`consider` is the rule for when (`wa_runner.mapping.activation_wanted`): a salon whose
activation failed is activated again only on an explicit retry request, consumed exactly once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

from aiadmin.activation import Activator
from aiadmin.db import Store
from aiadmin.db.memberships import Fence
from aiadmin.db.sessions import Sessions
from aiadmin.db.transitions import LeaseLost
from aiadmin.models import Salon
from aiadmin.observability import logger
from wa_runner.mapping import activation_wanted
from wa_runner.sessions import OwnedSession

ACTIVATION_WORKERS = 16


class ActivationWorker:
    def __init__(self, store: Store, sessions: Sessions, fence: Callable[[], Fence],
                 make_activator: Callable[[], Activator], workers: int = ACTIVATION_WORKERS) -> None:
        self._store = store
        self._sessions = sessions
        self._fence = fence
        self._make_activator = make_activator
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="activation")
        self._lock = threading.Lock()
        self._jobs: dict[int, tuple[Future[None], threading.Event]] = {}
        self._stopping = threading.Event()

    def active(self) -> set[int]:
        """Salons with an activation queued or running."""
        with self._lock:
            return set(self._jobs)

    async def consider(self, owned: OwnedSession, salon: Salon | None = None) -> bool:
        """Activate the connected session's salon if it should be; True when one was started.
        `salon`: the salon as the caller just read or wrote it (else it is read here)."""
        if salon is None:
            salon = await asyncio.to_thread(self._store.salons.get, owned.salon_id)
        if salon is None:
            return False
        retry = False
        if owned.retry_activation:
            # Consumed before acting: a request is acted on once, also across takeovers.
            retry = await asyncio.to_thread(self._sessions.take_activation_retry, owned.salon_id, self._fence(),
                                            owned.lease.generation)
            owned.retry_activation = False
        if not activation_wanted(salon.state, retry):
            return False
        return self.submit(owned.salon_id)

    def submit(self, salon_id: int) -> bool:
        with self._lock:
            if salon_id in self._jobs or self._stopping.is_set():
                return False
            cancelled = threading.Event()
            future = self._pool.submit(self._run, salon_id, cancelled)
            self._jobs[salon_id] = (future, cancelled)
        future.add_done_callback(lambda _f: self._done(salon_id, future))
        return True

    def cancel(self, salon_id: int) -> None:
        """The session is no longer ours: a queued activation never starts, a running one ends
        at its next wait (its writes are fenced meanwhile)."""
        with self._lock:
            job = self._jobs.get(salon_id)
        if job is not None:
            job[1].set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the activations queued or running now (tests; shutdown does not wait)."""
        with self._lock:
            futures = [future for future, _cancelled in self._jobs.values()]
        wait(futures, timeout)

    def close(self) -> None:
        self._stopping.set()
        with self._lock:
            jobs = list(self._jobs.values())
        for _future, cancelled in jobs:
            cancelled.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _done(self, salon_id: int, future: Future[None]) -> None:
        with self._lock:
            if self._jobs.get(salon_id, (None,))[0] is future:
                del self._jobs[salon_id]

    def _run(self, salon_id: int, cancelled: threading.Event) -> None:
        if cancelled.is_set():
            return

        def wait(seconds: float) -> bool:
            return not (cancelled.wait(seconds) or self._stopping.is_set())

        try:
            end = self._make_activator().run(salon_id, wait)
            logger.info("activation ended", extra={"salon_id": salon_id, "end": end})
        except LeaseLost:
            logger.warning("activation ended: the session is no longer ours", extra={"salon_id": salon_id})
        except Exception:
            logger.exception("activation failed", extra={"salon_id": salon_id})
