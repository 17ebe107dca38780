"""The advertiser dashboard: a static single page at ``/`` (HTML, CSS and JS under ``/static``) that talks to the
same public API with the advertiser's token, so it can do nothing the API would not allow.

The page is served with a strict Content-Security-Policy: scripts, styles and API calls from this origin only,
no inline script, no framing. Campaign names and creative texts are advertiser input; the page writes them
with textContent, and the policy is the second wall should that ever slip.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"

# img-src allows https: because the creatives table shows the advertiser's own images as thumbnails.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' https: data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


async def dashboard(request: Request) -> Response:
    return HTMLResponse((STATIC / "dashboard.html").read_text(), headers=SECURITY_HEADERS)


DASHBOARD_ROUTES = [
    Route("/", dashboard, methods=["GET"]),
    Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
]
