"""The runner's bounds on its own work: linking attempts at once, resumes at once, and how long
a linking attempt nobody watches goes on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunnerLimits:
    max_pairings: int = 20          # linking attempts at once (RUNNER_MAX_PAIRINGS)
    resume_concurrency: int = 5     # linked sessions connecting at once (RUNNER_RESUME_CONCURRENCY)
    abandon_seconds: float = 160.0  # no page and no scan for this long stops an attempt

    @property
    def resume_backlog(self) -> int:
        """Claimed linked sessions waiting to start beyond which a runner claims no more, so
        that after a restart or a takeover the other runners take their share."""
        return 10 * self.resume_concurrency

    @property
    def page_check_seconds(self) -> float:
        return min(5.0, self.abandon_seconds / 4)
