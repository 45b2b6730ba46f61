"""The pages as the server serves them: headers, no inline or external scripts, /docs offline.

What the pages do in a browser is in tests/web/; here, what any client gets.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from jobenergy.api.web.pages import PAGES, STATIC_DIR

OWN_JS = sorted((STATIC_DIR / "js").glob("*.js"))


@pytest.fixture
def web(_sqlite_template: Path, tmp_path: Path, make_client: Any) -> Any:
    from jobenergy.collector.settings import ServerSettings

    path = tmp_path / "web.db"
    shutil.copyfile(_sqlite_template, path)
    return make_client(ServerSettings(db_url=f"sqlite:///{path}", auth="none", migrate=False))


def csp(response: Any) -> dict[str, str]:
    policy = response.headers["content-security-policy"]
    return {d.split()[0]: d.partition(" ")[2] for d in (p.strip() for p in policy.split(";"))}


@pytest.mark.parametrize("path", sorted(PAGES))
def test_pages_carry_a_strict_policy(web, path):
    response = web.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = csp(response)
    assert policy["default-src"] == "'self'"
    assert policy["script-src"] == "'self'"  # no inline script, no eval
    assert policy["style-src"] == "'self'"  # uPlot styles through the CSSOM only
    assert policy["frame-ancestors"] == "'none'"
    assert policy["connect-src"] == "'self'"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert web.head(path).status_code == 200


@pytest.mark.parametrize("name", sorted(set(PAGES.values())))
def test_pages_load_only_their_own_files(name):
    html = (STATIC_DIR / name).read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script"
    assert " style=" not in html and "<style" not in html, "inline style"
    assert not re.search(r"(src|href)=\"(?!/|data:)", html), "a link off the server"
    assert "//" not in re.sub(r"<!--.*?-->", "", html).replace("http-equiv", "")


@pytest.mark.parametrize("path", OWN_JS, ids=lambda p: p.name)
def test_scripts_never_write_markup(path):
    """Users' text reaches the page as text: no innerHTML and friends in our scripts."""
    code = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)  # comments may say it
    code = re.sub(r"^\s*//.*$", "", code, flags=re.M)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "srcdoc"):
        assert sink not in code, f"{path.name} uses {sink}"


def test_static_files_are_served_with_their_types(web):
    js = web.get("/static/js/common.js")
    assert js.status_code == 200
    assert js.headers["content-type"].split(";")[0] in ("text/javascript",
                                                        "application/javascript")
    assert js.headers["x-content-type-options"] == "nosniff"
    assert web.get("/static/vendor/uplot/uPlot.iife.min.js").status_code == 200
    assert web.get("/static/../pages.py").status_code == 404
    assert web.get("/static/%2e%2e/pages.py").status_code == 404


def test_docs_come_from_the_vendored_swagger_ui(web):
    response = web.get("/docs")
    assert response.status_code == 200
    html = response.text
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in html
    assert "/static/vendor/swagger-ui/swagger-ui.css" in html
    assert "cdn." not in html and "https://" not in html
    # Its one inline script is allowed by its hash, nothing else inline is.
    inline = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert len(inline) == 1
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert csp(response)["script-src"] == f"'self' 'sha256-{digest}'"
    assert csp(response)["frame-ancestors"] == "'none'"
    for path in ("/static/vendor/swagger-ui/swagger-ui-bundle.js",
                 "/static/vendor/swagger-ui/swagger-ui.css",
                 "/static/vendor/swagger-ui/favicon-32x32.png"):
        assert web.get(path).status_code == 200, path
    assert web.get("/redoc").status_code == 404


def test_api_answers_are_not_documents(web):
    response = web.get("/api/v1/whoami")
    assert response.status_code == 200
    assert response.headers["x-content-type-options"] == "nosniff"
    assert csp(response)["default-src"] == "'none'"
    # Refusals before any route get them too.
    refused = web.get("/api/v1/jobs?cluster=%00")
    assert refused.status_code == 400
    assert refused.headers["x-content-type-options"] == "nosniff"


def test_api_answers_are_never_cached(web, make_client, tmp_path):
    """Who may read what: no browser or shared cache keeps it for the next user."""
    from jobenergy.collector.settings import ServerSettings

    for path in ("/api/v1/whoami", "/api/v1/jobs", "/api/v1/jobs?cluster=%00"):
        assert web.get(path).headers["cache-control"] == "no-store", path
    secured = make_client(ServerSettings(db_url=web.app.state.settings.db_url, auth="token",
                                         migrate=False))
    refused = secured.get("/api/v1/jobs")
    assert refused.status_code == 401 and refused.headers["cache-control"] == "no-store"
    # The pages are static: revalidated, not forbidden.
    assert web.get("/").headers["cache-control"] == "no-cache"


def test_the_pages_scripts_only_read():
    """The pages send GETs only (JE.api): no write of theirs needs a Content-Type or meets
    the proxy's same-origin check (api/authenticate.py)."""
    for script in OWN_JS:
        text = script.read_text()
        assert not re.search(r"method\s*:|XMLHttpRequest|sendBeacon|\.submit\(", text), (
            script.name)
