"""`python -m ops.yclients`: the partner-side YClients operations, for ops, from a shell.

Reads YCLIENTS_BASE_URL, YCLIENTS_APP_ID and YCLIENTS_PARTNER_TOKEN (or YCLIENTS_PARTNER_TOKEN_PARAM,
an SSM parameter name) like the service does; prints JSON. Calls share the 5 requests/s limit.

    python -m ops.yclients status 123
    python -m ops.yclients salons --page 1 --count 100
    python -m ops.yclients uninstall 123
    python -m ops.yclients payment 123 2990 RUB 2026-11-20 2026-12-20
    python -m ops.yclients refund 9001
    python -m ops.yclients payment-link 123 [--discount 10]
    python -m ops.yclients tariffs
    python -m ops.yclients channel 123 whatsapp on|off
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from aiadmin.config import ComponentSettings, PartnerToken, SettingsError, YClientsAppId, YClientsBaseUrl
from aiadmin.yclients import PartnerApiError, YClientsClient
from ops import salon_id_argument


def _date(value: str) -> datetime:
    for form in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return datetime.strptime(value, form)
        except ValueError:
            continue
    raise argparse.ArgumentTypeError(f"{value!r}: expected YYYY-MM-DD or 'YYYY-MM-DD HH:MM:SS'")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ops.yclients", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="our app's status in a salon").add_argument("salon_id", type=salon_id_argument)
    salons = commands.add_parser("salons", help="salons that installed the app")
    salons.add_argument("--page", type=int, default=1)
    salons.add_argument("--count", type=int, default=100)
    commands.add_parser("uninstall", help="disable the app in a salon").add_argument("salon_id", type=salon_id_argument)
    payment = commands.add_parser("payment", help="report a payment")
    payment.add_argument("salon_id", type=salon_id_argument)
    payment.add_argument("amount", type=float)
    payment.add_argument("currency")
    payment.add_argument("period_from", type=_date)
    payment.add_argument("period_to", type=_date)
    payment.add_argument("--paid-at", type=_date, default=None)
    commands.add_parser("refund", help="report a refund").add_argument("payment_id", type=int)
    link = commands.add_parser("payment-link", help="a link where the salon pays")
    link.add_argument("salon_id", type=salon_id_argument)
    link.add_argument("--discount", type=int, default=None)
    commands.add_parser("tariffs", help="the app's tariffs")
    channel = commands.add_parser("channel", help="announce a channel as available or not")
    channel.add_argument("salon_id", type=salon_id_argument)
    channel.add_argument("channel", choices=["whatsapp", "sms"])
    channel.add_argument("state", choices=["on", "off"])
    return parser


def run(args: argparse.Namespace, client: YClientsClient) -> Any:
    if args.command == "status":
        return {"salon_id": args.salon_id, "status": client.app_status(args.salon_id)}
    if args.command == "salons":
        return client.installed_salons(args.page, args.count)
    if args.command == "uninstall":
        client.uninstall(args.salon_id)
        return {"salon_id": args.salon_id, "uninstalled": True}
    if args.command == "payment":
        paid_at = args.paid_at or datetime.now().replace(microsecond=0)
        payment_id = client.report_payment(args.salon_id, args.amount, args.currency, paid_at,
                                           args.period_from, args.period_to)
        return {"payment_id": payment_id}
    if args.command == "refund":
        client.refund_payment(args.payment_id)
        return {"payment_id": args.payment_id, "refunded": True}
    if args.command == "payment-link":
        return {"url": client.payment_link(args.salon_id, args.discount)}
    if args.command == "tariffs":
        return client.tariffs()
    client.update_channel(args.salon_id, args.channel, args.state == "on")
    return {"salon_id": args.salon_id, "channel": args.channel, "available": args.state == "on"}


class PartnerApiSettings(ComponentSettings):
    """What partner operations need."""

    yclients_base_url: YClientsBaseUrl
    yclients_app_id: YClientsAppId
    yclients_partner_token: PartnerToken


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = PartnerApiSettings.load()
        client = YClientsClient(settings.yclients_base_url, settings.yclients_partner_token.reveal(),
                                settings.yclients_app_id)
    except SettingsError as exc:
        print(f"ops.yclients: {exc}", file=sys.stderr)
        return 2
    try:
        result = run(args, client)
    except PartnerApiError as exc:
        print(f"ops.yclients: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
