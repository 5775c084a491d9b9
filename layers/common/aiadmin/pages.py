"""Owner-facing HTML bits shared by the HTTP handlers: friendly error pages (in the owner's
language) and security headers."""

from __future__ import annotations

import html
import secrets
from collections.abc import Sequence

from aiadmin.i18n import t

_ERROR_PAGE = """<!doctype html>
<html lang="{lang}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style nonce="{nonce}">
body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;color:#1d1d1f;line-height:1.45}}
h1{{font-size:1.4rem}}
a{{display:inline-block;margin-top:.5rem;padding:.7rem 1.2rem;border-radius:10px;background:#0b6b50;color:#fff;
text-decoration:none}}
a:focus-visible{{outline:3px solid #1d1d1f;outline-offset:2px}}</style></head>
<body><main><h1>{title}</h1><p>{message}</p>
<p>{footer}</p>{back}</main></body></html>
"""


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


# Who may show our pages in an iframe: YClients' web app (yclients.com and its subdomains) and
# Altegio's, YClients' international brand on the same platform (app.alteg.io and its
# subdomains). Nobody else, not even our own origin; the local stack adds its test origins
# (setting PAGE_LOCAL_FRAME_ANCESTORS, refused in AWS).
FRAME_ANCESTORS = ("https://yclients.com", "https://*.yclients.com", "https://app.alteg.io", "https://*.alteg.io")
# Browsers only honour HSTS over HTTPS (API Gateway's case); over the local stack's plain HTTP
# they ignore it. One year; subdomains of our host too.
HSTS = "max-age=31536000; includeSubDomains"


def security_headers(nonce: str, connect_src: str = "'none'",
                     extra_frame_ancestors: Sequence[str] = ()) -> dict[str, str]:
    ancestors = " ".join((*FRAME_ANCESTORS, *extra_frame_ancestors))
    csp = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        f"img-src data:; connect-src {connect_src}; base-uri 'none'; form-action 'none'; "
        f"frame-ancestors {ancestors}"
    )
    return {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": csp,
        "Strict-Transport-Security": HSTS,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def error_page(language: str, key: str, back_url: str | None = None, extra_frame_ancestors: Sequence[str] = (),
               **params: object) -> tuple[str, dict[str, str]]:
    """The page for the refusal `error.<key>` (its `.title` and `.message`, or a `message_key`
    param naming another message) in `language`, with a way back to YClients."""
    nonce = new_nonce()
    message_key = str(params.pop("message_key", f"error.{key}.message"))
    back = (f'<a href="{html.escape(back_url)}" target="_top">{html.escape(t(language, "page.back"))}</a>'
            if back_url else "")
    body = _ERROR_PAGE.format(lang=language, title=html.escape(t(language, f"error.{key}.title")),
                              message=html.escape(t(language, message_key, **params)),
                              footer=html.escape(t(language, "error.footer")), back=back, nonce=nonce)
    return body, security_headers(nonce, extra_frame_ancestors=extra_frame_ancestors)
