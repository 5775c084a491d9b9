"""`python -m local`: run the whole service on this machine (see README)."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from local.stack import RemoteHostRefused, StackOptions, check_host, run_stack


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m local", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; a non-loopback one needs --allow-remote")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a non-loopback --host (the stack's secrets are public test values)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")),
                        help="0 picks a free port (default: $PORT or 3000)")
    parser.add_argument("--runners", type=int, default=1, help="runner processes to start")
    parser.add_argument("--time-scale", type=float, default=float(os.environ.get("WA_TIME_SCALE", "1")),
                        help="scale WhatsApp's QR timings (0.1 = ten times faster)")
    parser.add_argument("--data-dir", type=Path, default=None, help="where simulated WhatsApp keys are kept")
    parser.add_argument("--restart-runners", action="store_true",
                        help="start a runner again when it exits, instead of stopping the stack")
    parser.add_argument("--dynamodb-faults", action="store_true",
                        help="handlers and runners reach DynamoDB through a proxy that can slow or throttle "
                             "every call on demand (POST /_local/dynamodb/faults)")
    parser.add_argument("--no-auto-reply", dest="auto_reply", action="store_false",
                        help="no stand-in for AI Admin: clients' messages stay in the inbound queue unanswered")
    args = parser.parse_args()
    try:
        check_host(args.host, args.allow_remote)
    except RemoteHostRefused as exc:
        parser.exit(2, f"python -m local: {exc}\n")
    asyncio.run(run_stack(StackOptions(host=args.host, port=args.port, runners=args.runners,
                                       time_scale=args.time_scale, data_dir=args.data_dir,
                                       restart_runners=args.restart_runners, allow_remote=args.allow_remote,
                                       dynamodb_faults=args.dynamodb_faults, auto_reply=args.auto_reply)))


if __name__ == "__main__":
    main()
