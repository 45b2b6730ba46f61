"""The attacks of the authentication issue, and those found reading the auth code, as
regressions: each test is one attempt by a user (or a node, or a token) to do what it may not.

Users are real: MUNGE credentials of ``nobody`` (uid 65534) and ``daemon`` (uid 1) from the
session's private munged; root's credentials come from 127.0.0.1, mapped to nodes n1 and n2.
SQLite only: the database plays no part in who may do what (``tests/api/test_auth.py`` runs
the visibility filters on both backends).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from jobenergy.core import munge
from jobenergy.core.request_auth import BearerAuth, MungeAuth, SlurmJwtAuth, munge_payload

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
NODES = {"127.0.0.1": ["n1", "n2"]}
UIDS = {"root": 0, "daemon": 1, "nobody": 65534}
SOURCES = (("cpu", "package-0"), ("gpu", "gpu/GPU-aaaa"))


class UserMunge(httpx.Auth):
    """MUNGE credentials of a local user (``runuser -u USER -- munge``), bound to the request."""

    requires_request_body = True

    def __init__(self, user: str, socket_path: str) -> None:
        self.user = user
        self.socket_path = socket_path

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        """Add ``Authorization: MUNGE <credential>``."""
        payload = munge_payload(request.method, request.url.raw_path.decode(), request.content)
        result = subprocess.run(["runuser", "-u", self.user, "--", "munge", "-S",
                                 self.socket_path], input=payload, capture_output=True,
                                check=True, timeout=30)
        request.headers["Authorization"] = f"MUNGE {result.stdout.decode().strip()}"
        yield request


class Api:
    """A client of an authenticating server; ``who``: a local user name or an httpx.Auth."""

    def __init__(self, client: Any, socket_path: str, url: str) -> None:
        self.client = client
        self.socket_path = socket_path
        self.url = url

    def request(self, method: str, path: str, who: str | httpx.Auth | None,
                **kwargs: Any) -> httpx.Response:
        auth = who
        if isinstance(who, str):
            auth = MungeAuth(self.socket_path) if who == "root" else UserMunge(
                who, self.socket_path)
        return self.client.request(method, path, auth=auth, **kwargs)

    def get(self, path: str, who: str | httpx.Auth | None, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, who, **kwargs)

    def post_batch(self, batch: Any, who: str | httpx.Auth | None = "root") -> httpx.Response:
        return self.request("POST", "/api/v1/batches", who, content=batch.model_dump_json())

    def post_event(self, who: str | httpx.Auth | None = "root", **body: Any) -> httpx.Response:
        body.setdefault("cluster", "c1")
        body.setdefault("event", "start")
        body["time"] = body.get("time", T0).isoformat()
        return self.request("POST", "/api/v1/jobs/events", who, json=body)


@pytest.fixture
def make_api(munge_socket: str, make_client: Callable[[Any], Any], _sqlite_template: Path,
             tmp_path: Path) -> Callable[..., Api]:
    """Return ``make_api(**settings) -> Api`` on a fresh SQLite database."""
    from jobenergy.collector.settings import ServerSettings

    def factory(**overrides: Any) -> Api:
        path = tmp_path / f"attack{len(list(tmp_path.glob('attack*.db')))}.db"
        shutil.copyfile(_sqlite_template, path)
        values: dict[str, Any] = {
            "db_url": f"sqlite:///{path}", "auth": "munge", "munge_socket": munge_socket,
            "migrate": False, "pue": 1.0, "carbon_intensity_g_per_kwh": None,
            "max_body_bytes": 1024 * 1024, "nodes": NODES, "sacctmgr": "",
            "rate_limit_per_s": 0, **overrides,
        }
        return Api(make_client(ServerSettings(**values)), munge_socket, values["db_url"])

    return factory


def issue_token(url: str, *args: str) -> str:
    from typer.testing import CliRunner

    from jobenergy.cli.main import app

    result = CliRunner().invoke(app, ["auth", "token", "--cluster", "c1", *args, "--db", url])
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def slurm_jwt(key: bytes, sun: str) -> str:
    now = int(time.time())
    return jwt.encode({"sun": sun, "iat": now, "exp": now + 600}, key, algorithm="HS256")


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def post_daemons_job(api: Api, make_batch: Callable[..., Any]) -> dict[str, Any]:
    """Job 701 of daemon (account dacct, on n2) and job 700 of nobody (nacct, on n1), ended;
    return daemon's job as root reads it."""
    for job_id, user, account, node in (("700", "nobody", "nacct", "n1"),
                                        ("701", "daemon", "dacct", "n2")):
        ok(api.post_event(job_id=job_id, user=user, uid=UIDS[user], account=account,
                          partition="p", nodes=[node], tags={"model": "m" + job_id}))
        ok(api.post_batch(make_batch(node=node, jobs={job_id: 1}, uid=UIDS[user],
                                     sources=SOURCES)))
        ok(api.post_event(job_id=job_id, event="end", time=T0 + timedelta(seconds=30),
                          state="COMPLETED", exit_code=0))
    return ok(api.get("/api/v1/jobs/701", "root"))


def zero_batch(batch: Any) -> Any:
    """The same intervals with every energy zero (a valid batch that claims the span)."""
    from jobenergy.core.schema import Batch

    data = batch.model_dump(mode="json")
    for interval in data["intervals"]:
        for source in interval["sources"]:
            source["measured_uj"] = source["unattributed_uj"] = 0
            source["jobs_uj"] = dict.fromkeys(source["jobs_uj"], 0)
    return Batch.model_validate(data)


def node_totals(api: Api, node: str) -> int:
    rows = ok(api.get("/api/v1/nodes", "root"))["nodes"]
    return sum(row["measured_uj"] for row in rows if row["node"] == node)


def measured(batch: Any) -> int:
    return sum(src.measured_uj for interval in batch.intervals for src in interval.sources)


# ---------------------------------------------------------------------------------------------
# The issue's attacks


def test_attack_user_rewrites_another_users_job_with_an_event(make_api, make_batch, tmp_path):
    key = b"j" * 64
    (tmp_path / "jwt.key").write_bytes(key)
    api = make_api(auth="munge,jwt", jwt_key=tmp_path / "jwt.key")
    before = post_daemons_job(api, make_batch)
    forged = {"job_id": "701", "user": "nobody", "uid": 65534, "account": "nacct",
              "state": "CANCELLED", "exit_code": 9, "tags": {"model": "stolen"},
              "nodes": ["n1"], "comment": "model=stolen"}
    for who in ("nobody", "daemon", SlurmJwtAuth("nobody", slurm_jwt(key, "nobody"))):
        for event, when in (("end", T0 + timedelta(hours=5)), ("start", T0 - timedelta(hours=1))):
            response = api.post_event(who, event=event, time=when, **forged)
            assert response.status_code == 403, response.text
            assert "may not post job events" in response.json()["detail"]
    assert ok(api.get("/api/v1/jobs/701", "root")) == before
    assert (before["user"], before["account"], before["state"]) == ("daemon", "dacct",
                                                                   "COMPLETED")
    assert before["tags"] == {"model": "m701"}
    assert datetime.fromisoformat(before["end"]) == T0 + timedelta(seconds=30)
    # nor create a job of their own choosing that others would be charged for
    assert api.post_event("nobody", job_id="999", user="daemon", uid=1).status_code == 403
    assert api.get("/api/v1/jobs/999", "root").status_code == 404


def test_attack_user_claims_a_nodes_future_spans_with_a_zero_energy_batch(make_api, make_batch):
    api = make_api()
    first = make_batch(node="n1", seq=0)
    ok(api.post_batch(first))
    nxt = make_batch(node="n1", seq=1, start=T0 + timedelta(seconds=30))
    # Future spans, under the node's next key and under a key of its own.
    for claim in (zero_batch(nxt), zero_batch(nxt).model_copy(update={"boot_id": "evil",
                                                                       "seq": 0})):
        for who in ("nobody", "daemon"):
            response = api.post_batch(claim, who)
            assert response.status_code == 403, response.text
            assert "may not post batches" in response.json()["detail"]
    stored = ok(api.post_batch(nxt))
    assert stored["duplicate"] is False and stored["records"] > 0
    assert node_totals(api, "n1") == measured(first) + measured(nxt)


def test_attack_user_claims_a_nodes_next_batch_key(make_api, make_batch):
    api = make_api()
    ok(api.post_batch(make_batch(node="n2", seq=0)))
    real = make_batch(node="n2", seq=1, start=T0 + timedelta(seconds=30), jobs={"5": 1})
    forged = make_batch(node="n2", seq=1, start=T0 + timedelta(seconds=30), jobs={"6": 1},
                        power_w=1.0)
    assert api.post_batch(forged, "nobody").status_code == 403
    stored = ok(api.post_batch(real))
    assert stored["duplicate"] is False  # the key was still free
    assert ok(api.post_batch(real))["duplicate"] is True
    assert api.get("/api/v1/jobs/6", "root").status_code == 404
    assert ok(api.get("/api/v1/jobs/5", "root"))["energy_uj"] == sum(
        src.jobs_uj.get("5", 0) for interval in real.intervals for src in interval.sources)


def test_attack_node_root_claims_an_unmapped_nodes_next_batch_key(make_api, make_batch):
    """root of a node is the agent of its own nodes only; n3's token then stores its batch."""
    api = make_api(auth="munge,token")
    n3 = issue_token(api.url, "--node", "n3")
    batch = make_batch(node="n3", seq=0)
    assert api.post_batch(zero_batch(batch), "root").status_code == 403
    assert api.post_batch(zero_batch(batch), BearerAuth(issue_token(api.url, "--node", "n1"))
                          ).status_code == 403
    assert ok(api.post_batch(batch, BearerAuth(n3)))["duplicate"] is False
    assert node_totals(api, "n3") == measured(batch)


def test_attack_user_changes_cluster_factors(make_api):
    api = make_api()
    before = ok(api.get("/api/v1/clusters/c1", "nobody"))
    attempts = [
        ("PUT", "/api/v1/clusters/c1/pue", {"json": {"pue": 3.0}}),
        ("PUT", "/api/v1/clusters/c1/carbon", {"json": {"source": "constant", "g_per_kwh": 1}}),
        ("POST", "/api/v1/clusters/c1/pue/series",
         {"json": {"points": [{"time": T0.isoformat(), "value": 3.0}]}}),
        ("POST", "/api/v1/clusters/c1/carbon/series",
         {"content": b"time,value\n2026-11-23T10:00:00Z,5\n",
          "headers": {"Content-Type": "text/csv"}}),
        ("DELETE", "/api/v1/clusters/c1/pue/series", {}),
        ("DELETE", "/api/v1/clusters/c1/carbon/series", {}),
        ("PUT", "/api/v1/clusters/new/pue", {"json": {"pue": 2.0}}),
    ]
    for method, path, kwargs in attempts:
        for who in ("nobody", "daemon"):
            response = api.request(method, path, who, **kwargs)
            assert response.status_code == 403, (method, path, response.text)
            assert "change PUE or carbon factors" in response.json()["detail"]
    assert ok(api.get("/api/v1/clusters/c1", "nobody")) == before
    assert ok(api.get("/api/v1/audit", "root")) == []
    assert [c["cluster"] for c in ok(api.get("/api/v1/clusters", "root"))] == []


def test_attack_user_lists_everyones_jobs(make_api, make_batch, tmp_path):
    key = b"j" * 64
    (tmp_path / "jwt.key").write_bytes(key)
    api = make_api(auth="munge,jwt", jwt_key=tmp_path / "jwt.key")
    post_daemons_job(api, make_batch)
    for who in ("nobody", SlurmJwtAuth("nobody", slurm_jwt(key, "nobody"))):
        for params in ({}, {"user": "daemon"}, {"account": "dacct"}, {"job_id": "701,700"},
                       {"limit": 10_000}, {"offset": 1}):
            page = ok(api.get("/api/v1/jobs", who, params=params))
            assert {job["user"] for job in page["jobs"]} <= {"nobody"}, params
            assert page["total"] == (1 if params.get("user", "nobody") == "nobody"
                                     and params.get("account", "nacct") == "nacct" else 0)
        assert api.get("/api/v1/jobs/701", who).status_code == 403
        assert api.get("/api/v1/jobs/701", who, params={"cluster": "c1"}).status_code == 403
        rows = ok(api.get("/api/v1/summary", who, params={"group_by": "user"}))
        assert [(row["group"], row["jobs"]) for row in rows] == [("nobody", 1)]
        for group_by in ("partition", "model", "cluster", "phase"):
            rows = ok(api.get("/api/v1/summary", who, params={"group_by": group_by}))
            assert sum(row["jobs"] for row in rows) == 1, group_by
        board = ok(api.get("/api/v1/leaderboards/models", who))
        assert [row["model"] for row in board] == ["m700"]
        # per-node totals and refusal reasons may quote others' jobs: operators only
        assert api.get("/api/v1/nodes", who).status_code == 403
        assert api.get("/api/v1/audit", who).status_code == 403


# ---------------------------------------------------------------------------------------------
# Found reading the code


def test_attack_forged_batch_does_not_blame_the_real_node(make_api, make_batch):
    """A user's invalid batch naming n1 must not land in n1's refusal record (which operators
    read to find broken agents), whatever the answer to the user is."""
    api = make_api()
    forged = make_batch(node="n1").model_dump(mode="json")
    forged["intervals"][0]["sources"][0]["measured_uj"] += 1  # not conserved: 422 if parsed
    response = api.request("POST", "/api/v1/batches", "nobody", json=forged)
    assert response.status_code in (403, 422), response.text
    assert api.post_batch(make_batch(node="n1", jobs={}), "nobody").status_code == 403
    assert ok(api.get("/api/v1/nodes", "root"))["refusals"] == []
    # while the node's own agent's refusals are recorded
    assert api.request("POST", "/api/v1/batches", "root", json=forged).status_code == 422
    assert [r["node"] for r in ok(api.get("/api/v1/nodes", "root"))["refusals"]] == ["n1"]


@pytest.mark.parametrize(("signed", "sent"), [
    ("/api/v1/jobs/700", "/api/v1/jobs/%37%30%30"),  # the same path once decoded
    ("/api/v1/jobs?user=nobody&cluster=c1", "/api/v1/jobs?cluster=c1&user=nobody"),
    ("/api/v1/jobs?user=nobody", "/api/v1/jobs?user=nobody&user=daemon"),
    ("/api/v1/jobs", "/api/v1/jobs/"),
    ("/api/v1/whoami", "/api/v1//whoami"),
])
def test_attack_credential_reused_on_an_equivalent_target(make_api, signed, sent):
    """Signed targets are compared byte for byte, as received: no normalisation to exploit."""
    api = make_api()
    credential = munge.encode(munge_payload("GET", signed, b""), socket_path=api.socket_path)
    response = api.client.get(sent, headers={"Authorization": f"MUNGE {credential}"})
    assert response.status_code == 401, response.text


def test_attack_credential_for_get_used_for_head_or_post(make_api):
    api = make_api()
    for method in ("HEAD", "POST", "OPTIONS"):
        credential = munge.encode(munge_payload("GET", "/api/v1/whoami", b""),
                                  socket_path=api.socket_path)
        response = api.client.request(method, "/api/v1/whoami",
                                      headers={"Authorization": f"MUNGE {credential}"})
        assert response.status_code == 401, method


def test_attack_stolen_jwt_replayed_under_another_name(make_api, tmp_path):
    key = b"j" * 64
    (tmp_path / "jwt.key").write_bytes(key)
    api = make_api(auth="munge,jwt", jwt_key=tmp_path / "jwt.key")
    nobody = slurm_jwt(key, "nobody")
    for name in ("root", "slurm", "daemon", "Nobody", "nobody\t"):
        response = api.get("/api/v1/whoami", None, headers={
            "X-SLURM-USER-NAME": name, "X-SLURM-USER-TOKEN": nobody})
        assert response.status_code == 401, name
    # MUNGE takes precedence over JWT headers: no mixing of the two identities
    response = api.get("/api/v1/whoami", "nobody", headers={
        "X-SLURM-USER-NAME": "root", "X-SLURM-USER-TOKEN": slurm_jwt(key, "root")})
    assert ok(response)["user"] == "nobody" and response.json()["admin"] is False


def test_attack_secrets_are_not_echoed_in_errors_or_logs(make_api, caplog, tmp_path):
    key = b"j" * 64
    (tmp_path / "jwt.key").write_bytes(key)
    api = make_api(auth="munge,jwt,token", jwt_key=tmp_path / "jwt.key")
    token = issue_token(api.url, "--role", "admin")
    secret = token.removeprefix("jet_")
    wrong_jwt = slurm_jwt(b"w" * 64, "nobody")
    caplog.set_level(logging.DEBUG)
    attempts = [
        {"Authorization": token},  # forgot "Bearer "
        {"Authorization": secret},
        {"Authorization": f"Bearer {token}x"},
        {"Authorization": f"Token {token}"},
        {"X-SLURM-USER-NAME": "nobody", "X-SLURM-USER-TOKEN": wrong_jwt},
        {"X-SLURM-USER-NAME": "root", "X-SLURM-USER-TOKEN": slurm_jwt(key, "nobody")},
    ]
    for headers in attempts:
        response = api.get("/api/v1/whoami", None, headers=headers)
        assert response.status_code == 401
        detail = response.json()["detail"]
        for piece in (secret[:8].lower(), secret[-8:].lower(), wrong_jwt.split(".")[2][:8]):
            assert piece not in detail.lower(), (headers, detail)
    assert "'token'" in api.get("/api/v1/whoami", None, headers={
        "Authorization": "Token x"}).json()["detail"]  # a well-known scheme is still named
    logged = "\n".join(record.getMessage() for record in caplog.records).lower()
    assert "401" in logged
    assert secret[:8].lower() not in logged and secret[-8:].lower() not in logged


def test_attack_sacctmgr_output_that_is_not_utf8_is_no_500(make_api, tmp_path):
    """A user or account name in another encoding in Slurm's database must not turn every
    user's request into a 500 for as long as the roles are cached."""
    script = tmp_path / "sacctmgr"
    script.write_bytes(b"#!/bin/sh\nprintf 'caf\\351|None|x\\nnobody|None|d\\377acct,ok\\n'\n")
    script.chmod(0o755)
    api = make_api(sacctmgr=str(script))
    me = ok(api.get("/api/v1/whoami", "nobody"))
    assert "ok" in me["coordinator_accounts"] and me["admin"] is False


@pytest.mark.parametrize("headers", [
    {"Authorization": "MUNGE " + "\x01\x02" * 100},
    {"Authorization": "Bearer \x7f"},
    {"Authorization": "Bearer " + "t" * 100_000},
    {"Authorization": "MUNGE MUNGE:" + "A" * 8000 + ":"},
    {"Authorization": " MUNGE x"},
    {"Authorization": "MUNGE\tx"},
    {"X-SLURM-USER-NAME": "n" * 10_000, "X-SLURM-USER-TOKEN": "a.b.c"},
    {"X-SLURM-USER-NAME": "nobody", "X-SLURM-USER-TOKEN": ""},
    {"X-SLURM-USER-NAME": "nobody", "X-SLURM-USER-TOKEN": "e" * 20_000},
    {"X-SLURM-USER-NAME": "nobody", "X-SLURM-USER-TOKEN": "eyJhbGciOiJIUzI1NiJ9.\xff.x"},
])
def test_attack_weird_credentials_are_401_never_5xx(make_api, tmp_path, headers):
    (tmp_path / "jwt.key").write_bytes(b"j" * 64)
    api = make_api(auth="munge,jwt,token", jwt_key=tmp_path / "jwt.key")
    for method, path in (("GET", "/api/v1/jobs"), ("POST", "/api/v1/batches"),
                         ("PUT", "/api/v1/clusters/c1/pue")):
        response = api.client.request(method, path, content=b"{}", headers={
            k: v.encode("latin-1") for k, v in headers.items()})
        assert response.status_code == 401, (method, response.text)
        assert response.json()["detail"]


def test_attack_agent_token_reads_nothing_and_changes_nothing(make_api, make_batch):
    api = make_api(auth="munge,token")
    post_daemons_job(api, make_batch)
    agent = BearerAuth(issue_token(api.url, "--node", "n1"))
    assert ok(api.get("/api/v1/jobs", agent))["total"] == 0
    assert api.get("/api/v1/jobs/700", agent).status_code == 403  # even its node's jobs
    assert ok(api.get("/api/v1/summary", agent)) == []
    assert api.get("/api/v1/nodes", agent).status_code == 403
    assert api.request("PUT", "/api/v1/clusters/c1/pue", agent, json={"pue": 2}
                       ).status_code == 403
    assert api.post_event(agent, job_id="701", user="nobody").status_code == 403


def test_attack_token_of_one_cluster_acts_on_another(make_api):
    """Hooks and admin tokens are issued for one cluster (``--cluster``) and act on it only."""
    api = make_api(auth="munge,token")
    hooks = BearerAuth(issue_token(api.url, "--role", "hooks"))  # for c1
    admin = BearerAuth(issue_token(api.url, "--role", "admin"))  # for c1
    ok(api.post_event(hooks, cluster="c1", job_id="1"))
    ok(api.request("PUT", "/api/v1/clusters/c1/pue", admin, json={"pue": 1.1}))
    audit = ok(api.get("/api/v1/audit", "root"))
    c2 = ok(api.get("/api/v1/clusters/c2", "root"))

    assert api.post_event(hooks, cluster="c2", job_id="1").status_code == 403
    for method, path, kwargs in (
        ("PUT", "/api/v1/clusters/c2/pue", {"json": {"pue": 1.9}}),
        ("PUT", "/api/v1/clusters/c2/carbon", {"json": {"source": "constant", "g_per_kwh": 9}}),
        ("POST", "/api/v1/clusters/c2/pue/series",
         {"json": {"points": [{"time": T0.isoformat(), "value": 1.9}]}}),
        ("DELETE", "/api/v1/clusters/c2/carbon/series", {}),
    ):
        response = api.request(method, path, admin, **kwargs)
        assert response.status_code == 403, (method, path, response.text)
    assert api.get("/api/v1/jobs/1", "root", params={"cluster": "c2"}).status_code == 404
    assert ok(api.get("/api/v1/clusters/c2", "root")) == c2
    assert ok(api.get("/api/v1/audit", "root")) == audit


def test_user_sees_own_accounts_in_summary(make_api, make_batch):
    """With private_data accounts, a user's own accounts are never merged into (others)."""
    api = make_api()
    post_daemons_job(api, make_batch)
    assert ok(api.get("/api/v1/jobs/700", "nobody"))["account"] == "nacct"
    rows = ok(api.get("/api/v1/summary", "nobody", params={"group_by": "account"}))
    assert [row["group"] for row in rows] == ["nacct"]
    # Usage open, account names private: nobody's own account shown, daemon's merged.
    api = make_api(private_data="accounts")
    daemons = post_daemons_job(api, make_batch)
    rows = {row["group"]: row for row in ok(api.get("/api/v1/summary", "nobody",
                                                    params={"group_by": "account"}))}
    assert set(rows) == {"nacct", "(others)"}, rows
    assert rows["(others)"]["energy_kwh"] == pytest.approx(daemons["energy_kwh"])
