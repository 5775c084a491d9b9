"""Pushes to the onboarding page's WebSocket connections via the API Gateway management API,
and the one rule for who pushes a salon's change.

Who pushes (the only place that decides; `pushed_by_stream` is what the stream consumer asks):
- a change the runner writes (QR codes, pairing codes, linking, activation) is pushed by the
  runner itself, right after its write: those are on the owner's critical path, and the
  stream would add its lag;
- every other change (the redirect, the page's own requests, lifecycle webhooks, ops) is
  pushed by the DynamoDB stream consumer (`functions/state_stream`);
- a page that asks (`sync`, or on opening) gets the current state in reply: not a change push.
Every state message carries the salon's `version`; the page ignores a message older than the
one it shows, so a late, repeated or out-of-order push never shows an older state.

Whom a push reaches: only the salon's sockets whose token is current, that is, of the consent
of the salon being pushed, and not expired. Any other socket of the salon gets one last
message saying why (`aiadmin.sockets.ending_message`) instead of the state, is closed and
forgotten: a QR or pairing code never reaches an old owner's or an expired page. An uninstall
ends the salon's consent (a new consent id): its pages get the `uninstalled` state itself as
their last message (it shows no code, and the owner reads what happened), then are closed.

How a push travels (one path, for the runner and the stream consumer): `PushQueue` keeps the
latest state per salon (a newer state supersedes an older one not yet sent), sends on the
pusher's one pool, each connection at once, within one deadline, with one retry policy
(`PushPolicy`): a send that did not get through (410 from a page still in its `$connect`
handshake, a throttle, an error) is sent once more a moment later; a second 410 is a gone page
(forgotten); a push that missed its deadline comes again later with the salon's latest state (the
runner's; a Lambda cannot come back later). Nothing sleeps: re-sends are scheduled on the
queue's clock, and `step(now)` carries out what is due.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from functools import cache
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from aiadmin.db import Store
from aiadmin.models import Salon
from aiadmin.observability import logger, metrics
from aiadmin.sockets import ending_message
from aiadmin.states import SalonState

# How long a WebSocket handshake may take after $connect recorded the connection.
HANDSHAKE_SECONDS = 0.5
# A push gives up after this long (a slow or hanging management API never holds the salon's
# next state for long; the runner pushes the latest state again later).
PUSH_DEADLINE_SECONDS = 10.0
# Management API calls in flight at once per pusher, its one pool (a salon has at most 5
# sockets; a runner pushes for many salons): more wait their turn, within their deadline.
FAN_OUT_THREADS = 32
# The actor whose changes the runner pushes itself.
RUNNER_ACTOR = "runner"


def pushed_by_stream(salon: Salon) -> bool:
    """Whether the stream consumer pushes this change (see the module's rule)."""
    return salon.updated_by != RUNNER_ACTOR


@dataclass(frozen=True)
class PushPolicy:
    """The one deadline and retry policy of pushes."""

    deadline_seconds: float = PUSH_DEADLINE_SECONDS
    # A send that did not get through is sent once more this much later (within the deadline):
    # a page still in its handshake has had time to finish it.
    resend_seconds: float = HANDSHAKE_SECONDS
    # A push that missed its deadline comes again this much later with the salon's latest
    # state (messages carry the version: a repeat is harmless), this many times at most.
    again_seconds: float = 1.0
    again_times: int = 3


@cache
def open_pusher(endpoint_url: str) -> Pusher:
    """The pusher of a WebSocket API's management endpoint: made on a handler's first push and
    kept for the container's life (its connections and its fan-out pool with it)."""
    return Pusher(endpoint_url)


class Pusher:
    """The management API (`@connections`): send, close, and a salon's audience."""

    def __init__(self, endpoint_url: str, client: Any | None = None, threads: int = FAN_OUT_THREADS) -> None:
        self._threads = threads
        self._pool_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None  # made on the first push
        self._client = client or boto3.client(
            "apigatewaymanagementapi",
            endpoint_url=endpoint_url,
            # A timeout shorter than a loaded API's answer would only send the message twice.
            # No retries here: `PushPolicy` is the one retry policy.
            config=Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard", "total_max_attempts": 1},
                          max_pool_connections=threads),
        )

    def send(self, connection_id: str, payload: str) -> bool:
        """True when delivered; False when the connection is gone (the caller forgets it)."""
        try:
            self._client.post_to_connection(ConnectionId=connection_id, Data=payload.encode())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("GoneException", "410"):
                return False
            raise
        return True

    def close(self, connection_id: str) -> None:
        """Close a socket (API Gateway's DELETE @connections); one already gone is no error."""
        try:
            self._client.delete_connection(ConnectionId=connection_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("GoneException", "410"):
                raise

    def end(self, store: Store, connection_id: str, salon_id: int, reason: str | None, action: str = "",
            last: str | None = None) -> None:
        """One last message, then close the socket and forget it: its token may receive nothing
        more. The message says why (`reason`: `token_expired`, `token_revoked`), or is `last` (the
        uninstall's state, which the owner's page shows); None and no `last`: the page has just
        received its consent's last state."""
        metrics.add_metric(name="SocketEnded", unit="Count", value=1)
        try:
            if last is not None:
                self.send(connection_id, last)
            elif reason is not None:
                self.send(connection_id, ending_message(reason, action))
            self.close(connection_id)
        except (ClientError, BotoCoreError):
            logger.exception("closing an ended socket failed", extra={"salon_id": salon_id})
        store.connections.remove(connection_id, salon_id)

    def audience(self, store: Store, salon: Salon, now: float) -> tuple[list[str], list[tuple[str, str]]]:
        """The salon's sockets that may receive its state (see the module's rule), and the others
        with the reason each is ended. A socket of another consent than the pushed state's may be
        of a newer one (the state is late: a page of the new owner connected meanwhile): the
        salon's consent as it is now is read, once, and such a socket is left alone."""
        current: list[str] = []
        ended: list[tuple[str, str]] = []
        now_consent: list[str | None] = []  # read on the first mismatch only
        for socket in store.connections.sockets_of(salon.salon_id):
            reason = socket.ended(salon.consent_id, now)
            if reason == "token_revoked":
                if not now_consent:
                    latest = store.salons.get(salon.salon_id)
                    now_consent.append(latest.consent_id if latest is not None else salon.consent_id)
                if socket.consent_id == now_consent[0]:
                    continue
            if reason is None:
                current.append(socket.connection_id)
            else:
                ended.append((socket.connection_id, reason))
        return current, ended

    def submit(self, task: Callable[..., None], *args: Any) -> Future[None]:
        """Run `task` on the pusher's one pool."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="push")
            return self._pool.submit(task, *args)

    def shutdown(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)

    def deliver(self, store: Store, salon: Salon, payload: str, deadline_seconds: float = PUSH_DEADLINE_SECONDS,
                clock: Callable[[], float] = time.time) -> tuple[int, bool]:
        """Push `payload` (the state of `salon`) to the salon's pages and wait until it is done:
        (deliveries, whether every page was answered within `deadline_seconds`). Once this
        returns, the ended sockets have been closed (a Lambda is frozen once its handler returns);
        a late page is left behind (the next push reaches it)."""
        queue = PushQueue(self, store, clock, PushPolicy(deadline_seconds=deadline_seconds, again_times=0))
        push = queue.put(salon, payload)
        queue.settle(lambda: push.finished)
        return push.delivered, push.complete

    def fan_out(self, store: Store, salon: Salon, payload: str, deadline_seconds: float = PUSH_DEADLINE_SECONDS,
                clock: Callable[[], float] = time.time) -> int:
        """`deliver`, returning the deliveries (the stream consumer's call)."""
        return self.deliver(store, salon, payload, deadline_seconds, clock)[0]


class _Answer(Enum):
    SENT = "sent"
    GONE = "gone"      # 410: gone, or still in its handshake
    FAILED = "failed"  # an error, a throttle, no answer in time from the API
    LATE = "late"      # not sent: its push's deadline had passed


@dataclass(eq=False)
class Push:
    """One state of a salon on its way to its pages."""

    salon: Salon
    payload: str
    deadline: float
    again: int = 0                     # how many times the salon's state came again already
    delivered: int = 0
    complete: bool = True              # every page answered in time
    started: bool = False              # its audience is being read: it is no longer queued
    finished: bool = False
    running: int = 1                   # its tasks on the pool (the first reads the audience)
    resend: list[str] = field(default_factory=list)
    resend_at: float = float("inf")
    futures: list[Future[None]] = field(default_factory=list)

    @property
    def salon_id(self) -> int:
        return self.salon.salon_id

    def next_due(self) -> float:
        return min(self.resend_at, self.deadline) if self.resend else self.deadline


class PushQueue:
    """The pushes under way: the latest state per salon, on the pusher's pool, within the
    policy's deadline, re-sent and repeated as the policy says. `latest(salon_id)`: the salon's
    state now and its message, for a push that comes again (None: none comes again). `wake` is
    called when something is due sooner than before (the runner's loop then calls `step`)."""

    def __init__(self, pusher: Pusher, store: Store, clock: Callable[[], float], policy: PushPolicy | None = None,
                 latest: Callable[[int], tuple[Salon, str] | None] | None = None,
                 wake: Callable[[], None] = lambda: None) -> None:
        self._pusher = pusher
        self._store = store
        self._clock = clock
        self._policy = policy or PushPolicy()
        self._latest = latest
        self._wake = wake
        self._changed = threading.Condition()
        self._pushes: dict[int, Push] = {}  # the latest state per salon
        self._flying: set[Push] = set()     # every push not finished (an older one may still be sending)
        self._agains: dict[int, tuple[float, int]] = {}  # salon -> (when, how many times before)
        self._reading = 0  # latest states being read for pushes that come again

    def put(self, salon: Salon, payload: str, again: int = 0) -> Push:
        """Push this state of the salon; it supersedes an older one of the salon still queued
        (one already sending goes on: its pages may be waiting for it)."""
        with self._changed:
            older = self._pushes.get(salon.salon_id)
            if older is not None and older.salon.version > salon.version:
                return older  # a newer state is on its way already
            if older is not None and not older.started:
                self._supersede(older)
            self._agains.pop(salon.salon_id, None)
            push = Push(salon, payload, self._clock() + self._policy.deadline_seconds, again)
            self._pushes[salon.salon_id] = push
            self._flying.add(push)
            push.futures.append(self._pusher.submit(self._start, push))
        self._wake()
        return push

    def idle(self) -> bool:
        with self._changed:
            return not (self._flying or self._agains or self._reading)

    def next_due(self) -> float | None:
        """When `step` has something to do next (None: nothing is waiting for a time)."""
        with self._changed:
            return self._next_due()

    def step(self, now: float) -> None:
        """Carry out what is due: re-sends, pushes past their deadline, pushes that come again."""
        with self._changed:
            self._step(now)

    def settle(self, done: Callable[[], bool], until: float | None = None) -> None:
        """Carry out the pushes until `done()` (or the clock reaches `until`), waiting for answers
        and for what is due."""
        with self._changed:
            while not done():
                now = self._clock()
                if until is not None and now >= until:
                    return
                self._step(now)
                if done():
                    return
                due = [when for when in (self._next_due(), until) if when is not None]
                self._changed.wait(max(0.0, min(due) - now) if due else None)

    # ---- on the pool ---------------------------------------------------------------------

    def _start(self, push: Push) -> None:
        try:
            with self._changed:
                if push.finished:
                    return
                push.started = True
            current, ended = self._pusher.audience(self._store, push.salon, self._clock())
            with self._changed:
                if push.finished:
                    return
                for connection_id, reason in ended:
                    self._run(push, self._end, push, connection_id, reason)
                for connection_id in current:
                    self._run(push, self._send, push, connection_id, False)
        except Exception:
            logger.exception("push failed", extra={"salon_id": push.salon_id})
            with self._changed:
                push.complete = False
        finally:
            with self._changed:
                self._task_done(push)

    def _send(self, push: Push, connection_id: str, resent: bool) -> None:
        answer = _Answer.LATE
        try:
            if push.finished:
                return
            if self._clock() < push.deadline:
                answer = _Answer.SENT if self._pusher.send(connection_id, push.payload) else _Answer.GONE
            if answer == _Answer.GONE and resent:
                self._store.connections.remove(connection_id, push.salon_id)  # gone for good
        except (ClientError, BotoCoreError):
            # One broken or slow connection must not stop the others from getting the state.
            logger.exception("push failed", extra={"salon_id": push.salon_id})
            answer = _Answer.FAILED
        finally:
            with self._changed:
                self._answered(push, connection_id, answer, resent)
                self._task_done(push)

    def _end(self, push: Push, connection_id: str, reason: str | None) -> None:
        # An uninstall ended the consent: the old consent's pages get that state as their last message.
        last = push.payload if reason == "token_revoked" and push.salon.state == SalonState.UNINSTALLED else None
        try:
            self._pusher.end(self._store, connection_id, push.salon_id, reason, last=last)
        finally:
            with self._changed:
                self._task_done(push)

    def _again(self, salon_id: int, times: int) -> None:
        try:
            latest = self._latest(salon_id) if self._latest is not None else None
            if latest is not None:
                self.put(*latest, again=times)
        except Exception:
            logger.exception("push failed again", extra={"salon_id": salon_id})
        finally:
            with self._changed:
                self._reading -= 1
                self._changed.notify_all()

    # ---- bookkeeping (under the lock) ----------------------------------------------------

    def _run(self, push: Push, task: Callable[..., None], *args: Any) -> None:
        push.running += 1
        push.futures.append(self._pusher.submit(task, *args))

    def _answered(self, push: Push, connection_id: str, answer: _Answer, resent: bool) -> None:
        if push.finished:
            return
        if answer == _Answer.SENT:
            push.delivered += 1
        elif answer in (_Answer.GONE, _Answer.FAILED) and not resent:
            at = self._clock() + self._policy.resend_seconds
            if at < push.deadline:
                push.resend.append(connection_id)
                push.resend_at = min(push.resend_at, at)
                self._wake()
                return
            push.complete = False
        elif answer != _Answer.GONE:
            push.complete = False
        if push.salon.state == SalonState.UNINSTALLED and not (answer == _Answer.GONE and resent):
            # The consent ended with this state, its last message: its pages are closed now.
            self._run(push, self._end, push, connection_id, None)

    def _task_done(self, push: Push) -> None:
        push.running -= 1
        if push.running == 0 and not push.resend and not push.finished:
            self._finish(push)
        self._changed.notify_all()

    def _finish(self, push: Push) -> None:
        push.finished = True
        self._flying.discard(push)
        if self._pushes.get(push.salon_id) is push:
            del self._pushes[push.salon_id]
        if push.complete:
            return
        metrics.add_metric(name="PushTimedOut", unit="Count", value=1)
        logger.warning("push deadline passed", extra={"salon_id": push.salon_id})
        if self._latest is not None and push.again < self._policy.again_times \
                and push.salon_id not in self._pushes:
            self._agains[push.salon_id] = (self._clock() + self._policy.again_seconds, push.again + 1)
            self._wake()

    def _supersede(self, push: Push) -> None:
        push.finished = True
        self._flying.discard(push)
        for future in push.futures:
            future.cancel()  # not started yet: never sent
        self._changed.notify_all()

    def _step(self, now: float) -> None:
        for push in list(self._flying):
            if now >= push.deadline:
                push.complete = False
                for future in push.futures:
                    future.cancel()
                self._finish(push)
            elif push.resend and now >= push.resend_at:
                resend, push.resend, push.resend_at = push.resend, [], float("inf")
                for connection_id in resend:
                    self._run(push, self._send, push, connection_id, True)
        for salon_id, (when, times) in list(self._agains.items()):
            if now >= when:
                del self._agains[salon_id]
                self._reading += 1
                self._pusher.submit(self._again, salon_id, times)
        self._changed.notify_all()

    def _next_due(self) -> float | None:
        times = [push.next_due() for push in self._flying] + [when for when, _ in self._agains.values()]
        return min(times) if times else None

