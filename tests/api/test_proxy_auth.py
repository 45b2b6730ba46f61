"""A site's reverse proxy names the user (``trusted_proxies``, ``proxy_user_header``).

The header is taken only when the TCP peer is a configured proxy (the TestClient's client
address stands for the peer); from anyone else it is ignored, and a request with nothing else
is refused 401 saying why. A proxied user reads like a JWT user (their own jobs; admins all)
but never posts events.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from jobenergy.core.errors import ConfigError

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
PROXY = ("10.9.8.7", 40000)
STRANGER = ("192.0.2.1", 40000)


@pytest.fixture
def sqlite_url(_sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "proxy.db"
    shutil.copyfile(_sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def tokens(sqlite_url: str) -> dict[str, str]:
    """A hooks token, n1's agent token and an admin token of cluster c1."""
    from jobenergy.collector import tokens as store

    engine = create_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            return {"hooks": store.issue(conn, "hooks", "c1", None, "test"),
                    "agent": store.issue(conn, "agent", "c1", "n1", "test"),
                    "admin": store.issue(conn, "admin", "c1", None, "test")}
    finally:
        engine.dispose()


@pytest.fixture
def make_proxied(sqlite_url: str) -> Iterator[Callable[..., Any]]:
    """Return ``make(client_addr, **settings) -> TestClient`` (token auth, proxy 10.9.8.0/24)."""
    from fastapi.testclient import TestClient

    from jobenergy.api.app import create_app
    from jobenergy.collector.settings import ServerSettings

    clients: list[Any] = []

    def factory(client: tuple[str, int], **overrides: Any) -> Any:
        values: dict[str, Any] = {
            "db_url": sqlite_url, "auth": "token", "migrate": False, "sacctmgr": "",
            "rate_limit_per_s": 0, "trusted_proxies": "10.9.8.0/24, fd00::1",
            "admins": "carol", **overrides}
        test_client = TestClient(create_app(ServerSettings(**values)), client=client)
        test_client.__enter__()
        clients.append(test_client)
        return test_client

    yield factory
    for test_client in clients:
        test_client.__exit__(None, None, None)


def test_the_proxys_user_header_is_an_identity(make_proxied):
    proxy = make_proxied(PROXY)
    response = proxy.get("/api/v1/whoami", headers={"X-Remote-User": "alice"})
    assert response.status_code == 200, response.text
    me = response.json()
    assert (me["mechanism"], me["user"], me["identity"]) == ("proxy", "alice", "proxy:alice")
    assert not me["reads_all"] and not me["posts_events"] and not me["admin"]
    # An admin by the server's admins list (as from Slurm's AdminLevel) reads all.
    assert proxy.get("/api/v1/whoami", headers={"X-Remote-User": "carol"}).json()["admin"]


@pytest.mark.parametrize("peer", [("fd00::1", 1), ("::ffff:10.9.8.200", 1)])
def test_proxies_by_ipv6_address_and_ipv4_mapped(make_proxied, peer):
    response = make_proxied(peer).get("/api/v1/whoami", headers={"X-Remote-User": "alice"})
    assert response.status_code == 200, response.text
    assert response.json()["user"] == "alice"


def test_the_header_from_anyone_else_is_ignored(make_proxied, tokens):
    stranger = make_proxied(STRANGER)
    response = stranger.get("/api/v1/whoami", headers={"X-Remote-User": "alice"})
    assert response.status_code == 401
    assert response.json()["detail"].startswith(
        "X-Remote-User is accepted only from a trusted proxy, not from 192.0.2.1")
    # With a credential of its own, the request is that credential's, never the header's.
    response = stranger.get("/api/v1/whoami", headers={
        "X-Remote-User": "carol", "Authorization": f"Bearer {tokens['hooks']}"})
    assert response.status_code == 200
    assert response.json()["mechanism"] == "token"
    # Nothing configured: no peer is a proxy.
    unconfigured = make_proxied(PROXY, trusted_proxies="")
    assert unconfigured.get("/api/v1/whoami", headers={"X-Remote-User": "alice"}
                            ).status_code == 401


def test_a_proxy_request_without_the_header_uses_its_credential(make_proxied, tokens):
    proxy = make_proxied(PROXY)
    response = proxy.get("/api/v1/whoami",
                         headers={"Authorization": f"Bearer {tokens['admin']}"})
    assert response.json()["mechanism"] == "token"
    assert proxy.get("/api/v1/whoami").status_code == 401


def test_the_header_name_is_configurable(make_proxied):
    proxy = make_proxied(PROXY, proxy_user_header="X-Forwarded-User")
    assert proxy.get("/api/v1/whoami", headers={"X-Remote-User": "alice"}).status_code == 401
    response = proxy.get("/api/v1/whoami", headers={"X-Forwarded-User": "alice"})
    assert response.json()["user"] == "alice"


@pytest.mark.parametrize("name", ["alice bob", "../etc", "-rf", "a" * 300, "al\tice",
                                  # str.strip() would have made these "carol", an admin:
                                  b"\xa0carol", b"carol\x1c", b"\x0bcarol", b"carol\x85"])
def test_a_header_that_is_no_user_name_is_refused(make_proxied, name):
    response = make_proxied(PROXY).get("/api/v1/whoami", headers=[("X-Remote-User", name)])
    assert response.status_code == 401
    assert "is not a user name" in response.json()["detail"]


@pytest.mark.parametrize("value", ["\xa0carol", "carol\x85", "\u2003carol", "carol\x1c"])
def test_only_blanks_and_tabs_are_trimmed(value):
    """What a server reads from the wire (latin-1), which the TestClient re-encodes as UTF-8:
    str.strip() would trim these non-ASCII spaces and controls to "carol"."""
    from sqlalchemy.orm import sessionmaker

    from jobenergy.api.auth import Authenticator, AuthError
    from jobenergy.collector.settings import ServerSettings

    settings = ServerSettings(auth="token", trusted_proxies="10.9.8.0/24")
    authenticator = Authenticator(settings, settings.auth, sessionmaker())
    with pytest.raises(AuthError, match="is not a user name"):
        authenticator.authenticate("GET", "/api/v1/whoami", {"x-remote-user": value}, b"",
                                   PROXY[0])
    caller = authenticator.authenticate("GET", "/api/v1/whoami",
                                        {"x-remote-user": " \tcarol\t "}, b"", PROXY[0])
    assert (caller.mechanism, caller.user) == ("proxy", "carol")


@pytest.mark.parametrize("value", ["", " ", "(null)"])
def test_an_empty_or_null_header_is_no_header(make_proxied, tokens, value):
    """Apache passes an unauthenticated request's REMOTE_USER on as "(null)"."""
    proxy = make_proxied(PROXY)
    response = proxy.get("/api/v1/whoami", headers={
        "X-Remote-User": value, "Authorization": f"Bearer {tokens['admin']}"})
    assert response.status_code == 200, response.text
    assert response.json()["mechanism"] == "token"
    response = proxy.get("/api/v1/whoami", headers={"X-Remote-User": value})
    assert response.status_code == 401
    assert response.json()["detail"].startswith("authentication required")


@pytest.mark.parametrize("values", [("alice", "carol"), ("carol", "alice"), ("", "carol")])
def test_a_repeated_header_is_refused(make_proxied, values):
    """A proxy that adds its header to the client's instead of replacing it: neither counts."""
    response = make_proxied(PROXY).get(
        "/api/v1/whoami", headers=[("X-Remote-User", v) for v in values])
    assert response.status_code == 401, response.text
    assert response.json()["detail"].startswith("more than one X-Remote-User header")


@pytest.mark.parametrize("name", ["root", " root\t"])
def test_root_is_no_web_identity(make_proxied, name):
    response = make_proxied(PROXY).get("/api/v1/whoami", headers={"X-Remote-User": name})
    assert response.status_code == 401
    assert "whose uid is 0" in response.json()["detail"]


def test_a_proxied_name_of_uid_0_gets_no_roots_rights():
    """Behind api/auth.py's refusal, access.py gives a proxied uid 0 nothing of root's."""
    from jobenergy.api.access import Roles
    from jobenergy.api.auth import Caller
    from jobenergy.collector.settings import ServerSettings

    roles = Roles(ServerSettings(sacctmgr="", admins="carol"))
    for user in ("root", "toor"):
        access = roles.access(Caller(mechanism="proxy", user=user, uid=0))
        assert not (access.admin or access.service or access.reads_all), user
    assert roles.access(Caller(mechanism="proxy", user="carol", uid=None)).admin
    assert roles.access(Caller(mechanism="jwt", user="root", uid=0)).admin


def test_proxied_users_read_their_own_jobs_and_never_post_events(make_proxied, tokens,
                                                                  make_batch):
    proxy = make_proxied(PROXY)
    hooks = {"Authorization": f"Bearer {tokens['hooks']}"}
    for job_id, user in (("700", "alice"), ("701", "bob")):
        response = proxy.post("/api/v1/jobs/events", headers=hooks, json={
            "cluster": "c1", "job_id": job_id, "event": "start", "time": T0.isoformat(),
            "user": user, "account": f"acct-{user}", "nodes": ["n1"]})
        assert response.status_code == 200, response.text
    batch = make_batch(node="n1", jobs={"700": 1, "701": 1}, uid=None)
    response = proxy.post("/api/v1/batches", content=batch.model_dump_json(),
                          headers={"Authorization": f"Bearer {tokens['agent']}",
                                   "content-type": "application/json"})
    assert response.status_code == 200, response.text
    alice = {"X-Remote-User": "alice"}
    jobs = proxy.get("/api/v1/jobs", headers=alice).json()["jobs"]
    assert [job["job_id"] for job in jobs] == ["700"]
    assert proxy.get("/api/v1/jobs/701", headers=alice).status_code == 403
    assert proxy.get("/api/v1/nodes", headers=alice).status_code == 403
    # Even an admin, named by the proxy, reads all but posts nothing: events stay with the
    # hooks (the request is the proxy site's own page's: same-origin).
    carol = {"X-Remote-User": "carol", "Sec-Fetch-Site": "same-origin"}
    assert len(proxy.get("/api/v1/jobs", headers=carol).json()["jobs"]) == 2
    response = proxy.post("/api/v1/jobs/events", headers=carol, json={
        "cluster": "c1", "job_id": "702", "event": "start", "time": T0.isoformat()})
    assert response.status_code == 403


def test_settings_normalise_and_check_the_proxy_list(monkeypatch):
    from jobenergy.collector.settings import ServerSettings

    settings = ServerSettings(trusted_proxies="10.0.0.0/8, 192.0.2.1,fd00::/64")
    assert settings.trusted_proxies == ("10.0.0.0/8", "192.0.2.1/32", "fd00::/64")
    assert ServerSettings().trusted_proxies == ()
    assert ServerSettings().proxy_user_header == "X-Remote-User"
    monkeypatch.setenv("JOBENERGY_SERVER_TRUSTED_PROXIES", "127.0.0.1")
    assert ServerSettings.load().trusted_proxies == ("127.0.0.1/32",)
    with pytest.raises(ConfigError, match="trusted proxy 'proxy.example' is not an address"):
        ServerSettings.load(trusted_proxies="proxy.example")
    with pytest.raises(ConfigError, match="proxy_user_header"):
        ServerSettings.load(proxy_user_header="X Remote: User")


# -- Cross-site requests: the proxy's header is ambient (the browser's SSO session) ------------

#: What ``<form method=POST enctype="text/plain">`` on another site sends to us as CSV.
FORM_CSV = "time,pue,z\n2026-01-01T00:00:00Z,3.0,\n2026-07-01T00:00:00Z,,=\r\n"


def _audit_actions(proxy: Any) -> list[tuple[str, str]]:
    response = proxy.get("/api/v1/audit", headers={"X-Remote-User": "carol"})
    assert response.status_code == 200, response.text
    return [(row["actor"], row["action"]) for row in response.json()]


@pytest.mark.parametrize("browser", [
    {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
    {"Sec-Fetch-Site": "same-site", "Origin": "https://other.example.org"},
    {"Origin": "https://evil.example"},  # a browser without Fetch Metadata
    {"Origin": "null"},  # a sandboxed frame
    {},  # neither: no proof
    # Sec-Fetch-Site decides when present, whatever Origin says
    {"Sec-Fetch-Site": "cross-site", "Origin": "http://testserver"},
])
def test_a_cross_site_write_as_a_proxied_admin_is_refused(make_proxied, browser):
    proxy = make_proxied(PROXY)
    before = _audit_actions(proxy)
    carol = {"X-Remote-User": "carol", **browser}
    writes = [
        proxy.post("/api/v1/clusters/c1/pue/series", content=FORM_CSV,
                   headers={**carol, "Content-Type": "text/csv"}),
        proxy.put("/api/v1/clusters/c1/pue", json={"pue": 1.5}, headers=carol),
        proxy.delete("/api/v1/clusters/c1/pue/series", headers=carol),
    ]
    for response in writes:
        assert response.status_code == 403, response.text
        assert response.json()["detail"].startswith(
            "proxy:carol: a ") and "possible cross-site request" in response.json()["detail"]
    assert _audit_actions(proxy) == before
    # Reads stay open to the same browser: nothing changes.
    assert proxy.get("/api/v1/clusters/c1", headers=carol).status_code == 200


@pytest.mark.parametrize("page", [
    {"Sec-Fetch-Site": "same-origin", "Origin": "https://jobenergy.example.org"},
    {"Origin": "http://testserver"},  # Origin's host is the request's Host
    {"Origin": "https://TestServer"},  # a TLS proxy in front: the scheme differs
])
def test_a_write_from_the_servers_own_pages_goes_through(make_proxied, page):
    proxy = make_proxied(PROXY)
    carol = {"X-Remote-User": "carol", **page}
    response = proxy.put("/api/v1/clusters/c1/pue", json={"pue": 1.5}, headers=carol)
    assert response.status_code == 200, response.text
    response = proxy.post("/api/v1/clusters/c1/pue/series", headers=carol,
                          content="time,pue\n2026-01-01T00:00:00Z,1.4\n")
    assert response.status_code == 415  # no Content-Type: see below
    response = proxy.post("/api/v1/clusters/c1/pue/series",
                          content="time,pue\n2026-01-01T00:00:00Z,1.4\n",
                          headers={**carol, "Content-Type": "text/csv"})
    assert response.status_code == 200, response.text
    assert ("proxy:carol", "pue.series.import") in _audit_actions(proxy)


def test_a_demo_server_refuses_what_a_browser_calls_cross_site(sqlite_url, make_client):
    """--auth none (loopback demos): a page elsewhere must not post through the browser; its
    agents and hooks, which send no Origin, still do."""
    from jobenergy.collector.settings import ServerSettings

    demo = make_client(ServerSettings(db_url=sqlite_url, auth="none", migrate=False))
    cross = demo.put("/api/v1/clusters/c1/pue", json={"pue": 1.5},
                     headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"})
    assert cross.status_code == 403, cross.text
    assert "to a server without authentication must come from this server's pages" in (
        cross.json()["detail"])
    assert demo.put("/api/v1/clusters/c1/pue", json={"pue": 1.5},
                    headers={"Origin": "https://evil.example"}).status_code == 403
    for same in ({}, {"Sec-Fetch-Site": "same-origin"}, {"Origin": "http://testserver"}):
        response = demo.put("/api/v1/clusters/c1/pue", json={"pue": 1.5}, headers=same)
        assert response.status_code == 200, (same, response.text)


def test_credentials_of_their_own_need_no_origin_proof(make_proxied, tokens):
    """MUNGE, JWT and tokens are never added by a browser: no CSRF, no Fetch Metadata."""
    proxy = make_proxied(PROXY)
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    response = proxy.put("/api/v1/clusters/c1/pue", json={"pue": 1.5}, headers=admin)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("content_type", "said"), [
    ("text/plain", "unsupported Content-Type 'text/plain'"),
    ("text/plain; charset=utf-8", "unsupported Content-Type 'text/plain'"),
    ("application/x-www-form-urlencoded",
     "unsupported Content-Type 'application/x-www-form-urlencoded'"),
    ("multipart/form-data; boundary=x", "unsupported Content-Type 'multipart/form-data'"),
    (None, "missing Content-Type"),
])
def test_a_series_import_needs_csv_or_json_declared(make_proxied, tokens, content_type, said):
    """The types a form can send cross-site without a preflight are not CSV (415)."""
    proxy = make_proxied(PROXY)
    headers = {"Authorization": f"Bearer {tokens['admin']}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = proxy.post("/api/v1/clusters/c1/pue/series", content=FORM_CSV, headers=headers)
    assert response.status_code == 415, response.text
    assert response.json()["detail"] == (
        f"{said}: send text/csv (or application/csv) or application/json")
    response = proxy.post("/api/v1/clusters/c1/pue/series",
                          content="time,pue\n2026-01-01T00:00:00Z,1.4\n",
                          headers={**headers, "Content-Type": "text/csv"})
    assert response.status_code == 200, response.text


def test_a_proxied_json_body_needs_its_content_type(make_proxied, tokens):
    """``fetch(url, {body: new Blob([json])})`` sends no Content-Type and no preflight."""
    proxy = make_proxied(PROXY)
    carol = {"X-Remote-User": "carol", "Sec-Fetch-Site": "same-origin"}
    response = proxy.put("/api/v1/clusters/c1/pue", content=b'{"pue": 1.5}', headers=carol)
    assert response.status_code == 415, response.text
    assert response.json()["detail"] == "missing Content-Type: send application/json"
    response = proxy.put("/api/v1/clusters/c1/pue", content=b'{"pue": 1.5}', headers={
        **carol, "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
    # A credential of its own (curl --data-binary): the body is taken as JSON, as before.
    response = proxy.put("/api/v1/clusters/c1/pue", content=b'{"pue": 1.5}',
                         headers={"Authorization": f"Bearer {tokens['admin']}"})
    assert response.status_code == 200, response.text


# -- Settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "says"), [
    ("10.0.0.6/0", "has host bits set"),  # meant 10.0.0.6, would have trusted everyone
    ("10.0.0.6/24", "has host bits set"),
    ("0.0.0.0/0", "wider than /8"),
    ("::/0", "wider than /16"),
    ("10.0.0.0/7", "wider than /8"),
])
def test_a_proxy_network_that_trusts_strangers_is_refused(value, says):
    from jobenergy.collector.settings import ServerSettings

    with pytest.raises(ConfigError, match=f"trusted proxy '{value}' .*{says}"):
        ServerSettings.load(trusted_proxies=value)


def test_a_loopback_proxy_is_logged(make_proxied, caplog):
    caplog.set_level("WARNING", logger="jobenergy.api.auth")
    make_proxied(PROXY, trusted_proxies="127.0.0.1, 10.9.8.0/24")
    warnings = [r.getMessage() for r in caplog.records if r.name == "jobenergy.api.auth"]
    assert any("127.0.0.1/32 (loopback)" in w and "X-Remote-User" in w for w in warnings)


def test_the_haproxy_example_drops_the_clients_user_header():
    text = (Path(__file__).resolve().parents[2] / "deploy/haproxy/jobenergy.cfg.example"
            ).read_text()
    assert "\n    http-request del-header X-Remote-User\n" in text
