"""The advertiser dashboard: a static single page at ``/`` that talks to the same public API with the
advertiser's token (so it can do nothing the API would not allow)."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


async def dashboard(request: Request) -> Response:
    return HTMLResponse((STATIC / "dashboard.html").read_text())


DASHBOARD_ROUTES = [
    Route("/", dashboard, methods=["GET"]),
    Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
]
