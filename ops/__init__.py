"""Ops tools: `python -m ops` (one salon, doctor) and `python -m ops.yclients` (partner operations)."""

from __future__ import annotations

import argparse

from aiadmin.models import parse_salon_id


def salon_id_argument(text: str) -> int:
    """An argparse type: a salon id read as the service reads one, so ops cannot act on `٣` or
    `１２３` (argparse's `int` takes them) as a salon the service would never see."""
    salon_id = parse_salon_id(text)
    if salon_id is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a salon id (ASCII digits, 0 < id < 2**53)")
    return salon_id
