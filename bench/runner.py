"""WhatsApp runner figures, with the simulated engine on the local stack.

The stack (moto, gateway, simulated WhatsApp) runs without runners; the benchmark starts
`python -m wa_runner` processes against it, as AWS would, and reads their memory and CPU
from /proc. The same engine alone (no runner, no DynamoDB) runs in a process of its own for
the comparison ("the engine's own"). Sessions are linked through the real flow first (the
engine pairs, the simulated phone scans). Figures:

- memory per idle linked session: marginal RSS from N/2 to N connected sessions, runner vs
  engine alone; their difference is our own code. Also what process isolation would cost
  per session: the RSS of an engine-only process holding one session.
- CPU per QR push: runner CPU (minus its idle CPU) per QR code that reached an open page,
  vs the engine alone's CPU per QR code.
- resuming stored sessions: a fresh runner with N leased linked sessions until all are
  connected, vs the engine alone connecting them all at once; and the SIGTERM hand-back.
- "start" command -> first QR on the page: from the session write (what the redirect does)
  to the QR message on the page's socket, vs the engine alone's start() -> QR event.
- DynamoDB upkeep while idle: a runner (in this process, so a botocore hook sees its calls)
  with N idle linked sessions for a window; each call is the salon's when it touches one of
  a salon's items, else the runner's own (memberships, index queries); scaled to an hour.

Run: `make bench` or `python bench/runner.py --idle 200 --resume 500` (`--figures upkeep`
for one part).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiadmin.db import Store
from aiadmin.db.transitions import Transition
from aiadmin.models import Salon
from aiadmin.observability import logger
from aiadmin.onboarding import state_message
from aiadmin.states import SalonState
from aiadmin.tokens import issue_token
from local.observe import wait_until, whatsapp
from local.owner import open_page, receive_until
from local.process import RunningStack, local_stack
from local.seed import pair, record_linked
from local.stack import DEFAULT_JWT_SECRET, REGION, runner_environment, start_runner
from wa_runner.simulated import SimulatedEngine

# QR codes last 3 s, then 1 s each (WhatsApp's 60 s + 5 x 20 s, scaled): many pushes quickly.
TIME_SCALE = 0.05
SETTLE_SECONDS = 3.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def engine_alone(stack: RunningStack, sessions_dir: Path, mode: str, salon_ids: list[int],
                 concurrent: int = 0) -> dict[str, Any]:
    """Run bench/engine_alone.py (the engine in a process of its own) and read its figures."""
    command = [sys.executable, str(Path(__file__).with_name("engine_alone.py")), mode, "--server", stack.base_url,
               "--sessions-dir", str(sessions_dir), "--ids", ",".join(map(str, salon_ids)),
               "--concurrent", str(concurrent)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"engine alone ({mode}) failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# ---- runner processes ------------------------------------------------------------------------

class RunnerProcess:
    def __init__(self, stack: RunningStack, data_dir: Path, runner_id: str, log: IO[bytes], **env: str) -> None:
        self.runner_id = runner_id
        self.store = Store(stack.table())
        environment = {**runner_environment(stack.dynamodb_url, stack.base_url, data_dir, TIME_SCALE), **env}
        self.started = time.perf_counter()
        self.process = start_runner(runner_id, environment, log)
        self.pid = self.process.pid
        self.ready_after = wait_until(lambda: self._beat() and time.perf_counter() - self.started, 60,
                                      interval=0.05, what=f"{runner_id} heartbeat")

    def _beat(self) -> dict[str, Any] | None:
        """The runner's last status while it is live (its membership has not ended)."""
        beats = [b for b in self.store.members.heartbeats() if b["runner_id"] == self.runner_id]
        if not beats or beats[0].get("left"):
            return None
        live_until = beats[0].get("expires", beats[0]["at"] + 2)  # (runners before memberships: no `expires`)
        return beats[0] if live_until > time.time() else None

    def connected(self) -> int:
        beat = self._beat()
        return int(beat["phases"].get("connected", 0)) if beat else 0

    def stop(self) -> float:
        """SIGTERM; seconds until the process has handed its sessions over and exited."""
        stopping = time.perf_counter()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        return time.perf_counter() - stopping


@contextlib.contextmanager
def runner(stack: RunningStack, data_dir: Path, runner_id: str, log: IO[bytes], **env: str) -> Iterator[RunnerProcess]:
    process = RunnerProcess(stack, data_dir, runner_id, log, **env)
    try:
        yield process
    finally:
        if process.process.poll() is None:
            process.stop()


def request_run(store: Store, salon_ids: list[int]) -> None:
    for salon_id in salon_ids:
        store.sessions.request(salon_id, "run")


# ---- the figures ----------------------------------------------------------------------------

def memory_figures(stack: RunningStack, data_dir: Path, log: IO[bytes], salon_ids: list[int]) -> dict[str, float]:
    alone = engine_alone(stack, data_dir / "sessions", "memory", salon_ids)
    half = len(salon_ids) // 2
    store = Store(stack.table())
    with runner(stack, data_dir, "bench-memory", log) as process:
        time.sleep(SETTLE_SECONDS)
        request_run(store, salon_ids[:half])
        wait_until(lambda: process.connected() >= half, 120, what="half connected")
        time.sleep(SETTLE_SECONDS)
        half_mb = rss_mb(process.pid)
        request_run(store, salon_ids[half:])
        wait_until(lambda: process.connected() >= len(salon_ids), 120, what="all connected")
        time.sleep(SETTLE_SECONDS)
        full_mb = rss_mb(process.pid)
    per_session = 1024 / (len(salon_ids) - half)
    return {
        "engine_kb": (alone["full_mb"] - alone["half_mb"]) * per_session,
        "runner_kb": (full_mb - half_mb) * per_session,
        "process_isolation_mb": alone["one_process_mb"],
    }


def resume_figures(stack: RunningStack, data_dir: Path, log: IO[bytes], salon_ids: list[int],
                   concurrency: int | None = None) -> dict[str, float]:
    alone = engine_alone(stack, data_dir / "sessions", "resume", salon_ids)
    store = Store(stack.table())
    request_run(store, salon_ids)
    wanted = {str(s) for s in salon_ids}
    env = {"RUNNER_RESUME_CONCURRENCY": str(concurrency)} if concurrency else {}
    with runner(stack, data_dir, "bench-resume", log, **env) as process:
        wait_until(lambda: sum(1 for s, d in whatsapp(stack).devices.items() if s in wanted and d["connected"])
                   == len(salon_ids), 600, interval=0.05, what="all sessions resumed")
        resumed = time.perf_counter() - process.started
        ready = process.ready_after
        time.sleep(SETTLE_SECONDS)
        # Upkeep of that many idle sessions: CPU (its DynamoDB calls: `upkeep_figures`).
        cpu_before, since = cpu_seconds(process.pid), time.perf_counter()
        time.sleep(4 * SETTLE_SECONDS)
        idle_cpu = (cpu_seconds(process.pid) - cpu_before) / (time.perf_counter() - since)
        handed_back = process.stop()
    # Handed over: owner-less and claimable at once (not left to a takeover after the lease).
    released = sum(1 for lease in store.sessions.get_many(salon_ids).values() if lease.owner is None)
    return {"engine_s": alone["seconds"], "runner_s": resumed, "ready_s": ready, "sigterm_s": handed_back,
            "released": released, "idle_cpu_pct": idle_cpu * 100}


async def _qr_pushes(stack: RunningStack, store: Store, salon_ids: list[int],
                     process: RunnerProcess) -> dict[str, float]:
    idle_from, idle_cpu = time.perf_counter(), cpu_seconds(process.pid)
    await asyncio.sleep(SETTLE_SECONDS)
    idle_rate = (cpu_seconds(process.pid) - idle_cpu) / (time.perf_counter() - idle_from)
    pushes = 0
    async with contextlib.AsyncExitStack() as pages:
        sockets = []
        for salon_id in salon_ids:
            store.transitions.apply(Transition(salon_id, SalonState.PENDING_WHATSAPP, actor="bench"))
            token = issue_token(salon_id, DEFAULT_JWT_SECRET, 600)
            sockets.append(await pages.enter_async_context(open_page(stack.ws_url, token)))
            await receive_until(sockets[-1], {"pending_whatsapp"})  # the answer to its sync: it is open
        started, cpu_before = time.perf_counter(), cpu_seconds(process.pid)
        for salon_id in salon_ids:
            store.sessions.request(salon_id, "link")
        for ws in sockets:
            seen: list[dict[str, Any]] = []
            await receive_until(ws, {"qr_expired"}, 60, seen)
            pushes += sum(1 for message in seen if message["state"] == "qr_ready")
        elapsed = time.perf_counter() - started
        busy = cpu_seconds(process.pid) - cpu_before - idle_rate * elapsed
    return {"cpu_per_push_ms": busy / pushes * 1000, "pushes": pushes}


async def _first_qr(stack: RunningStack, store: Store, salon_ids: list[int]) -> list[float]:
    times = []
    for salon_id in salon_ids:
        store.transitions.apply(Transition(salon_id, SalonState.PENDING_WHATSAPP, actor="bench"))
        async with open_page(stack.ws_url, issue_token(salon_id, DEFAULT_JWT_SECRET, 600)) as ws:
            await receive_until(ws, {"pending_whatsapp"})  # the answer to its sync: the page is open
            started = time.perf_counter()
            await asyncio.to_thread(store.sessions.request, salon_id, "link")  # what the redirect does
            await receive_until(ws, {"qr_ready"})
            times.append(time.perf_counter() - started)
        # End the attempt, so the next sample meets an idle runner.
        await asyncio.to_thread(store.sessions.request, salon_id, "stop")
    return times


def qr_figures(stack: RunningStack, data_dir: Path, log: IO[bytes], first_id: int, attempts: int,
               starts: int) -> dict[str, Any]:
    store = Store(stack.table())
    push_ids = list(range(first_id, first_id + attempts))
    start_ids = list(range(first_id + attempts, first_id + attempts + starts))
    slow_ids = list(range(first_id + attempts + starts, first_id + attempts + 2 * starts))
    alone = engine_alone(stack, data_dir / "alone-sessions", "qr", list(range(first_id - starts, first_id)), attempts)
    figures: dict[str, Any] = {"engine_first_qr": alone["first_qr"], "engine_cpu_per_qr_ms": alone["cpu_per_qr"] * 1000}
    # First QR before the pushes: each state change is a moto transaction, slower the more
    # items the table holds, and the pushes add hundreds.
    with runner(stack, data_dir, "bench-qr-slow", log, RUNNER_MAX_PAIRINGS="200", RUNNER_POLL_SECONDS="0.25"):
        figures["first_qr_slow_poll"] = asyncio.run(_first_qr(stack, store, slow_ids))
    with runner(stack, data_dir, "bench-qr", log, RUNNER_MAX_PAIRINGS="200") as process:
        figures["first_qr"] = asyncio.run(_first_qr(stack, store, start_ids))
        figures["transition_ms"] = transition_ms(store, first_id - 1)
        figures.update(asyncio.run(_qr_pushes(stack, store, push_ids, process)))
    return figures


def transition_ms(store: Store, salon_id: int) -> float:
    """What one state change (a DynamoDB transaction) costs on this stack now, seen from outside."""
    store.transitions.apply(Transition(salon_id, SalonState.PENDING_WHATSAPP, actor="bench"))
    started = time.perf_counter()
    for _ in range(20):
        store.transitions.apply(Transition(
            salon_id, SalonState.QR_READY, actor="bench"))  # the next code, as the runner writes it
    return (time.perf_counter() - started) / 20 * 1000


def svg_render_ms() -> float:
    code = "https://wa.me/settings/linked_devices#2@" + "A" * 80 + "," + ",".join(["B" * 44] * 3) + ",1"
    salon = Salon(salon_id=1, state=SalonState.QR_READY, qr=code, qr_expires_at=time.time() + 20)
    started = time.process_time()
    for _ in range(50):
        state_message(salon, time.time())
    return (time.process_time() - started) / 50 * 1000


class DynamoCalls:
    """A botocore hook counting a client's DynamoDB calls: a call (or each item of a batch or a
    transaction) is a salon's when it touches a salon's item, else the runner's own."""

    def __init__(self) -> None:
        self.salon: Counter[str] = Counter()
        self.runner: Counter[str] = Counter()

    def watch(self, table: Any) -> None:
        table.meta.client.meta.events.register("before-call.dynamodb.*", self._count)

    def _count(self, model: Any, params: dict[str, Any], **_kwargs: Any) -> None:
        name = model.name
        body = params.get("body") or b"{}"
        request = json.loads(body.decode() if isinstance(body, bytes) else body)  # the wire format: typed values
        if name == "TransactWriteItems":
            keys = [next(iter(item.values())).get("Key") or next(iter(item.values())).get("Item")
                    for item in request.get("TransactItems", [])]
        elif name == "BatchGetItem":
            keys = [key for wanted in request.get("RequestItems", {}).values() for key in wanted.get("Keys", [])]
        elif name in ("Query", "Scan"):
            keys = [request.get("ExpressionAttributeValues") or {}]
        else:
            keys = [request.get("Key") or request.get("Item") or {}]
        for key in keys:
            values = [v.get("S", "") for v in (key or {}).values() if isinstance(v, dict)]
            target = self.salon if any(str(v).startswith("SALON#") for v in values) else self.runner
            target[name] += 1

    def totals(self) -> tuple[int, int]:
        return sum(self.salon.values()), sum(self.runner.values())


def upkeep_figures(stack: RunningStack, data_dir: Path, salon_ids: list[int], window: float) -> dict[str, Any]:
    """A runner in this process with the sessions connected and idle for `window` seconds."""
    from aiadmin.push import Pusher
    from aiadmin.yclients import YClientsClient
    from wa_runner.runner import Runner

    # The runner's other clients (the management API for pushes) as in the stack's runners.
    os.environ.update({"AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing"})
    table = stack.table()
    store = Store(table)
    calls = DynamoCalls()
    calls.watch(table)
    request_run(store, salon_ids)

    async def measure() -> dict[str, Any]:
        runner = Runner("bench-upkeep", store, SimulatedEngine(stack.base_url, data_dir / "sessions"),
                        Pusher(stack.base_url), YClientsClient(stack.base_url, "partner-token", 1), stack.base_url)
        stop = asyncio.Event()
        running = asyncio.create_task(runner.run(stop))
        while runner.status()["phases"].get("connected", 0) < len(salon_ids):
            await asyncio.sleep(0.2)
        await asyncio.sleep(SETTLE_SECONDS)
        before = (Counter(calls.salon), Counter(calls.runner))
        started = time.perf_counter()
        await asyncio.sleep(window)
        elapsed = time.perf_counter() - started
        salon, own = calls.salon - before[0], calls.runner - before[1]
        for salon_id in salon_ids:  # paused, not handed over: the next figures start from none running
            store.sessions.request(salon_id, "pause")
        while runner.status()["sessions"]:
            await asyncio.sleep(0.2)
        stop.set()
        await running
        per_hour = 3600 / elapsed
        return {"per_salon_hour": sum(salon.values()) * per_hour / len(salon_ids),
                "per_runner_hour": sum(own.values()) * per_hour,
                "runner_by_operation": {name: round(count * per_hour) for name, count in own.items()},
                "salon_by_operation": {name: round(count * per_hour / len(salon_ids), 1)
                                       for name, count in salon.items()},
                "sessions": len(salon_ids), "window": elapsed}

    return asyncio.run(measure())


def report(memory: dict[str, float] | None, resume: dict[str, float] | None, qr: dict[str, Any] | None,
           upkeep: dict[str, Any] | None, idle: int, resumed: int) -> None:
    def ms(values: list[float]) -> str:
        return f"median {statistics.median(values) * 1000:6.1f} ms, p95 {percentile(values, 0.95) * 1000:6.1f} ms"

    print("\nWhatsApp runner, simulated engine, on the local stack (runner = its own process)")
    if memory is not None:
        ours = memory["runner_kb"] - memory["engine_kb"]
        print(f"""Memory per idle linked session (RSS, marginal from {idle // 2} to {idle} connected):
  engine alone                    {memory['engine_kb']:8.1f} KB
  runner (engine + our code)      {memory['runner_kb']:8.1f} KB
  our own code                    {ours:8.1f} KB   (target: under 1024 KB)
  process isolation instead       {memory['process_isolation_mb']:8.1f} MB per session
                                  (RSS of an engine-only process holding one session)""")
    if qr is not None:
        print(f"""CPU per QR push (code -> salon state -> page socket), {qr['pushes']} pushes:
  runner                          {qr['cpu_per_push_ms']:8.2f} ms   (drawing the QR as SVG: {svg_render_ms():.2f} ms)
  engine alone, per QR code       {qr['engine_cpu_per_qr_ms']:8.2f} ms""")
    if resume is not None:
        print(f"""Resume {resumed} stored linked sessions:
  runner, process start -> all connected   {resume['runner_s']:6.2f} s   (first heartbeat: {resume['ready_s']:.2f} s)
  engine alone, all at once               {resume['engine_s']:6.2f} s
  SIGTERM -> sessions handed over, exited  {resume['sigterm_s']:6.2f} s   (target: 25 s with 500; \
{resume['released']:.0f} of {resumed} handed back)
  runner CPU while they idle               {resume['idle_cpu_pct']:6.1f} % of a core""")
    if qr is not None:
        first_qr_extra = statistics.median(qr["first_qr"]) - statistics.median(qr["engine_first_qr"])
        slow_extra = statistics.median(qr["first_qr_slow_poll"]) - statistics.median(qr["engine_first_qr"])
        print(f""""Start" command (session write) -> first QR on the page:
  runner, poll 0.1 s (default)    {ms(qr['first_qr'])}   (+{first_qr_extra * 1000:.0f} ms over the engine)
  runner, poll 0.25 s             {ms(qr['first_qr_slow_poll'])}   (+{slow_extra * 1000:.0f} ms over the engine)
  engine alone, start() -> QR     {ms(qr['engine_first_qr'])}
  (a state change here, one moto transaction: {qr['transition_ms']:.1f} ms; the QR's runs two reads, one
   transaction and one push after the claim; plus the claim poll's wait, half the poll on average)""")
    if upkeep is not None:
        sessions, window = upkeep["sessions"], upkeep["window"]
        print(f"""DynamoDB upkeep, {sessions} idle linked sessions on one runner ({window:.0f} s window):
  idle linked salon: {upkeep['per_salon_hour']:.1f} DynamoDB requests per hour   (target: at most 5)
    by operation: {upkeep['salon_by_operation'] or '-'}
  the runner's own (memberships, index polls), whatever its sessions: {upkeep['per_runner_hour']:.0f} per hour
    by operation: {upkeep['runner_by_operation']}""")


@contextlib.contextmanager
def bench_stack() -> Iterator[tuple[RunningStack, Path, IO[bytes]]]:
    """A local stack without runners; the runners' output goes to a log shown on failure."""
    data_dir = Path(tempfile.mkdtemp(prefix="aiadmin-bench-"))
    with local_stack(time_scale=TIME_SCALE, runners=0, data_dir=data_dir) as stack, \
            (data_dir / "runners.log").open("wb") as log:
        try:
            yield stack, data_dir, log
        except Exception:
            log.flush()
            print((data_dir / "runners.log").read_text()[-5000:], "".join(stack.output[-40:]), file=sys.stderr)
            raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=int, default=200, help="idle linked sessions for the memory and upkeep figures")
    parser.add_argument("--resume", type=int, default=500, help="stored sessions to resume")
    parser.add_argument("--attempts", type=int, default=10, help="linking attempts at once for CPU per QR push")
    parser.add_argument("--starts", type=int, default=20, help="start -> first QR samples")
    parser.add_argument("--window", type=float, default=60, help="seconds of the idle upkeep window")
    parser.add_argument("--figures", default="qr,memory,resume,upkeep", help="which figures (comma-separated)")
    parser.add_argument("--resume-concurrency", type=int, default=None,
                        help="RUNNER_RESUME_CONCURRENCY for the resume figure (default: the runner's own)")
    args = parser.parse_args()
    wanted = set(args.figures.split(","))
    logger.setLevel("WARNING")  # the store logs every state change it writes
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"  # the seeding's state changes are no metrics
    qr = memory = resume = upkeep = None
    # QR figures first, on a fresh stack: moto's transactions (each state change is one) get
    # slower the fuller its table is, which would show as runner latency.
    if "qr" in wanted:
        with bench_stack() as (stack, data_dir, log):
            print("Measuring QR pushes and first QR...", flush=True)
            qr = qr_figures(stack, data_dir, log, 800_000, args.attempts, args.starts)
    if wanted & {"memory", "resume", "upkeep"}:
        with bench_stack() as (stack, data_dir, log):
            linked = list(range(900_000, 900_000 + max(args.idle, args.resume)))
            print(f"Linking {len(linked)} salons through the simulated phone...", flush=True)
            asyncio.run(pair(SimulatedEngine(stack.base_url, data_dir / "sessions"), stack.base_url, linked))
            store = Store(stack.table())
            record_linked(store, linked, run=False)
            # Upkeep first: afterwards earlier runners' sessions would still be handed over.
            if "upkeep" in wanted:
                print(f"Measuring idle DynamoDB upkeep ({args.window:.0f} s)...", flush=True)
                upkeep = upkeep_figures(stack, data_dir, linked[:args.idle], args.window)
            if "memory" in wanted:
                print("Measuring memory...", flush=True)
                memory = memory_figures(stack, data_dir, log, linked[:args.idle])
            if "resume" in wanted:
                print("Measuring resume...", flush=True)
                resume = resume_figures(stack, data_dir, log, linked[:args.resume], args.resume_concurrency)
    report(memory, resume, qr, upkeep, args.idle, args.resume)


if __name__ == "__main__":
    main()
