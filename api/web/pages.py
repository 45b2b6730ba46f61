"""The pages (``/``, ``/job``, ``/leaderboards``, ``/usage``, ``/budgets``, ``/cluster``),
``/static``, ``/docs`` from the vendored Swagger UI, and the security headers of every answer.

The pages are static files: their scripts read the API with the credentials the user signed
in with (or none, on a demo server with ``--auth none``), so who sees what is the API's read
side, unchanged. They carry no data and are open, like ``/docs``.

Content-Security-Policy: scripts only from this server and never inline (the pages' JS lives
in ``static/js/``), so data injected into a page by mistake could not run. Styles too: uPlot
sets its styles through the CSSOM, which ``style-src 'self'`` allows. Swagger UI's page has
one inline script (FastAPI's ``get_swagger_ui_html``): it is allowed by its hash, nothing
else inline is.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).with_name("static")
#: Page path → its HTML file under ``static/``.
PAGES = {
    "/": "index.html",
    "/job": "job.html",
    "/leaderboards": "leaderboards.html",
    "/usage": "usage.html",
    "/budgets": "budgets.html",
    "/cluster": "cluster.html",
}
SWAGGER = "/static/vendor/swagger-ui"


def _csp(script_src: str = "'self'", style_src: str = "'self'") -> str:
    return "; ".join([
        "default-src 'self'",
        f"script-src {script_src}",
        f"style-src {style_src}",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ])


#: The pages' policy: everything from this server, nothing inline, never framed.
PAGE_CSP = _csp()
#: JSON answers are never rendered as a document: nothing may load from them.
API_CSP = "default-src 'none'; frame-ancestors 'none'"


class SecurityHeaders:
    """ASGI middleware: ``nosniff`` on every answer; CSP, no framing, no referrer on pages;
    ``Cache-Control: no-store`` on ``/api/`` answers.

    API answers hold who may read what (jobs, users, accounts): no browser or shared cache
    may keep them for the next user of the machine or the proxy. A route that sets its own
    ``Content-Security-Policy`` (``/docs``) or ``Cache-Control`` keeps it.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Add the headers to the answer's start message."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        api = path.startswith("/api/")
        data = api or path == "/openapi.json"

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"content-security-policy", (API_CSP if data else PAGE_CSP).encode()),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                if api:
                    extra.append((b"cache-control", b"no-store"))
                headers += [(k, v) for k, v in extra if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _script_hashes(html: str) -> str:
    """Return the CSP sources (``'sha256-…'``) of the inline scripts of ``html``."""
    return " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in re.findall(r"<script>(.*?)</script>", html, re.S))


def docs_page(openapi_url: str, title: str) -> HTMLResponse:
    """Return Swagger UI's page over the vendored files, with its CSP."""
    page = get_swagger_ui_html(
        openapi_url=openapi_url, title=f"{title} - API",
        swagger_js_url=f"{SWAGGER}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER}/swagger-ui.css",
        swagger_favicon_url=f"{SWAGGER}/favicon-32x32.png",
        # No "try it out" links to the public validator: nothing leaves the cluster.
        swagger_ui_parameters={"validatorUrl": None},
    )
    html = bytes(page.body).decode()
    headers = {"content-security-policy": _csp(f"'self' {_script_hashes(html)}",
                                               "'self'"),
               "cache-control": "no-cache"}
    return HTMLResponse(html, headers=headers)


def _page(name: str) -> Any:
    path = STATIC_DIR / name

    def page() -> FileResponse:
        return FileResponse(path, media_type="text/html; charset=utf-8",
                            headers={"cache-control": "no-cache"})

    page.__name__ = f"page_{path.stem}"
    return page


def install(app: FastAPI) -> None:
    """Serve the pages, ``/static`` and ``/docs`` (create the app with ``docs_url=None``)."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    for route, name in PAGES.items():
        app.add_api_route(route, _page(name), methods=["GET", "HEAD"], include_in_schema=False)
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return docs_page(openapi_url, app.title)
