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
ends the salon's consent: its pages get the `uninstalled` state itself as their last message (it
shows no code, and the owner reads what happened), then are closed.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from aiadmin.models import Salon
from aiadmin.observability import logger, metrics
from aiadmin.sockets import ending_message
from aiadmin.states import SalonState
from aiadmin.store import PageSocket, Store

# How long a WebSocket handshake may take after $connect recorded the connection.
HANDSHAKE_SECONDS = 0.5
# A fan-out gives up after this long (a slow or hanging management API never holds the
# pusher's next message for long; the runner pushes the latest state again later).
PUSH_DEADLINE_SECONDS = 10.0
# Sends in flight at once per pusher (a salon has at most 5 sockets; a runner pushes for many
# salons): more wait their turn, within their fan-out's deadline.
FAN_OUT_THREADS = 16
# The actor whose changes the runner pushes itself.
RUNNER_ACTOR = "runner"


def pushed_by_stream(salon: Salon) -> bool:
    """Whether the stream consumer pushes this change (see the module's rule)."""
    return salon.updated_by != RUNNER_ACTOR


class Pusher:
    def __init__(self, endpoint_url: str, client: Any | None = None) -> None:
        self._executor_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None  # made on the first fan-out
        self._client = client or boto3.client(
            "apigatewaymanagementapi",
            endpoint_url=endpoint_url,
            # A timeout shorter than a loaded API's answer would only send the message twice.
            config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 2}, max_pool_connections=32),
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

    def end(self, store: Store, connection_id: str, salon_id: int, reason: str, action: str = "",
            last: str | None = None) -> None:
        """One last message, then close the socket and forget it: its token may receive nothing
        more. The message says why (`reason`: `token_expired`, `token_revoked`), or is `last`
        (the uninstall's state, which the owner's page shows)."""
        metrics.add_metric(name="SocketEnded", unit="Count", value=1)
        try:
            self.send(connection_id, last if last is not None else ending_message(reason, action))
            self.close(connection_id)
        except (ClientError, BotoCoreError):
            logger.exception("closing an ended socket failed", extra={"salon_id": salon_id})
        store.remove_connection(connection_id, salon_id)

    def fan_out(self, store: Store, salon: Salon, payload: str, deadline_seconds: float = PUSH_DEADLINE_SECONDS,
                clock: Any = time.monotonic) -> int:
        """Send to every current connection of the salon; end the others, delete the gone ones.
        Returns deliveries (see `deliver`)."""
        return self.deliver(store, salon, payload, deadline_seconds, clock)[0]

    def deliver(self, store: Store, salon: Salon, payload: str, deadline_seconds: float = PUSH_DEADLINE_SECONDS,
                clock: Any = time.monotonic, now: float | None = None) -> tuple[int, bool]:
        """Send `payload` (the state of `salon`) to every current connection of the salon at once
        (see the module's rule), end the others; delete the gone ones. Returns (deliveries,
        whether every connection was answered): a connection not answered within
        `deadline_seconds` is left behind, and the caller may push the salon's state again later.

        API Gateway also answers 410 for a connection whose $connect is still under way (it is
        recorded during $connect): such a connection gets the message once more after a short
        pause, and only if it still answers 410 is it forgotten. Else a page that connected
        just as its QR was pushed would never get another message."""
        salon_id = salon.salon_id
        deadline = clock() + deadline_seconds
        current, ending = self._current(store, salon, payload, store.sockets_of(salon_id),
                                        time.time() if now is None else now)
        delivered, gone, complete = self._send_all(current, payload, salon_id, deadline, clock)
        forgotten: list[str] = []
        if gone and clock() + HANDSHAKE_SECONDS < deadline:
            time.sleep(HANDSHAKE_SECONDS)
            again, forgotten, again_complete = self._send_all(gone, payload, salon_id, deadline, clock)
            delivered += again
            complete = complete and again_complete
            for connection_id in forgotten:
                store.remove_connection(connection_id, salon_id)
        # Ended sockets are closed before returning (a Lambda is frozen once its handler returns).
        if ending and wait(ending, timeout=max(0.0, deadline - clock())).not_done:
            complete = False
        if not complete:
            logger.warning("push deadline passed", extra={"salon_id": salon_id})
        return delivered, complete

    def _current(self, store: Store, salon: Salon, payload: str, sockets: list[PageSocket],
                 now: float) -> tuple[list[str], list[Future[None]]]:
        """The sockets that may receive the salon's state; the others are ended on the pool (their
        last message, the close and the forgetting never hold up the current ones)."""
        current, ending = [], []
        uninstalled = salon.state == SalonState.UNINSTALLED
        for socket in sockets:
            reason = socket.ended(salon.consent_id, now)
            if reason is None:
                current.append(socket.connection_id)
            else:
                last = payload if uninstalled and reason == "token_revoked" else None
                ending.append(self._executor().submit(self.end, store, socket.connection_id, salon.salon_id, reason,
                                                      last=last))
        return current, ending

    def _send_all(self, connection_ids: list[str], payload: str, salon_id: int, deadline: float,
                  clock: Any) -> tuple[int, list[str], bool]:
        """One message to each connection, concurrently (a salon has at most a few: one slow
        page must not delay the others). Returns (deliveries, gone connections, all answered)."""
        if not connection_ids:
            return 0, [], True
        gone: list[str] = []
        futures = {self._executor().submit(self._try_send, c, payload, salon_id, gone): c for c in connection_ids}
        done, late = wait(futures, timeout=max(0.0, deadline - clock()))
        for future in late:
            future.cancel()  # not started yet: never sent; started: its answer is not waited for
        return sum(1 for future in done if future.result()), list(gone), not late

    def _executor(self) -> ThreadPoolExecutor:
        with self._executor_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=FAN_OUT_THREADS, thread_name_prefix="push")
            return self._pool

    def _try_send(self, connection_id: str, payload: str, salon_id: int, gone: list[str]) -> bool:
        try:
            if self.send(connection_id, payload):
                return True
            gone.append(connection_id)
        except (ClientError, BotoCoreError):
            # One broken or slow connection must not stop the others from getting the state.
            logger.exception("push failed", extra={"salon_id": salon_id})
        return False
