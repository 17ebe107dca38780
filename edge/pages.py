"""Static publisher-facing files served by the edge: the tag and a demo publisher page that uses it.

The tag's source opens with a block comment documenting its attributes for publishers; it is stripped when
served, because every page view downloads the tag and nobody reads it there.
"""

from __future__ import annotations

import re
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

STATIC = Path(__file__).parent / "static"
_TAG = re.sub(r"\A/\*.*?\*/\s*", "", (STATIC / "tag.js").read_text(), count=1, flags=re.DOTALL)


async def tag_js(request: Request) -> Response:
    return Response(_TAG, media_type="application/javascript",
                    headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"})


async def demo_publisher(request: Request) -> Response:
    return HTMLResponse((STATIC / "publisher.html").read_text())


PAGE_ROUTES = [
    Route("/tag.js", tag_js, methods=["GET"]),
    Route("/demo/publisher", demo_publisher, methods=["GET"]),
]
