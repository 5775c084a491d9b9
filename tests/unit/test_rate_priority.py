"""Background YClients calls yield to interactive ones under a limit shared by processes
(local.rate_priority): a fake limiter and a fake clock, announcements in a real directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from local.rate_priority import STALE_SECONDS, PriorityLimiter
from tests.unit.fakes import FakeClock


class RecordingLimiter:
    """Grants every call and records what the waiting directory held at that moment."""

    def __init__(self, waiting_dir: Path) -> None:
        self.dir = waiting_dir
        self.granted: list[tuple[str, list[str]]] = []
        self.bucket_factory = "the wrapped limiter's"

    def try_acquire(self, name: str, weight: int = 1, blocking: bool = True, timeout: float = -1) -> bool:
        self.granted.append((name, sorted(p.name for p in self.dir.iterdir())))
        return True


def _announce(waiting_dir: Path, clock: FakeClock, age: float = 0.0) -> Path:
    mark = waiting_dir / "other-process"
    mark.touch()
    os.utime(mark, (clock.now - age, clock.now - age))
    return mark


def test_an_interactive_call_is_announced_while_it_waits_for_the_limit(tmp_path: Path) -> None:
    limiter = RecordingLimiter(tmp_path)
    assert PriorityLimiter(limiter, tmp_path, background=False).try_acquire("yclients")
    [(_name, seen)] = limiter.granted
    assert len(seen) == 1 and seen[0].startswith(f"{os.getpid()}-")  # announced during the wait
    assert list(tmp_path.iterdir()) == []  # and no longer once it has its slot


def test_a_background_call_waits_until_no_interactive_call_is_waiting(tmp_path: Path) -> None:
    clock = FakeClock(1_000_000.0)
    mark = _announce(tmp_path, clock)
    polls: list[float] = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        clock.now += seconds
        if len(polls) == 3:
            mark.unlink()  # the owner's redirect got its slot

    limiter = RecordingLimiter(tmp_path)
    assert PriorityLimiter(limiter, tmp_path, background=True, clock=clock, sleep=sleep).try_acquire("yclients")
    assert len(polls) == 3 and limiter.granted == [("yclients", [])]


def test_a_background_call_gives_up_at_its_timeout_while_owners_keep_waiting(tmp_path: Path) -> None:
    clock = FakeClock(1_000_000.0)
    _announce(tmp_path, clock)

    def sleep(seconds: float) -> None:
        clock.now += seconds
        os.utime(tmp_path / "other-process", (clock.now, clock.now))  # owners keep coming

    limiter = RecordingLimiter(tmp_path)
    assert not PriorityLimiter(limiter, tmp_path, background=True, clock=clock, sleep=sleep).try_acquire(
        "yclients", timeout=2)
    assert limiter.granted == []


def test_a_crashed_waiters_stale_announcement_is_ignored_and_removed(tmp_path: Path) -> None:
    clock = FakeClock(1_000_000.0)
    _announce(tmp_path, clock, age=STALE_SECONDS + 1)
    limiter = RecordingLimiter(tmp_path)
    gate = PriorityLimiter(limiter, tmp_path, background=True, clock=clock, sleep=lambda _s: None)
    assert gate.try_acquire("yclients") and limiter.granted == [("yclients", [])]
    assert gate.bucket_factory == "the wrapped limiter's"  # the rest of the Limiter is the wrapped one's


def test_the_local_stack_installs_the_order_and_the_layer_never_imports_local_code(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aiadmin import yclients
    from local import rate_priority
    from local.template import ROOT

    monkeypatch.setattr(yclients, "_limiter_factories", [])
    monkeypatch.delenv(yclients.RATE_LIMIT_FILE_ENV, raising=False)
    assert not rate_priority.install() and not isinstance(yclients.client_limiter(True), PriorityLimiter)
    monkeypatch.setenv(yclients.RATE_LIMIT_FILE_ENV, str(tmp_path / "limit.sqlite"))
    monkeypatch.setattr(yclients, "process_limiter", lambda: RecordingLimiter(tmp_path))
    assert rate_priority.install()
    assert isinstance(yclients.client_limiter(background=True), PriorityLimiter)
    shipped = (ROOT / "layers" / "common" / "aiadmin").rglob("*.py")
    assert not [path.name for path in shipped if "from local" in path.read_text() or "import local" in path.read_text()]
