"""`python -m ops`: one salon's onboarding, and a check of everything a deployment needs.

    python -m ops [--local [URL] | --stack NAME [--region R]] [--json] COMMAND

    status <salon id>            state, recent events, the owning runner, YClients' last activation answer
    retry-activation <salon id>  activate again (activation_failed, within the owner's hour)
    new-pairing <salon id>       a fresh linking attempt (never for a linked salon)
    stuck                        salons linking or activating too long, or failed recently
    doctor                       settings, SSM parameters, table and index, WebSocket management API,
                                 a fresh runner heartbeat, YClients with our token: ok or FAIL each

Where: by default the environment (the variables the service reads; boto3's default
credentials); `--local` a running `make dev` stack (default http://127.0.0.1:$PORT, 3000);
`--stack` a deployed stack, read from CloudFormation.
Exit status: 0 done (doctor: all ok), 1 not applicable / a check failed, 2 usage or unreachable target.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

from aiadmin.config import ComponentSettings, SettingsError, TableName
from ops import salon_id_argument
from ops.target import TargetError, local_environment, stack_environment


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--local", nargs="?", metavar="URL",
                       const=f"http://127.0.0.1:{os.environ.get('PORT', '3000')}", help="a running local stack")
    where.add_argument("--stack", metavar="NAME", help="a deployed CloudFormation stack")
    parser.add_argument("--region", help="with --stack (default: boto3's)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="one salon's state, events, runner, YClients' answer")
    status.add_argument("salon_id", type=salon_id_argument)
    status.add_argument("--events", type=int, default=10, help="recent events shown (default 10)")
    commands.add_parser("retry-activation", help="activate again").add_argument("salon_id", type=salon_id_argument)
    commands.add_parser("new-pairing", help="a fresh linking attempt").add_argument("salon_id", type=salon_id_argument)
    stuck = commands.add_parser("stuck", help="salons stuck or failed")
    stuck.add_argument("--minutes", type=float, default=10, help="in progress at least this long (default 10)")
    stuck.add_argument("--days", type=float, default=7, help="failed within this many days (default 7)")
    commands.add_parser("doctor", help="check everything a deployment needs")
    return parser


def _when(stamp: float | None) -> str:
    if not stamp:
        return "-"
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _print_status(found: dict[str, Any]) -> None:
    print(f"salon {found['salon_id']}: {found['state']} for {_age(found['for_seconds'])} "
          f"(since {_when(found['since'])}, by {found['by']}, version {found['version']})")
    print(f"  consent {_when(found['consent_at'])}, activation deadline {_when(found['activation_deadline'])}")
    print(f"  YClients' last activation answer: {found['last_activation_answer'] or 'none yet'}")
    session = found["session"]
    if session is None:
        print("  session: none requested")
    else:
        runner = session["runner"] or "no runner (waiting to be claimed)"
        line = f"  session: desired {session['desired']} (generation {session['generation']}), owner {runner}"
        if session["runner"]:
            line += f", epoch {session['owner_epoch']}"
            beat = session["runner_heartbeat_age_seconds"]
            line += f", heartbeat {beat} s ago" if beat is not None else ", no heartbeat from it"
        print(line)
    print("  recent events (newest first):")
    for event in found["events"]:
        change = f"{event['from'] or '-'} -> {event['to'] or '-'}"
        print(f"    {_when(event['at'])}  {change:<40} {event['actor'] or '':<10} {event['reason'] or ''}")


class TableSettings(ComponentSettings):
    table_name: TableName


def _store() -> Any:
    import boto3

    from aiadmin.db import Store

    return Store(boto3.resource("dynamodb").Table(TableSettings.load().table_name))


def run(args: argparse.Namespace) -> int:
    from ops import salons

    now = time.time()
    if args.command == "doctor":
        from ops.doctor import doctor

        checks = doctor()
        if args.json:
            print(json.dumps([c.__dict__ for c in checks], ensure_ascii=False, indent=2))
        else:
            for check in checks:
                print(check.line())
        failed = [c.name for c in checks if not c.ok]
        if not args.json:
            summary = f"{len(checks) - len(failed)}/{len(checks)} ok"
            print(summary + (f"; failing: {', '.join(failed)}" if failed else ""))
        return 1 if failed else 0
    store = _store()
    if args.command == "status":
        found = salons.status(store, args.salon_id, now, args.events)
        if found is None:
            print(f"ops: salon {args.salon_id} is unknown", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(found, ensure_ascii=False, indent=2))
        else:
            _print_status(found)
        return 0
    if args.command == "stuck":
        query = salons.StuckQuery(args.minutes * 60, args.days * 86400)
        found_stuck = salons.stuck(store, now, query)
        if args.json:
            print(json.dumps([s.__dict__ for s in found_stuck], ensure_ascii=False, indent=2))
            return 0
        for s in found_stuck:
            print(f"{s.salon_id:>12}  {s.state:<20} {_age(s.for_seconds):>8}  by {s.updated_by:<8}  -> {s.hint}")
        print(f"{len(found_stuck)} salon(s)")
        return 0
    nudge = salons.retry_activation if args.command == "retry-activation" else salons.new_pairing
    try:
        message = nudge(store, args.salon_id, now)
    except salons.NotApplicable as exc:
        print(f"ops: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"salon_id": args.salon_id, "result": message}) if args.json
          else f"salon {args.salon_id}: {message}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.local:
            os.environ.update(local_environment(args.local))
        elif args.stack:
            os.environ.update(stack_environment(args.stack, args.region))
        return run(args)
    except (TargetError, SettingsError) as exc:
        print(f"ops: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
