"""Cold-start import cost of each Lambda handler, in the built layer, against the floor every
handler pays anyway: `import boto3` plus one DynamoDB Table resource.

The layer is built the way `sam build` builds it (layers/common/requirements.txt, exported from
uv.lock, plus the aiadmin package) into .aws-sam/bench-layer, for this machine's platform so it
can be imported here. Figures are CPU time of the importing process (this machine is shared: wall
time moves with the other processes' load, CPU time far less), the median of N fresh
interpreters (`-n`, taken round-robin with the floor), each with the
layer and the function's directory on the path as Lambda arranges them, and settings in the
environment (no SSM call: the network is not what is measured). Figures per handler:

- import: `import app` alone (settings and clients are made on first use): the figure held to
  1.3x the floor;
- cold: `import app` plus the first use of the settings and every client the handler holds (what
  a first request pays before its own work), for information;
- first: cold plus the work a handler leaves to the first request that needs it, for
  information: the modules its `FIRST_USE_IMPORTS` names (imported by the routes that use them:
  the YClients client, pyjwt, qrcode, phonenumbers, and in the redirect and callback functions
  the store with its pydantic models; pydantic-settings with aiadmin.settings) and the validators
  of its pydantic models
  (`defer_build`). That work moved from the import to the first request using it: it is paid
  once per process, never per request, and the redirect function (SnapStart) does it before its
  snapshot (`aiadmin.preload.preload_before_snapshot`). The probe does it here itself, not through
  aiadmin, so it measures older code the same way.

Tracing off (POWERTOOLS_TRACE_DISABLED=true) is the target; tracing on (as in Lambda with
Tracing: Active) is printed for comparison: the X-Ray SDK and its patches are imported then.

    python bench/cold_start.py [-n 15] [--rebuild]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYER = ROOT / ".aws-sam" / "bench-layer"
FUNCTIONS = ["redirect", "callback", "ws_connect", "ws_message", "state_stream"]
TARGET = 1.3
ENV = {
    "AWS_DEFAULT_REGION": "eu-central-1", "AWS_REGION": "eu-central-1",
    "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
    "TABLE_NAME": "bench-table", "YCLIENTS_BASE_URL": "https://api.yclients.com", "YCLIENTS_APP_ID": "4242",
    "YCLIENTS_PARTNER_TOKEN": "bench-partner-token", "JWT_SECRET": "b" * 40,
    "WEBSOCKET_URL": "wss://example.execute-api.eu-central-1.amazonaws.com/prod",
    "WEBSOCKET_MANAGEMENT_URL": "https://example.execute-api.eu-central-1.amazonaws.com/prod",
    "ENTITY_QUEUE_URL": "https://sqs.eu-central-1.amazonaws.com/123456789012/bench",
    "POWERTOOLS_SERVICE_NAME": "aiadmin-onboarding", "POWERTOOLS_METRICS_NAMESPACE": "AIAdmin/Onboarding",
    "AWS_LAMBDA_FUNCTION_NAME": "bench", "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
}

FLOOR = """
import time
t0 = time.process_time()
import boto3
boto3.resource("dynamodb").Table("bench-table")
print(time.process_time() - t0)
"""

# The settings and clients a handler may hold, made on first use: make whichever the module has
# (a factory is called; an older handler's lazy proxy is touched).
HANDLER = """
import sys, time, types
t0 = time.process_time()
import app
t1 = time.process_time()
for name in ("settings", "store", "yclients", "pusher", "entity_queue", "process_lifecycle", "processor",
             "idempotency_store"):
    client = getattr(app, name, None)
    if isinstance(client, types.FunctionType) or hasattr(client, "cache_info"):
        client = client()
    if client is not None:
        getattr(client, "__dict__", None)  # a lazy client builds itself on any attribute access
        for attr in ("_table", "_client", "_session", "table"):
            getattr(client, attr, None)
t2 = time.process_time()
import importlib
for name in getattr(app, "FIRST_USE_IMPORTS", ()):
    importlib.import_module(name)
for module in (sys.modules.get("aiadmin.models"), app):
    for value in list(vars(module).values()) if module is not None else ():
        if (isinstance(value, type) and value.__module__ == module.__name__
                and getattr(value, "__pydantic_complete__", True) is False):
            value.model_rebuild()
t3 = time.process_time()
print(t1 - t0, t2 - t0, t3 - t0, "aws_xray_sdk" in sys.modules)
"""


def build_layer(rebuild: bool) -> None:
    python = LAYER / "python"
    if rebuild or not python.is_dir():
        shutil.rmtree(LAYER, ignore_errors=True)
        uv = Path(sys.executable).parent / "uv"
        subprocess.run([str(uv), "pip", "install", "--quiet", "--no-deps", "--compile-bytecode", "--python",
                        sys.executable, "--target", str(python), "-r", str(ROOT / "layers/common/requirements.txt")],
                       check=True)
    # Our package as it is now (the point of running the bench), the dependencies as locked.
    shutil.rmtree(python / "aiadmin", ignore_errors=True)
    shutil.copytree(ROOT / "layers/common/aiadmin", python / "aiadmin")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(python / "aiadmin")], check=True)


def _run(code: str, cwd: Path, tracing: bool) -> list[str]:
    env = {"PATH": os.environ.get("PATH", ""), **ENV, "PYTHONPATH": f"{cwd}:{LAYER / 'python'}"}
    if not tracing:
        env["POWERTOOLS_TRACE_DISABLED"] = "true"
    # -I: nothing from the user's site-packages or the venv: the layer alone, as in Lambda.
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    done = subprocess.run([str(base), "-c", f"import sys; sys.path[:0] = {str(cwd)!r}, {str(LAYER / 'python')!r}\n"
                           + code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return done.stdout.split()


def medians(samples: list[list[str]]) -> list[float | bool]:
    columns = list(zip(*samples, strict=True))
    out: list[float | bool] = []
    for column in columns:
        if column[0] in ("True", "False"):
            out.append(column[0] == "True")
        else:
            out.append(statistics.median(float(v) for v in column))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=15, help="fresh interpreters per figure (median)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the layer")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    build_layer(args.rebuild)
    # Round-robin: each round runs the floor once and every handler once, so the floor's N samples
    # and each handler's N samples are spread over the same minutes. (Taken in one block first,
    # the floor met a different load on this shared machine than the handlers did after it: the
    # floor moved from 199 to 290 ms between two runs of the same code.)
    configs = [(name, tracing) for name in FUNCTIONS for tracing in (False, True)]
    floor_samples: list[list[str]] = []
    samples: dict[tuple[str, bool], list[list[str]]] = {config: [] for config in configs}
    for _ in range(args.n):
        floor_samples.append(_run(FLOOR, ROOT, tracing=False))
        for name, tracing in configs:
            samples[name, tracing].append(_run(HANDLER, ROOT / "functions" / name, tracing))
    floor = float(medians(floor_samples)[0])
    # How much the same code's CPU time moved during this run: on a busy machine the ratios below
    # move with it (the verdict of one run is only as steady as this spread).
    q1, _, q3 = statistics.quantiles([float(s[0]) for s in floor_samples]) if args.n > 1 else (floor, 0, floor)
    print(f"floor: import boto3 + Table resource: {floor * 1000:.0f} ms (median of {args.n}; "
          f"middle half {q1 * 1000:.0f}-{q3 * 1000:.0f} ms)")
    print(f"{'handler':<12} {'tracing':<8} {'import':>8} {'ratio':>6} {'cold':>8} {'ratio':>6} "
          f"{'first':>8} {'ratio':>6} {'x-ray':>6}")
    figures = {"floor_ms": round(floor * 1000, 1), "floor_q1_ms": round(q1 * 1000, 1),
               "floor_q3_ms": round(q3 * 1000, 1), "handlers": {}}
    worst = 0.0
    for name in FUNCTIONS:
        for tracing in (False, True):
            imported, cold, first, xray = medians(samples[name, tracing])
            ratio, cold_ratio, first_ratio = float(imported) / floor, float(cold) / floor, float(first) / floor
            if not tracing:
                worst = max(worst, ratio)
            print(f"{name:<12} {'on' if tracing else 'off':<8} {float(imported) * 1000:>6.0f}ms {ratio:>5.2f}x "
                  f"{float(cold) * 1000:>6.0f}ms {cold_ratio:>5.2f}x "
                  f"{float(first) * 1000:>6.0f}ms {first_ratio:>5.2f}x {'yes' if xray else 'no':>6}")
            figures["handlers"][f"{name}/{'on' if tracing else 'off'}"] = {  # type: ignore[index]
                "import_ms": round(float(imported) * 1000, 1), "cold_ms": round(float(cold) * 1000, 1),
                "first_ms": round(float(first) * 1000, 1), "import_ratio": round(ratio, 2),
                "cold_ratio": round(cold_ratio, 2), "first_ratio": round(first_ratio, 2), "xray_imported": xray}
    verdict = "met" if worst <= TARGET else "MISSED"
    print(f"worst import/floor with tracing off: {worst:.2f}x (target <= {TARGET}x: {verdict})")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
