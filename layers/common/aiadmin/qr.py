"""QR rendering for the onboarding page (SVG, drawn by the `qrcode` library)."""

from __future__ import annotations


def render_svg(data: str) -> str:
    """An SVG document whose QR a standard decoder reads back as exactly `data`.

    Error correction M and a 4-module quiet zone, as phone scanners expect; the path image
    keeps the document small (one <path>), which matters since it is pushed on every code."""
    # Imported here, not with the module: only a state message showing a QR draws one, and the
    # handlers that import this module (through aiadmin.onboarding) mostly never do (cold start).
    import qrcode
    import qrcode.image.svg

    code = qrcode.QRCode(
        error_correction=qrcode.constants.ERROR_CORRECT_M,
        box_size=10,
        border=4,
        image_factory=qrcode.image.svg.SvgPathFillImage,
    )
    code.add_data(data)
    code.make(fit=True)
    return code.make_image().to_string(encoding="unicode")
