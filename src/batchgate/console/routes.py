"""The web console: static files served at `/ui` (no build step, nothing loaded from elsewhere),
its JSON API at `/ui/api`, and `index.html` for every other `/ui/...` path (the console routes
in the browser)."""

from __future__ import annotations

from pathlib import Path

from starlette.convertors import PathConvertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from batchgate.console import api as console

STATIC = Path(__file__).parent / "static"


class AnyPath(PathConvertor):
    """Starlette's `path` is `.*`, which stops at a newline: `/ui/a%0Ab` then fell through to a 404."""

    regex = r"[\s\S]*"


register_url_convertor("anypath", AnyPath())
# Nothing but this origin: no CDN, no inline script, no framing by other sites.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class SecurityHeaders:
    """Adds the console's Content-Security-Policy (and friends) to every `/ui` response."""

    def __init__(self, app: Router) -> None:
        self.app = app

    @property
    def routes(self) -> list[BaseRoute]:  # what Mount.routes shows: the console's own routes
        return self.app.routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


async def index(request: Request) -> FileResponse:
    # Mount's own pattern stops at a newline too: such an /ui/api/… or /ui/static/… path lands here,
    # and is answered as what it is (no such route, in the JSON envelope), not with the page.
    if request.scope["path"].startswith(("/ui/api/", "/ui/static/")):
        raise HTTPException(404)
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def routes() -> list[BaseRoute]:
    """Everything under `/ui/` (the router redirects a bare `/ui` there); /openapi.json describes
    the console's API and its page."""
    console_app = Router(
        routes=[
            Mount("/api", routes=console.routes()),
            Mount("/static", app=StaticFiles(directory=STATIC)),
            Route("/{path:anypath}", index, methods=["GET", "HEAD"]),
        ]
    )
    return [Mount("/ui", app=SecurityHeaders(console_app))]
