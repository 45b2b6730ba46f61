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


@pytest.mark.parametrize("name", ["", "alice bob", "../etc", "-rf", "a" * 300, "al\tice"])
def test_a_header_that_is_no_user_name_is_refused(make_proxied, name):
    response = make_proxied(PROXY).get("/api/v1/whoami", headers={"X-Remote-User": name})
    assert response.status_code == 401
    assert "is not a user name" in response.json()["detail"]


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
    # Even root, named by the proxy, reads all but posts nothing: events stay with the hooks.
    root = {"X-Remote-User": "root"}
    assert len(proxy.get("/api/v1/jobs", headers=root).json()["jobs"]) == 2
    response = proxy.post("/api/v1/jobs/events", headers=root, json={
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
