"""Pushes to the onboarding page's WebSocket connections via the API Gateway management API."""

from __future__ import annotations

import time
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from aiadmin.observability import logger
from aiadmin.store import Store

# How long a WebSocket handshake may take after $connect recorded the connection.
HANDSHAKE_SECONDS = 0.5


class Pusher:
    def __init__(self, endpoint_url: str, client: Any | None = None) -> None:
        self._client = client or boto3.client(
            "apigatewaymanagementapi",
            endpoint_url=endpoint_url,
            config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 2}),
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

    def fan_out(self, store: Store, salon_id: int, payload: str) -> int:
        """Send to every connection of the salon; delete the gone ones. Returns deliveries.

        API Gateway also answers 410 for a connection whose $connect is still under way (it is
        recorded during $connect): such a connection gets the message once more after a short
        pause, and only if it still answers 410 is it forgotten. Else a page that connected
        just as its QR was pushed would never get another message."""
        delivered = 0
        gone: list[str] = []
        for connection_id in store.connections_of(salon_id):
            if self._try_send(connection_id, payload, salon_id, gone):
                delivered += 1
        if gone:
            time.sleep(HANDSHAKE_SECONDS)
            still_gone: list[str] = []
            for connection_id in gone:
                if self._try_send(connection_id, payload, salon_id, still_gone):
                    delivered += 1
            for connection_id in still_gone:
                store.remove_connection(connection_id, salon_id)
        return delivered

    def _try_send(self, connection_id: str, payload: str, salon_id: int, gone: list[str]) -> bool:
        try:
            if self.send(connection_id, payload):
                return True
            gone.append(connection_id)
        except ClientError:
            # One broken connection must not stop the others from getting the state.
            logger.exception("push failed", extra={"salon_id": salon_id})
        return False
