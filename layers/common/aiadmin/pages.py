"""Owner-facing HTML bits shared by the HTTP handlers: friendly error pages and security headers."""

from __future__ import annotations

import html
import secrets

_ERROR_PAGE = """<!doctype html>
<html lang="ru"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style nonce="{nonce}">
body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;color:#222}}
h1{{font-size:1.4rem}}</style></head>
<body><h1>{title}</h1><p>{message}</p>
<p>Откройте YClients и нажмите «Подключить» у приложения AI Admin ещё раз.</p></body></html>
"""


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


# Who may show our pages in an iframe: YClients' web app (yclients.com and its subdomains) and
# Altegio's, YClients' international brand on the same platform (app.alteg.io and its
# subdomains). Nobody else, not even our own origin.
FRAME_ANCESTORS = ("https://yclients.com", "https://*.yclients.com", "https://app.alteg.io", "https://*.alteg.io")
# Browsers only honour HSTS over HTTPS (API Gateway's case); over the local stack's plain HTTP
# they ignore it. One year; subdomains of our host too.
HSTS = "max-age=31536000; includeSubDomains"


def security_headers(nonce: str, connect_src: str = "'none'") -> dict[str, str]:
    csp = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        f"img-src data:; connect-src {connect_src}; base-uri 'none'; form-action 'none'; "
        f"frame-ancestors {' '.join(FRAME_ANCESTORS)}"
    )
    return {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": csp,
        "Strict-Transport-Security": HSTS,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def error_page(title: str, message: str) -> tuple[str, dict[str, str]]:
    nonce = new_nonce()
    body = _ERROR_PAGE.format(title=html.escape(title), message=html.escape(message), nonce=nonce)
    return body, security_headers(nonce)
