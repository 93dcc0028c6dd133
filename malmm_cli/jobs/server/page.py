"""The page at `/`: a person picks or drops a video, watches it upload (POST /v1/videos), then has it
captioned or asks about it (POST /v1/chat/completions with `malmm://videos/ID`), and reads the
answer beside a timeline of segments whose times seek the page's own player.

Plain HTML, CSS and JavaScript shipped in the package (page/), no build step, nothing fetched from
elsewhere: a Content-Security-Policy as strict as the HTML report's lets the page load only its own
script and styles, talk only to this server, play only the blob: URL of the file it was given, and
show only the data:/blob: pictures it draws itself. The report's look is its STYLE, served as
report.css, not copied. The page and its files need no key: they hold nothing but code, and the
page asks for the key (when the server has one) before it calls the API.

Thumbnails are drawn by the page, not returned by the server: the picked file is already in the
browser, so a canvas draws each segment's first frame from it without a byte going back and forth,
and the API stays what the command line answers (the server would have to decode the video again,
or keep pictures per upload, for no better picture).
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from malmm_cli.output.html_report import STYLE

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; media-src blob:; "
    "img-src data: blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
FILES = {  # what the page is made of: its URL, the packaged file, the type it is served as
    "/": ("index.html", "text/html; charset=utf-8"),
    "/page/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/page/style.css": ("style.css", "text/css; charset=utf-8"),
}


def packaged(name: str) -> bytes:
    return resources.files("malmm_cli.jobs.server").joinpath("page", name).read_bytes()


def page_routes() -> APIRouter:
    """`/` and its script and styles (read once, when the application is made), unguarded."""
    router = APIRouter()
    bodies = {url: (packaged(name), kind) for url, (name, kind) in FILES.items()}
    bodies["/page/report.css"] = (STYLE.encode(), "text/css; charset=utf-8")

    def serve(url: str) -> None:
        body, kind = bodies[url]

        async def file() -> Response:
            return Response(body, media_type=kind, headers=HEADERS)

        router.add_api_route(url, file, methods=["GET"], include_in_schema=False)

    for url in bodies:
        serve(url)
    return router
