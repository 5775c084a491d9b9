"""How fast a salon's number may send (ban protection: WhatsApp bans unofficial clients that
send like a bulk sender). Token buckets on the runner's clock, one set per salon: replies to a
chat whose client wrote first go at conversation speed; messages to chats that never wrote go
slowly; and all of a salon's messages share a cap per minute. Pure: no I/O, no sleeping."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Audience(StrEnum):
    CONVERSATION = "conversation"    # the client wrote first (within the conversation window)
    FIRST_CONTACT = "first_contact"  # the client never wrote (or not for a long time)


@dataclass(frozen=True)
class PacePolicy:
    """Defaults: replies at one a second in bursts of 100 (a conversation), at most 6 a minute to
    chats that never wrote first, at most 120 a minute in all."""

    reply_per_second: float = 1.0
    reply_burst: int = 100
    first_contact_per_minute: float = 6.0
    first_contact_burst: int = 3
    per_minute: float = 120.0
    burst: int = 100


@dataclass
class TokenBucket:
    rate: float          # tokens a second
    capacity: float
    tokens: float = -1.0  # full at the first look
    at: float = 0.0

    def _fill(self, now: float) -> None:
        if self.tokens < 0:
            self.tokens, self.at = self.capacity, now
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = max(self.at, now)

    def wait(self, now: float) -> float:
        """Seconds until one token is there (0: now)."""
        self._fill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self) -> None:
        self.tokens -= 1


@dataclass
class SalonPace:
    policy: PacePolicy = field(default_factory=PacePolicy)

    def __post_init__(self) -> None:
        p = self.policy
        self._all = TokenBucket(p.per_minute / 60, p.burst)
        self._by_audience = {
            Audience.CONVERSATION: TokenBucket(p.reply_per_second, p.reply_burst),
            Audience.FIRST_CONTACT: TokenBucket(p.first_contact_per_minute / 60, p.first_contact_burst),
        }

    def take(self, audience: Audience, now: float) -> float:
        """Take a turn for one message to `audience`: 0 when it may go now (counted), else the
        seconds to wait (nothing counted)."""
        own = self._by_audience[audience]
        wait = max(self._all.wait(now), own.wait(now))
        if wait == 0:
            self._all.take()
            own.take()
        return wait
