"""Messages through the local stack: latency each way, what one runner sustains, requests and
money per message, and the engine's Go-call lock.

The stack runs one runner (simulated engine), no stand-in for AI Admin (`auto_reply=False`):
this benchmark reads the inbound queue itself, as AI Admin would (receive up to 10, delete
them in one batch). N salons are linked quickly (the simulated phone pairs each device, the
salon records are written as a finished onboarding leaves them, the runner resumes them all).
The paces are raised far above their defaults (`PACE`): the runner, not ban protection, is
measured. Figures:

- latency, p50/p95 each way: inbound = a client's `client-message` POST -> its record read off
  the inbound queue; outbound = the API's 202 -> the message in the client's inbox (the
  simulated server's clock when the salon's device sent it: what `sent` records);
- the rate one runner sustains: a steady mix (half inbound, half outbound, salons in turn) at
  `--rate` messages a second, times `--factor` every `--seconds` step, until the p95 of either
  way is twice the first step's (or a step does not drain in 45 s): the last step before that is
  the figure.
  Everything (moto, the gateway's Lambda workers, the simulated WhatsApp, the runner, this
  load) shares the machine's cores: on a small machine moto's single lock is the bottleneck
  long before the runner is (the runner's own CPU share is printed);
- DynamoDB and SQS requests per message, and $ per 10,000 messages: a window of inbound-only
  and one of outbound-only messages. DynamoDB: every process's calls, counted by the botocore
  hook of `bench/dynamo_calls.py` (requests as DynamoDB bills them; request units estimated
  from item sizes), only those on salons' items (the runner's fixed upkeep, its polls and
  heartbeat, is printed apart). SQS: every API call of every process (the runner's
  SendMessage, and AI Admin's side: this benchmark's ReceiveMessage and DeleteMessageBatch,
  empty long polls included), counted by a botocore hook of the same kind. An outbound
  message's delivered receipt (one more record on the queue) is part of its cost;
- the engine's Go-call lock (neonize's `GoCalls`, no WhatsApp connection): how long one call
  holds it (a start-up of a real neonize client; a send and a stop with the test suite's
  stand-in Go client, tests/unit/test_neonize_messages.py), how long a send waits behind a
  mass resume of 20 start-ups (each holding the lock `HANDSHAKE_SECONDS`, a modelled dial +
  handshake) with the urgent-first order and with plain FIFO, and the hand-over of a message
  from neonize's callback to the runner's queue (the measurable part of the inbound loss
  window), idle and with the event loop busy in 2 ms chunks.

Prices (on-demand, per million): DynamoDB as bench/cost.py (eu-central-1 after the Nov 2024 cut:
$0.1525 per RRU, $0.7625 per WRU); SQS FIFO $0.50 per request (each 64 KB of a request is one;
the first million a month is free, not counted). From memory: check
https://aws.amazon.com/dynamodb/pricing/on-demand/ and https://aws.amazon.com/sqs/pricing/.

Run: `python bench/messages.py` (200 salons, steps of 15 s from 5 messages/s; a few minutes),
`--salons 50 --seconds 10 --rate 5`, `--no-lock` / `--lock-only`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
FIRST_SALON = 170_000
DYNAMODB_READ_PRICE = 0.1525   # $ per million read request units (eu-central-1 on-demand)
DYNAMODB_WRITE_PRICE = 0.7625  # $ per million write request units
SQS_FIFO_PRICE = 0.50          # $ per million FIFO requests (64 KB each)
PACE = {  # far above the defaults: the runner is measured, not ban protection
    "MESSAGES_REPLY_PER_SECOND": "1000", "MESSAGES_REPLY_BURST": "1000",
    "MESSAGES_FIRST_CONTACT_PER_MINUTE": "60000", "MESSAGES_PER_MINUTE": "60000",
}
HANDSHAKE_SECONDS = 0.3  # a start-up's hold in the lock model: dial + noise handshake
DRAIN_SECONDS = 45.0
# Every process of the stack imports this (its directory first on PYTHONPATH): DynamoDB calls
# through bench/dynamo_calls.py, SQS calls through `count_sqs` below.
SITECUSTOMIZE = """import os
if os.environ.get("AIADMIN_DYNAMODB_CALLS_DIR"):
    from bench.dynamo_calls import install
    from bench.messages import count_sqs
    install(os.environ["AIADMIN_DYNAMODB_CALLS_DIR"])
    count_sqs(os.environ["AIADMIN_DYNAMODB_CALLS_DIR"])
"""


# ---- counting SQS calls (every process) --------------------------------------------------------

def count_sqs(directory: str | Path) -> None:
    """Append one line per SQS API call of this process to `<directory>/sqs-<pid>.jsonl`."""
    import botocore.session

    path = Path(directory) / f"sqs-{os.getpid()}.jsonl"
    lock = threading.Lock()

    def after(model: Any, parsed: dict[str, Any], **_kwargs: Any) -> None:
        try:
            received = len(parsed.get("Messages") or []) if model.name == "ReceiveMessage" else 0
            line = json.dumps({"t": time.time(), "pid": os.getpid(), "op": model.name, "received": received})
            with lock, path.open("a") as out:
                out.write(line + "\n")
        except Exception:  # noqa: S110 - counting must never break the process it counts
            pass

    original = botocore.session.Session.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.get_component("event_emitter").register("after-call.sqs", after)

    botocore.session.Session.__init__ = init  # type: ignore[method-assign]


def sqs_calls(directory: Path) -> list[dict[str, Any]]:
    calls = []
    for path in sorted(directory.glob("sqs-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                calls.append(json.loads(line))
            except ValueError:
                continue
    return calls


# ---- figures ------------------------------------------------------------------------------------

def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def ms(values: list[float]) -> str:
    if not values:
        return "p50 -, p95 - (none)"
    return f"p50 {percentile(values, 0.5) * 1000:7.1f} ms, p95 {percentile(values, 0.95) * 1000:7.1f} ms"


def phone_of(salon_id: int) -> str:
    """The salon's client (one per salon). Never ending in 0000: the simulated server has no
    WhatsApp account for those (local.fake_whatsapp)."""
    return f"79{salon_id:09d}1"


class QueueReader:
    """AI Admin's side: reads the inbound queue (two long-polling threads), notes when each
    client message and each receipt was read, deletes them in batches."""

    def __init__(self, stack: Any) -> None:
        self._stack = stack
        self.messages: dict[str, float] = {}          # WhatsApp id -> read at
        self.receipts: dict[str, float] = {}          # caller id -> delivered receipt read at
        self.records = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]

    def __enter__(self) -> QueueReader:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _run(self) -> None:
        sqs = self._stack.sqs()
        url = self._stack.inbound_queue_url
        while not self._stop.is_set():
            try:
                batch = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            except Exception:  # the stack stopping
                time.sleep(0.2)
                continue
            got = batch.get("Messages", [])
            now = time.time()
            for message in got:
                record = json.loads(message["Body"])
                self.records += 1
                if record.get("type") == "message":
                    self.messages[str(record["wa_message_id"])] = now
                elif record.get("type") == "receipt" and record.get("status") == "delivered":
                    self.receipts[str(record["id"])] = now
            if got:
                sqs.delete_message_batch(QueueUrl=url, Entries=[
                    {"Id": str(index), "ReceiptHandle": m["ReceiptHandle"]} for index, m in enumerate(got)])


class Load:
    """Clients writing and AI Admin sending, over real HTTP (one session per thread)."""

    def __init__(self, stack: Any, salon_ids: list[int], reader: QueueReader) -> None:
        import requests

        from aiadmin.config import LOCAL_MESSAGES_API_KEY

        self._stack = stack
        self._salons = salon_ids
        self._reader = reader
        self._auth = {"Authorization": f"Bearer {LOCAL_MESSAGES_API_KEY}"}
        self._local = threading.local()
        self._requests = requests
        self._next = 0
        self.inbound: dict[str, float] = {}             # WhatsApp id -> POST started
        self.outbound: dict[str, tuple[int, float]] = {}  # text -> (salon, 202 at)
        self.refused: Counter[str] = Counter()

    def _session(self) -> Any:
        if not hasattr(self._local, "http"):
            self._local.http = self._requests.Session()
        return self._local.http

    def salon(self) -> int:
        self._next += 1
        return self._salons[self._next % len(self._salons)]

    def client_writes(self, salon_id: int, tag: str) -> None:
        started = time.time()
        try:
            answer = self._session().post(f"{self._stack.base_url}/_local/whatsapp/client-message", timeout=30,
                                          json={"salon_id": salon_id, "from": phone_of(salon_id),
                                                "text": f"Вопрос {tag}"})
        except self._requests.RequestException as exc:
            self.refused[f"client-message {type(exc).__name__}"] += 1
            return
        if answer.status_code != 200:
            self.refused[f"client-message {answer.status_code}"] += 1
            return
        self.inbound[str(answer.json()["id"])] = started

    def send(self, salon_id: int, tag: str) -> None:
        text = f"Ответ {tag}"
        try:
            answer = self._session().post(f"{self._stack.base_url}/salons/{salon_id}/messages", headers=self._auth,
                                          timeout=30, json={"id": tag, "to": "+" + phone_of(salon_id), "text": text})
        except self._requests.RequestException as exc:
            self.refused[f"POST messages {type(exc).__name__}"] += 1
            return
        if answer.status_code != 202:
            self.refused[f"POST messages {answer.status_code}"] += 1
            return
        self.outbound[text] = (salon_id, time.time())

    def run(self, rate: float, seconds: float, tag: str, inbound: bool = True, outbound: bool = True,
            ) -> tuple[list[str], list[str], float]:
        """Open loop: one message every 1/rate s (alternating ways when both); returns the
        WhatsApp ids written, the texts sent and the seconds the schedule took."""
        kinds = [k for k, on in (("in", inbound), ("out", outbound)) if on]
        count = max(1, round(rate * seconds))
        before_in, before_out = set(self.inbound), set(self.outbound)
        started = time.monotonic()
        with ThreadPoolExecutor(64) as pool:
            for n in range(count):
                due = started + n / rate
                if (pause := due - time.monotonic()) > 0:
                    time.sleep(pause)
                kind = kinds[n % len(kinds)]
                salon_id = self.salon()
                if kind == "in":
                    pool.submit(self.client_writes, salon_id, f"{tag}-{n}")
                else:
                    pool.submit(self.send, salon_id, f"{tag}-{n}")
        took = time.monotonic() - started
        return sorted(set(self.inbound) - before_in), sorted(set(self.outbound) - before_out), took

    def wait_drained(self, wa_ids: list[str], texts: list[str], timeout: float = DRAIN_SECONDS) -> bool:
        """Until every client message was read off the queue and every sent message's delivered
        receipt was (it comes after the message is in the inbox)."""
        tags = [text.removeprefix("Ответ ") for text in texts]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(w in self._reader.messages for w in wa_ids) and all(t in self._reader.receipts for t in tags):
                return True
            time.sleep(0.1)
        return False

    def outbound_latencies(self, texts: list[str]) -> list[float]:
        """202 -> in the client's inbox (the simulated server's time of the send)."""
        wanted = set(texts)
        sent_at: dict[str, float] = {}
        for salon_id in sorted({self.outbound[t][0] for t in texts}):
            answer = self._session().get(f"{self._stack.base_url}/_local/whatsapp/client-inbox",
                                         params={"phone": phone_of(salon_id)}, timeout=30)
            for entry in answer.json()["messages"]:
                if entry["text"] in wanted:
                    sent_at[entry["text"]] = float(entry["at"])
        return [sent_at[t] - self.outbound[t][1] for t in texts if t in sent_at]

    def explain(self, wa_ids: list[str], texts: list[str]) -> None:
        """What did not drain: client messages not read off the queue, messages not in the
        client's inbox, delivered receipts not read (with the message's status)."""
        unread = [w for w in wa_ids if w not in self._reader.messages]
        no_receipt = [t for t in texts if t.removeprefix("Ответ ") not in self._reader.receipts]
        table = self._stack.table()
        statuses: Counter[str] = Counter()
        for text in no_receipt:
            tag = text.removeprefix("Ответ ")
            item = table.get_item(Key={"pk": f"SALON#{self.outbound[text][0]}", "sk": f"MSG#{tag}"}).get("Item") or {}
            statuses[str(item.get("status"))] += 1
        print(f"    not drained: {len(unread)} client messages not read off the queue; {len(no_receipt)} sent "
              f"messages without a delivered receipt on the queue (their statuses: {dict(statuses)})", flush=True)

    def inbound_latencies(self, wa_ids: list[str]) -> list[float]:
        return [self._reader.messages[w] - self.inbound[w] for w in wa_ids if w in self._reader.messages]


# ---- the stack -----------------------------------------------------------------------------------

def link_salons(stack: Any, data_dir: Path, salon_ids: list[int]) -> float:
    """Pair every salon's device with the simulated phone, write the salons as onboarded, and wait
    until the stack's runner has them all connected; seconds it took."""
    from aiadmin.db import Store
    from local.observe import wait_until, whatsapp
    from local.seed import pair, record_linked
    from wa_runner.simulated import SimulatedEngine

    started = time.monotonic()
    asyncio.run(pair(SimulatedEngine(stack.base_url, data_dir / "sessions"), stack.base_url, salon_ids))
    record_linked(Store(stack.table()), salon_ids, run=True)
    wait_until(lambda: sum(whatsapp(stack).connected(s) for s in salon_ids) == len(salon_ids), 300, interval=0.5,
               what="every salon connected by the runner")
    return time.monotonic() - started


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def step_figures(load: Load, rate: float, factor: float, seconds: float, steps: int,
                 runner_pid: int) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    base_p95: tuple[float, float] | None = None
    for index in range(steps):
        step_rate = rate * factor ** index
        cpu_before, wall_before = cpu_seconds(runner_pid), time.monotonic()
        wa_ids, texts, took = load.run(step_rate, seconds, f"s{index}")
        drained = load.wait_drained(wa_ids, texts)
        cpu = (cpu_seconds(runner_pid) - cpu_before) / max(1e-9, time.monotonic() - wall_before)
        inbound, outbound = load.inbound_latencies(wa_ids), load.outbound_latencies(texts)
        p95 = (percentile(inbound, 0.95), percentile(outbound, 0.95))
        if not drained:
            load.explain(wa_ids, texts)
        result = {"rate": step_rate, "achieved": (len(wa_ids) + len(texts)) / took, "inbound": inbound,
                  "outbound": outbound, "drained": drained, "runner_cpu": cpu,
                  "missing": len(wa_ids) - len(inbound) + len(texts) - len(outbound)}
        results.append(result)
        print(f"  {step_rate:6.1f}/s asked, {result['achieved']:6.1f}/s sent: in {ms(inbound)}; out {ms(outbound)}; "
              f"runner CPU {cpu * 100:.0f}%{'' if drained else '; NOT DRAINED'}", flush=True)
        if base_p95 is None:
            base_p95 = p95
        elif not drained or p95[0] > 2 * base_p95[0] or p95[1] > 2 * base_p95[1]:
            break
    return results


def cost_window(load: Load, calls_dir: Path, count: int, rate: float, inbound: bool, runner_pid: int,
                ) -> dict[str, Any]:
    from bench.cost import Tally
    from bench.dynamo_calls import between, read_calls

    start = time.time()
    wa_ids, texts, _ = load.run(rate, count / rate, "in" if inbound else "out", inbound=inbound, outbound=not inbound)
    if not load.wait_drained(wa_ids, texts):
        load.explain(wa_ids, texts)
    time.sleep(1.0)  # the last receipts' writes
    end = time.time()
    messages = len(wa_ids) + len(texts)
    calls = between(list(read_calls(calls_dir)), start, end)
    salons = Tally(calls, lambda owner: owner.startswith("salon:"))
    fixed = Tally(calls, lambda owner: not owner.startswith("salon:"))
    sqs = [c for c in sqs_calls(calls_dir) if start <= c["t"] < end]
    runner_sqs = sum(1 for c in sqs if c["pid"] == runner_pid)
    reader_sqs = sum(1 for c in sqs if c["pid"] == os.getpid())
    return {"messages": messages, "seconds": end - start, "requests": salons.requests / messages,
            "rru": salons.rru / messages, "wru": salons.wru / messages, "fixed": fixed.requests,
            "ops": {op: n / messages for op, n in sorted(salons.by_operation.items(), key=lambda kv: -kv[1])[:6]},
            "runner_sqs": runner_sqs / messages, "reader_sqs": reader_sqs / messages,
            "sqs": len(sqs) / messages}


def dollars_per_10k(window: dict[str, Any], read_price: float, write_price: float, sqs_price: float) -> float:
    per_message = (window["rru"] * read_price + window["wru"] * write_price + window["sqs"] * sqs_price) / 1e6
    return per_message * 10_000


# ---- the Go-call lock (no WhatsApp connection) ----------------------------------------------------

async def _send_behind_resume(urgent_first: bool) -> tuple[float, dict[str, dict[str, float]]]:
    """20 start-ups queued (each holds the lock HANDSHAKE_SECONDS), then one send: how long it
    waited. `urgent_first=False` makes the send queue like a start-up (plain FIFO)."""
    from neonize.events import ConnectedEv

    from tests.unit.test_neonize_messages import CLIENT, FakeGoClient, _engine_with_session
    from wa_runner.keys import SqliteKeyFiles
    from wa_runner.neonize_engine import GoCalls, NeonizeEngine

    class ModelEngine(NeonizeEngine):
        @staticmethod
        def _connect(client: Any, events: Any) -> None:
            time.sleep(HANDSHAKE_SECONDS)
            events.on_connected(client, ConnectedEv(status=True))
            time.sleep(1)
            events.connection_ended("")

    engine = ModelEngine(SqliteKeyFiles(tempfile.mkdtemp(prefix="bench-lock-")))
    linked = _engine_with_session(Path(tempfile.mkdtemp(prefix="bench-lock-")), FakeGoClient(), salon_id=999)
    engine._sessions[999] = linked._sessions[999]
    if not urgent_first:
        hold = engine._go_calls.hold
        engine._go_calls.hold = lambda kind, priority=GoCalls.URGENT: hold(kind, GoCalls.START)  # type: ignore[method-assign]
    starts = [asyncio.create_task(engine.start(salon_id, 1)) for salon_id in range(1, 21)]
    await asyncio.sleep(0.05)
    asked = time.monotonic()
    await engine.send_text(999, CLIENT, "Здравствуйте")
    waited = time.monotonic() - asked
    await asyncio.gather(*starts)
    linked._stop_thread.set()  # type: ignore[attr-defined]
    engine._sessions.pop(999)
    stats = engine.lock_stats()
    await engine.close()
    return waited, stats


async def _real_start_ups(count: int = 20) -> dict[str, dict[str, float]]:
    """`count` real neonize clients started at once and stopped (no network: each start-up's
    hold is neonize's own work up to its first callback or its giving up)."""
    from wa_runner.keys import SqliteKeyFiles
    from wa_runner.neonize_engine import NeonizeEngine

    engine = NeonizeEngine(SqliteKeyFiles(tempfile.mkdtemp(prefix="bench-lock-")), startup_wait=15)
    await asyncio.gather(*(engine.start(salon_id, 1) for salon_id in range(1, count + 1)))
    await asyncio.sleep(0.5)
    await engine.close()
    return engine.lock_stats()


async def _handover(count: int = 2000, busy: bool = False) -> dict[str, float]:
    """neonize's own dispatcher (`Event.execute`, as Go calls it) on a thread of its own, `count`
    message events -> the runner's queue: seconds per hand-over."""
    import ctypes

    from neonize.client import NewClient
    from neonize.events import EVENT_TO_INT, MessageEv
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message

    from tests.unit.test_neonize_messages import message_event
    from wa_runner.neonize_engine import SessionEvents, _Figures

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    figures = _Figures()
    events = SessionEvents(1, 1, loop, queue.put_nowait, on_handover=figures.add)
    client = NewClient(str(Path(tempfile.mkdtemp(prefix="bench-lock-")) / "unused.db"), uuid="bench-handover")
    events.register(client)
    data = message_event(Message(conversation="Здравствуйте")).SerializeToString()
    buffer = ctypes.create_string_buffer(data, len(data))
    code = EVENT_TO_INT[MessageEv]

    def go_side() -> None:
        for _ in range(count):
            client.event.execute(1, ctypes.addressof(buffer), len(data), code)

    stop = False

    async def busy_loop() -> None:
        while not stop:
            time.sleep(0.002)  # the loop does work in 2 ms chunks
            await asyncio.sleep(0)

    worker = asyncio.create_task(busy_loop()) if busy else None
    thread = threading.Thread(target=go_side)
    thread.start()
    for _ in range(count):
        await queue.get()
    stop = True
    if worker is not None:
        await worker
    thread.join()
    return figures.summary()


def lock_figures() -> None:
    async def measure() -> None:
        real = await _real_start_ups()
        urgent_wait, urgent = await _send_behind_resume(True)
        fifo_wait, _ = await _send_behind_resume(False)
        idle = await _handover()
        busy = await _handover(busy=True)
        print("\nEngine Go-call lock (neonize, no WhatsApp connection):")
        print(f"  hold per call: start-up (real client, no network) p50 {real['start']['hold_p50'] * 1000:.1f} ms, "
              f"p95 {real['start']['hold_p95'] * 1000:.1f} ms; stop p50 {real['stop']['hold_p50'] * 1000:.2f} ms, "
              f"p95 {real['stop']['hold_p95'] * 1000:.2f} ms; send (stand-in client) p50 "
              f"{urgent['send']['hold_p50'] * 1000:.2f} ms")
        print(f"  a send behind a mass resume of 20 start-ups ({HANDSHAKE_SECONDS * 1000:.0f} ms each, modelled): "
              f"waits {urgent_wait:.3f} s urgent-first, {fifo_wait:.3f} s plain FIFO")
        print(f"  callback -> runner queue hand-over (2,000 messages): idle p50 {idle['p50'] * 1000:.2f} ms, "
              f"p95 {idle['p95'] * 1000:.2f} ms, max {idle['max'] * 1000:.2f} ms; loop busy in 2 ms chunks "
              f"p50 {busy['p50'] * 1000:.2f} ms, p95 {busy['p95'] * 1000:.2f} ms, max {busy['max'] * 1000:.2f} ms")

    asyncio.run(measure())


# ---- main -----------------------------------------------------------------------------------------

def report_cost(windows: Iterable[tuple[str, dict[str, Any]]], read_price: float, write_price: float,
                sqs_price: float) -> None:
    print(f"\nRequests per message (DynamoDB: salons' items only; request units estimated; prices: "
          f"DynamoDB ${read_price}/M RRU, ${write_price}/M WRU on-demand; SQS FIFO ${sqs_price}/M requests):")
    for name, w in windows:
        print(f"  {name:9} ({w['messages']} in {w['seconds']:.0f} s): DynamoDB {w['requests']:.1f} requests "
              f"({w['rru']:.1f} RRU + {w['wru']:.1f} WRU); SQS {w['sqs']:.2f} requests (runner {w['runner_sqs']:.2f}, "
              f"AI Admin's reads {w['reader_sqs']:.2f}); ${dollars_per_10k(w, read_price, write_price, sqs_price):.4f} "
              f"per 10,000 messages")
        print("            " + ", ".join(f"{op} {n:.1f}" for op, n in w["ops"].items()))
        print(f"            runner's fixed upkeep meanwhile: {w['fixed'] / w['seconds']:.1f} requests/s "
              "(not per message)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--salons", type=int, default=200, help="linked salons (default 200)")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per rate step (default 15)")
    parser.add_argument("--rate", type=float, default=5.0, help="messages/s of the first step (default 5)")
    parser.add_argument("--factor", type=float, default=1.5, help="each step's rate over the last one's (default 1.5)")
    parser.add_argument("--steps", type=int, default=6, help="rate steps at most (default 6)")
    parser.add_argument("--cost-messages", type=int, default=100, help="messages per cost window, each way")
    parser.add_argument("--read-price", type=float, default=DYNAMODB_READ_PRICE)
    parser.add_argument("--write-price", type=float, default=DYNAMODB_WRITE_PRICE)
    parser.add_argument("--sqs-price", type=float, default=SQS_FIFO_PRICE)
    parser.add_argument("--no-lock", action="store_true", help="skip the Go-call lock figures")
    parser.add_argument("--lock-only", action="store_true", help="only the Go-call lock figures")
    args = parser.parse_args()
    began = time.monotonic()
    if args.lock_only:
        lock_figures()
        return

    from aiadmin.observability import logger
    from bench.dynamo_calls import ENV_DIR
    from local.process import local_stack

    logger.setLevel("WARNING")
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    calls_dir = Path(tempfile.mkdtemp(prefix="aiadmin-messages-calls-"))
    hook_dir = Path(tempfile.mkdtemp(prefix="aiadmin-messages-hook-"))
    (hook_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    data_dir = Path(tempfile.mkdtemp(prefix="aiadmin-messages-bench-"))
    env = {**PACE, ENV_DIR: str(calls_dir), "LOG_LEVEL": "WARNING",
           "PYTHONPATH": os.pathsep.join([str(hook_dir), str(ROOT), str(ROOT / "layers" / "common"),
                                          os.environ.get("PYTHONPATH", "")])}
    count_sqs(calls_dir)  # this process's SQS calls: AI Admin's side (its DynamoDB calls are the seeding's)
    salon_ids = list(range(FIRST_SALON, FIRST_SALON + args.salons))
    with local_stack(time_scale=0.05, runners=1, auto_reply=False, data_dir=data_dir, extra_env=env) as stack:
        runner_pid = next(iter(stack.runners.values()))
        print(f"Linking {args.salons} salons...", flush=True)
        linked = link_salons(stack, data_dir, salon_ids)
        print(f"  {args.salons} salons linked and connected by one runner in {linked:.1f} s", flush=True)
        with QueueReader(stack) as reader:
            load = Load(stack, salon_ids, reader)
            load.run(args.rate, 3, "warmup")  # first calls of each Lambda worker, each chat a conversation
            time.sleep(3)
            print("Cost windows...", flush=True)
            windows = [("inbound", cost_window(load, calls_dir, args.cost_messages, args.rate, True, runner_pid)),
                       ("outbound", cost_window(load, calls_dir, args.cost_messages, args.rate, False, runner_pid))]
            time.sleep(2)
            print(f"Rate steps ({args.seconds:.0f} s each, half inbound, half outbound, {args.salons} salons in turn):",
                  flush=True)
            steps = step_figures(load, args.rate, args.factor, args.seconds, args.steps, runner_pid)
        refused = dict(load.refused)

    print(f"\nMessages on the local stack: {args.salons} salons, one runner (simulated engine), "
          f"{os.cpu_count()} cores shared by every process")
    first = steps[0]
    print(f"Latency at {first['rate']:.0f} messages/s: inbound (client-message POST -> read off the queue) "
          f"{ms(first['inbound'])}; outbound (202 -> in the client's inbox) {ms(first['outbound'])}")
    sustained = [s for s in steps if s["drained"] and percentile(s["inbound"], 0.95) <= 2 * percentile(
        first["inbound"], 0.95) and percentile(s["outbound"], 0.95) <= 2 * percentile(first["outbound"], 0.95)]
    worse = steps[len(sustained)] if len(sustained) < len(steps) else None
    if worse is not None:
        print(f"One runner sustains {sustained[-1]['achieved']:.0f} messages/s; at {worse['rate']:.0f}/s asked "
              f"the p95 doubles (in {percentile(worse['inbound'], 0.95) * 1000:.0f} ms, "
              f"out {percentile(worse['outbound'], 0.95) * 1000:.0f} ms{'' if worse['drained'] else ', not drained'})")
    else:
        print(f"One runner sustains at least {sustained[-1]['achieved']:.0f} messages/s (p95 never doubled: "
              "raise --rate or --steps)")
    if refused:
        print(f"Refused or failed requests: {refused}")
    report_cost(windows, args.read_price, args.write_price, args.sqs_price)
    if not args.no_lock:
        lock_figures()
    print(f"\n(the benchmark took {time.monotonic() - began:.0f} s)")


if __name__ == "__main__":
    main()
