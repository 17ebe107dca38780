"""The yardstick for throughput ratios: plain Starlette endpoints that do no work, served by exactly the same
granian configuration as an edge (``adserver baseline`` shares ``cli._serve``). Benchmarks divide the edge's
throughput by this app's, measured in the same run on the same machine, so the ratio says what our code
costs rather than how fast the machine is."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello")


async def json_endpoint(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def empty(request: Request) -> Response:
    return Response(status_code=204)


def create_app() -> Starlette:
    return Starlette(routes=[Route("/hello", hello), Route("/json", json_endpoint), Route("/empty", empty)])
