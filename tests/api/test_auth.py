"""Authentication and access rights of the API (README "Security model").

Against real credentials: MUNGE credentials from the session's private munged (made as root, or
as ``nobody``/``daemon`` with ``runuser ... munge``), HS256 Slurm JWTs signed with a key file
written here, and static tokens issued by ``jobenergy auth token``. Tests where the database
does the filtering (visibility, tokens, the audit log) run on SQLite and PostgreSQL; the others
on SQLite only.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import create_engine, select

from jobenergy.core import munge
from jobenergy.core.errors import ConfigError
from jobenergy.core.request_auth import BearerAuth, MungeAuth, SlurmJwtAuth, munge_payload

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
#: Root's MUNGE credentials come from 127.0.0.1: its agent posts for n1 and n2.
NODES = {"127.0.0.1": ["n1", "n2"]}
UIDS = {"root": 0, "daemon": 1, "nobody": 65534}


# ---------------------------------------------------------------------------------------------
# Credentials


def munge_credential(user: str, socket_path: str, payload: bytes) -> str:
    """Return a MUNGE credential of ``user`` for ``payload`` (runuser for other users)."""
    if user == "root":
        return munge.encode(payload, socket_path=socket_path)
    result = subprocess.run(["runuser", "-u", user, "--", "munge", "-S", socket_path],
                            input=payload, capture_output=True, check=True, timeout=30)
    return result.stdout.decode("ascii").strip()


class UserMunge(httpx.Auth):
    """:class:`MungeAuth` for another local user: the credential vouches for their uid."""

    requires_request_body = True

    def __init__(self, user: str, socket_path: str) -> None:
        self.user = user
        self.socket_path = socket_path

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        """Add ``Authorization: MUNGE <credential>`` bound to this request."""
        payload = munge_payload(request.method, request.url.raw_path.decode(), request.content)
        request.headers["Authorization"] = (
            f"MUNGE {munge_credential(self.user, self.socket_path, payload)}")
        yield request


def b64url(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def slurm_jwt(key: bytes, sun: str, *, lifetime_s: int = 600, drop: tuple[str, ...] = (),
              **claims: Any) -> str:
    """Return an HS256 token like ``scontrol token`` makes (claims sun, iat, exp)."""
    now = int(time.time())
    body: dict[str, Any] = {"sun": sun, "iat": now, "exp": now + lifetime_s, **claims}
    for name in drop:
        body.pop(name)
    return jwt.encode(body, key, algorithm="HS256")


def issue_token(url: str, *args: str) -> str:
    """Run ``jobenergy auth token --cluster c1 ARGS`` on ``url``; return what it printed."""
    from typer.testing import CliRunner

    from jobenergy.cli.main import app

    result = CliRunner().invoke(app, ["auth", "token", "--cluster", "c1", *args],
                                env={"JOBENERGY_SERVER_DB_URL": url})
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def sqlite_url(_sqlite_template: Path, tmp_path: Path) -> str:
    """An empty migrated SQLite database (for the tests where the backend does not matter)."""
    path = tmp_path / "auth.db"
    shutil.copyfile(_sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def jwt_key(tmp_path: Path) -> tuple[Path, bytes]:
    """Slurm's ``jwt_hs256.key``: a file of random bytes."""
    key = os.urandom(64)
    path = tmp_path / "jwt_hs256.key"
    path.write_bytes(key)
    path.chmod(0o600)
    return path, key


class Api:
    """A TestClient over an authenticating server, with helpers to call it as someone."""

    def __init__(self, client: Any, socket_path: str, url: str) -> None:
        self.client = client
        self.socket_path = socket_path
        self.url = url

    def auth(self, who: str | httpx.Auth | None) -> httpx.Auth | None:
        if who is None or isinstance(who, httpx.Auth):
            return who
        return MungeAuth(self.socket_path) if who == "root" else UserMunge(who, self.socket_path)

    def request(self, method: str, path: str, who: str | httpx.Auth | None,
                **kwargs: Any) -> httpx.Response:
        return self.client.request(method, path, auth=self.auth(who), **kwargs)

    def get(self, path: str, who: str | httpx.Auth | None, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, who, **kwargs)

    def post_batch(self, batch: Any, who: str | httpx.Auth | None = "root") -> httpx.Response:
        return self.request("POST", "/api/v1/batches", who, content=batch.model_dump_json())

    def post_event(self, who: str | httpx.Auth | None = "root", **body: Any) -> httpx.Response:
        body.setdefault("cluster", "c1")
        body.setdefault("event", "start")
        body["time"] = body.get("time", T0).isoformat()
        return self.request("POST", "/api/v1/jobs/events", who, json=body)

    def put_pue(self, cluster: str, pue: float | None,
                who: str | httpx.Auth | None) -> httpx.Response:
        return self.request("PUT", f"/api/v1/clusters/{cluster}/pue", who, json={"pue": pue})

    def whoami(self, who: str | httpx.Auth | None) -> dict[str, Any]:
        response = self.get("/api/v1/whoami", who)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def make_api(munge_socket: str, make_client: Callable[[Any], Any]) -> Callable[..., Api]:
    """Return ``make_api(db_url, **settings) -> Api``: MUNGE on, no sacctmgr, no user limit."""
    from jobenergy.collector.settings import ServerSettings

    def factory(url: str, **overrides: Any) -> Api:
        values: dict[str, Any] = {
            "db_url": url, "auth": "munge", "munge_socket": munge_socket, "migrate": False,
            "pue": 1.0, "carbon_intensity_g_per_kwh": None, "max_body_bytes": 1024 * 1024,
            "nodes": NODES, "sacctmgr": "", "rate_limit_per_s": 0, **overrides,
        }
        return Api(make_client(ServerSettings(**values)), munge_socket, url)

    return factory


def post_jobs(api: Api, make_batch: Callable[..., Any]) -> dict[str, int]:
    """Jobs 700 (nobody, account nacct, model llama on n1) and 701 (daemon, account dacct,
    model bert on n2), posted by root as the hooks and the agent; return each job's energy."""
    owners = {"700": ("nobody", "nacct", "n1", "llama"), "701": ("daemon", "dacct", "n2", "bert")}
    energy = {}
    for job_id, (user, account, node, model) in owners.items():
        response = api.post_event(
            job_id=job_id, user=user, uid=UIDS[user], account=account, partition="p",
            nodes=[node], tags={"model": model, "phase": "training"})
        assert response.status_code == 200, response.text
        batch = make_batch(node=node, jobs={job_id: 1}, uid=UIDS[user],
                           sources=(("cpu", "package-0"), ("gpu", "gpu/GPU-aaaa")))
        response = api.post_batch(batch)
        assert response.status_code == 200, response.text
        energy[job_id] = sum(src.jobs_uj[job_id] for i in batch.intervals for src in i.sources)
        response = api.post_event(job_id=job_id, event="end", time=T0 + timedelta(seconds=30),
                                  state="COMPLETED", exit_code=0)
        assert response.status_code == 200, response.text
    return energy


def sacctmgr_script(tmp_path: Path, output: str) -> str:
    """An executable standing in for sacctmgr: prints ``output`` and records its arguments."""
    path = tmp_path / "sacctmgr"
    path.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'sacctmgr.args'}\n"
                    f"printf '%s' '{output}'\n")
    path.chmod(0o755)
    return str(path)


def job_ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return sorted(job["job_id"] for job in response.json()["jobs"])


# ---------------------------------------------------------------------------------------------
# 1. No credential


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/api/v1/jobs", None),
    ("POST", "/api/v1/batches", b"{}"),
    ("PUT", "/api/v1/clusters/x/pue", b'{"pue": 1.5}'),
    ("GET", "/api/v1/whoami", None),
])
def test_no_credential_is_401_with_a_challenge(make_api, sqlite_url, method, path, body):
    api = make_api(sqlite_url)
    response = api.request(method, path, None, content=body)
    assert response.status_code == 401, response.text
    assert "authentication required" in response.json()["detail"]
    assert "MUNGE" in response.headers["www-authenticate"]
    if method == "PUT":  # nothing changed behind the 401
        assert api.get("/api/v1/clusters/x", "root").json()["pue"]["source"] == "default"


def test_health_and_openapi_stay_open(make_api, sqlite_url):
    api = make_api(sqlite_url)
    assert api.get("/healthz", None).json() == {"status": "ok"}
    assert "/api/v1/jobs" in api.get("/openapi.json", None).json()["paths"]


# ---------------------------------------------------------------------------------------------
# 2. MUNGE


def test_root_posts_batches_for_its_mapped_nodes_only(make_api, sqlite_url, make_batch):
    api = make_api(sqlite_url)
    mine = make_batch(node="n1")
    response = api.post_batch(mine)
    assert response.status_code == 200, response.text
    assert response.json()["duplicate"] is False

    other = make_batch(node="n9", jobs={"9": 1})
    response = api.post_batch(other)
    assert response.status_code == 403, response.text
    assert "n9" in response.json()["detail"] and "munge:root" in response.json()["detail"]
    nodes = api.get("/api/v1/nodes", "root").json()
    assert {row["node"] for row in nodes["nodes"]} == {"n1"}
    assert nodes["refusals"] == []  # not even counted: only a node's own agent writes there
    assert api.get("/api/v1/jobs", "root").json()["total"] == 1  # job 101 of n1, no job 9


def test_munge_cluster_binds_munge_agents_and_hooks_to_it(make_api, sqlite_url, make_batch):
    """munged vouches for a uid and a host, not a cluster: root of n1 in another cluster (the
    same key) may not post n1's batches or job events under this cluster's name."""
    open_api = make_api(sqlite_url)  # munge_cluster unset: any cluster name, as before
    assert open_api.post_batch(make_batch(cluster="c9", node="n1", jobs={"9": 1})
                               ).status_code == 200
    api = make_api(sqlite_url, munge_cluster="c1")
    assert api.whoami("root")["agent_nodes"] == ["c1/n1", "c1/n2"]
    assert api.post_batch(make_batch(cluster="c1", node="n1")).status_code == 200
    response = api.post_batch(make_batch(cluster="c2", node="n1", jobs={"8": 1}))
    assert response.status_code == 403, response.text
    assert response.json()["detail"] == (
        "munge:root(uid=0)@127.0.0.1 may not post batches for node n1 of cluster c2 (only of "
        "cluster c1)")
    assert api.post_event(job_id="10", cluster="c1").status_code == 200
    response = api.post_event(job_id="11", cluster="c2")
    assert response.status_code == 403, response.text
    assert response.json()["detail"].endswith("post job events for cluster c2 (only for c1)")
    # Tokens keep their own cluster, whatever munge_cluster says.
    token_api = make_api(sqlite_url, auth="munge,token", munge_cluster="c2")
    hooks = BearerAuth(issue_token(sqlite_url, "--role", "hooks"))
    assert token_api.post_event(hooks, job_id="12", cluster="c1").status_code == 200
    assert token_api.post_event(hooks, job_id="13", cluster="c2").status_code == 403


def test_a_slurm_user_jwt_posts_events_for_its_cluster_only(make_api, sqlite_url, jwt_key):
    """Slurm's JWT key is one cluster's, as its munge.key is: SlurmUser's `scontrol token`
    may post job events for that cluster (jwt_cluster, else munge_cluster) and no other."""
    path, key = jwt_key
    auth = SlurmJwtAuth("nobody", slurm_jwt(key, "nobody"))
    api = make_api(sqlite_url, auth="munge,jwt", jwt_key=path, slurm_user="nobody",
                   munge_cluster="c1")
    assert api.post_event(auth, job_id="20", cluster="c1").status_code == 200
    response = api.post_event(auth, job_id="21", cluster="c2")
    assert response.status_code == 403, response.text
    assert response.json()["detail"].endswith("post job events for cluster c2 (only for c1)")
    own = make_api(sqlite_url, auth="munge,jwt", jwt_key=path, slurm_user="nobody",
                   munge_cluster="c1", jwt_cluster="c2")
    assert own.post_event(auth, job_id="22", cluster="c2").status_code == 200
    assert own.post_event(auth, job_id="23", cluster="c1").status_code == 403
    assert own.post_event("root", job_id="24", cluster="c1").status_code == 200  # MUNGE: c1


def test_munge_replay_is_refused(make_api, sqlite_url):
    api = make_api(sqlite_url)
    credential = munge.encode(munge_payload("GET", "/api/v1/whoami", b""),
                              socket_path=api.socket_path)
    headers = {"Authorization": f"MUNGE {credential}"}
    first = api.get("/api/v1/whoami", None, headers=headers)
    assert first.status_code == 200 and first.json()["user"] == "root"
    again = api.get("/api/v1/whoami", None, headers=headers)
    assert again.status_code == 401
    assert "Replayed" in again.json()["detail"]


@pytest.mark.parametrize(("signed", "sent"), [
    (("POST", "/api/v1/batches", b'{"a": 1}'), ("POST", "/api/v1/batches", b'{"a": 2}')),
    (("GET", "/api/v1/jobs", b""), ("GET", "/api/v1/whoami", b"")),
    (("GET", "/api/v1/jobs?user=nobody", b""), ("GET", "/api/v1/jobs?user=daemon", b"")),
    (("GET", "/api/v1/jobs", b""), ("GET", "/api/v1/jobs?limit=1", b"")),
    (("GET", "/api/v1/clusters/c1", b""), ("DELETE", "/api/v1/clusters/c1/pue/series", b"")),
])
def test_munge_credential_is_bound_to_its_request(make_api, sqlite_url, signed, sent):
    api = make_api(sqlite_url)
    credential = munge.encode(munge_payload(*signed), socket_path=api.socket_path)
    method, target, body = sent
    response = api.client.request(method, target, content=body,
                                  headers={"Authorization": f"MUNGE {credential}"})
    assert response.status_code == 401, response.text
    assert "another request" in response.json()["detail"]


def test_munge_credential_of_another_key_is_refused(make_api, sqlite_url, make_munged):
    api = make_api(sqlite_url)
    foreign = make_munged()
    response = api.get("/api/v1/whoami", MungeAuth(foreign.socket_path))
    assert response.status_code == 401, response.text
    assert response.json()["detail"].startswith("MUNGE credential refused")


@pytest.mark.parametrize("value", [
    "MUNGE", "MUNGE ", "MUNGE garbage", "MUNGE MUNGE:AwQFAAA=:", "munge MUNGE::",
    "MUNGE " + "A" * 9000, "MUNGE MUNGE:\x7f\x01:", "MUNGE caf\xe9", "Negotiate abc",
])
def test_garbage_munge_credential_is_401_not_500(make_api, sqlite_url, value):
    api = make_api(sqlite_url)
    response = api.get("/api/v1/jobs", None,
                       headers={"Authorization": value.encode("latin-1")})
    assert response.status_code == 401, response.text
    assert response.json()["detail"]


# ---------------------------------------------------------------------------------------------
# 3. Users, PrivateData, coordinators, operators


def test_user_reads_only_own_jobs(make_api, db_url, make_batch):
    api = make_api(db_url)
    energy = post_jobs(api, make_batch)

    own = api.get("/api/v1/jobs/700", "nobody")
    assert own.status_code == 200, own.text
    assert (own.json()["user"], own.json()["energy_uj"]) == ("nobody", energy["700"])
    other = api.get("/api/v1/jobs/701", "nobody")
    assert other.status_code == 403, other.text
    assert "not visible" in other.json()["detail"] and "nobody" in other.json()["detail"]

    listed = api.get("/api/v1/jobs", "nobody")
    assert job_ids(listed) == ["700"] and listed.json()["total"] == 1
    # sacct's list filters (issue 11) select within what the caller may read, never beyond.
    for params in ({"user": "daemon"}, {"account": "dacct"}, {"job_id": "701"},
                   {"job_id": "700,701"}, {"cluster": "c1", "state": "COMPLETED"},
                   {"user": ["nobody", "daemon"]}, {"user": str(UIDS["daemon"])},
                   {"account": "nacct,dacct"}, {"state": "CD,F"}, {"nodelist": "n[1-2]"},
                   {"nodelist": "n2"}, {"partition": "p"}, {"cluster": "c1,c2"},
                   {"job_id": ["700", "701.batch"]}):
        response = api.get("/api/v1/jobs", "nobody", params=params)
        assert "701" not in job_ids(response), params
        assert response.json()["total"] == len(job_ids(response))
    assert job_ids(api.get("/api/v1/jobs", "daemon")) == ["701"]
    assert job_ids(api.get("/api/v1/jobs", "root")) == ["700", "701"]

    # usage private (the default): summaries and leaderboards count only the caller's jobs.
    summary = api.get("/api/v1/summary", "nobody", params={"group_by": "user"}).json()
    assert [(row["group"], row["jobs"]) for row in summary] == [("nobody", 1)]
    board = api.get("/api/v1/leaderboards/models", "nobody").json()
    assert [(row["model"], row["jobs"]) for row in board] == [("llama", 1)]
    assert {row["model"] for row in api.get("/api/v1/leaderboards/models", "root").json()} == {
        "llama", "bert"}


def test_private_data_off_opens_everything(make_api, sqlite_url, make_batch):
    api = make_api(sqlite_url, private_data="")
    post_jobs(api, make_batch)
    assert api.get("/api/v1/jobs/701", "nobody").status_code == 200
    assert job_ids(api.get("/api/v1/jobs", "nobody")) == ["700", "701"]
    summary = api.get("/api/v1/summary", "nobody", params={"group_by": "user"}).json()
    assert {row["group"] for row in summary} == {"nobody", "daemon"}


def test_summary_merges_hidden_user_names(make_api, db_url, make_batch):
    """``usage`` not private but ``users`` is: every job counts, others' names are merged."""
    from jobenergy.core.units import UJ_PER_KWH

    api = make_api(db_url, private_data="users")
    energy = post_jobs(api, make_batch)
    rows = {row["group"]: row
            for row in api.get("/api/v1/summary", "nobody", params={"group_by": "user"}).json()}
    assert set(rows) == {"nobody", "(others)"}
    assert rows["nobody"]["jobs"] == rows["(others)"]["jobs"] == 1
    assert rows["(others)"]["energy_kwh"] == pytest.approx(energy["701"] / UJ_PER_KWH)
    # accounts are not private here: both shown; root sees every name.
    accounts = api.get("/api/v1/summary", "nobody", params={"group_by": "account"}).json()
    assert {row["group"] for row in accounts} == {"nacct", "dacct"}
    everyone = api.get("/api/v1/summary", "root", params={"group_by": "user"}).json()
    assert {row["group"] for row in everyone} == {"nobody", "daemon"}
    # jobs not private either: the list shows daemon's job.
    assert job_ids(api.get("/api/v1/jobs", "nobody")) == ["700", "701"]


def test_coordinator_reads_the_accounts_jobs(make_api, sqlite_url, make_batch, tmp_path):
    script = sacctmgr_script(tmp_path, "root|Administrator|\nnobody|None|dacct,other\n"
                                       "daemon|None|\n")
    api = make_api(sqlite_url, sacctmgr=script)
    post_jobs(api, make_batch)
    assert api.get("/api/v1/jobs/701", "nobody").status_code == 200
    assert job_ids(api.get("/api/v1/jobs", "nobody")) == ["700", "701"]
    assert api.get("/api/v1/jobs/700", "daemon").status_code == 403  # not the other way round
    me = api.whoami("nobody")
    assert me["coordinator_accounts"] == ["dacct", "other"] and me["admin"] is False
    assert api.put_pue("c1", 1.5, "nobody").status_code == 403
    args = (tmp_path / "sacctmgr.args").read_text().split()
    assert args == ["-nP", "show", "user", "withcoord", "format=user,adminlevel,coordinators"]


def test_operator_adminlevel_may_change_factors(make_api, sqlite_url, tmp_path):
    api = make_api(sqlite_url, sacctmgr=sacctmgr_script(tmp_path, "nobody|Operator|\n"))
    response = api.put_pue("c1", 1.25, "nobody")
    assert response.status_code == 200, response.text
    assert response.json()["pue"]["value"] == 1.25
    assert api.whoami("nobody")["admin"] is True
    assert api.whoami("daemon")["admin"] is False


def test_broken_sacctmgr_gives_no_roles(make_api, sqlite_url, tmp_path):
    script = tmp_path / "sacctmgr"
    script.write_text("#!/bin/sh\necho 'sacctmgr: error: unable to connect' >&2\nexit 1\n")
    script.chmod(0o755)
    api = make_api(sqlite_url, sacctmgr=str(script))
    assert api.whoami("nobody")["admin"] is False
    assert api.put_pue("c1", 1.25, "nobody").status_code == 403


# ---------------------------------------------------------------------------------------------
# 4. Admins and the audit log


def test_admin_changes_are_audited(make_api, db_url):
    api = make_api(db_url, admins=("daemon",))
    response = api.put_pue("c", 1.4, "daemon")
    assert response.status_code == 200, response.text

    entries = api.get("/api/v1/audit", "root").json()
    assert len(entries) == 1
    entry = entries[0]
    assert entry["actor"] == "munge:daemon(uid=1)@127.0.0.1"
    assert (entry["action"], entry["cluster"]) == ("pue.set", "c")
    assert entry["old_value"]["pue"] == {"value": 1.0, "source": "default", "series": None}
    assert entry["new_value"]["pue"]["value"] == 1.4
    assert entry["new_value"]["request"] == {"pue": 1.4}

    refused = api.put_pue("c", 2.0, "nobody")
    assert refused.status_code == 403, refused.text
    assert "munge:nobody" in refused.json()["detail"]
    assert api.get("/api/v1/clusters/c", "nobody").json()["pue"]["value"] == 1.4
    assert api.get("/api/v1/audit", "nobody").status_code == 403
    assert len(api.get("/api/v1/audit", "daemon").json()) == 1


def test_admin_group_membership_makes_an_admin(make_api, sqlite_url):
    api = make_api(sqlite_url, admin_group="daemon")  # daemon's primary group
    assert api.whoami("daemon")["admin"] is True
    assert api.whoami("nobody")["admin"] is False


# ---------------------------------------------------------------------------------------------
# 6. Slurm JWT


def test_jwt_user_reads_own_job(make_api, sqlite_url, make_batch, jwt_key):
    path, key = jwt_key
    api = make_api(sqlite_url, auth="munge,jwt", jwt_key=path)
    post_jobs(api, make_batch)
    auth = SlurmJwtAuth("nobody", slurm_jwt(key, "nobody"))
    assert api.get("/api/v1/jobs/700", auth).status_code == 200
    assert api.get("/api/v1/jobs/701", auth).status_code == 403
    assert job_ids(api.get("/api/v1/jobs", auth)) == ["700"]
    me = api.whoami(auth)
    assert (me["mechanism"], me["user"], me["uid"], me["admin"]) == ("jwt", "nobody", 65534,
                                                                      False)
    assert api.post_batch(make_batch(node="n1", seq=5), auth).status_code == 403
    assert "Slurm-JWT" in api.get("/api/v1/jobs", None).headers["www-authenticate"]


def _none_alg(sun: str) -> str:
    now = int(time.time())
    return (f"{b64url({'alg': 'none', 'typ': 'JWT'})}."
            f"{b64url({'sun': sun, 'iat': now, 'exp': now + 600})}.")


@pytest.mark.parametrize(("name", "header_user", "token", "reason"), [
    ("wrong key", "nobody", lambda key: slurm_jwt(b"x" * 64, "nobody"), "Signature"),
    ("expired", "nobody", lambda key: slurm_jwt(key, "nobody", lifetime_s=-120), "expired"),
    ("no exp", "nobody", lambda key: slurm_jwt(key, "nobody", drop=("exp",)), "exp"),
    ("no iat", "nobody", lambda key: slurm_jwt(key, "nobody", drop=("iat",)), "iat"),
    ("no sun", "nobody", lambda key: slurm_jwt(key, "nobody", drop=("sun",)), "sun"),
    ("alg none", "nobody", lambda key: _none_alg("nobody"), "refused"),
    ("alg none signed", "nobody", lambda key: _none_alg("nobody") + "c2ln", "refused"),
    ("HS512", "nobody", lambda key: jwt.encode(
        {"sun": "nobody", "iat": int(time.time()), "exp": int(time.time()) + 60}, key,
        algorithm="HS512"), "refused"),
    ("other user", "root", lambda key: slurm_jwt(key, "nobody"), "X-SLURM-USER-NAME"),
    ("no user header", "", lambda key: slurm_jwt(key, "nobody"), "X-SLURM-USER-NAME"),
    ("garbage", "nobody", lambda key: "a.b.c", "refused"),
    ("not a jwt", "nobody", lambda key: "jet_notatoken", "refused"),
])
def test_bad_jwt_is_401(make_api, sqlite_url, jwt_key, name, header_user, token, reason):
    path, key = jwt_key
    api = make_api(sqlite_url, auth="munge,jwt", jwt_key=path)
    headers = {"X-SLURM-USER-TOKEN": token(key)}
    if header_user:
        headers["X-SLURM-USER-NAME"] = header_user
    response = api.get("/api/v1/whoami", None, headers=headers)
    assert response.status_code == 401, (name, response.text)
    assert reason in response.json()["detail"], name


def test_jwt_on_a_munge_only_server_is_401(make_api, sqlite_url):
    api = make_api(sqlite_url)
    response = api.get("/api/v1/whoami", SlurmJwtAuth("nobody", slurm_jwt(b"k" * 64, "nobody")))
    assert response.status_code == 401
    assert "jwt authentication is not enabled" in response.json()["detail"]
    bearer = api.get("/api/v1/whoami", BearerAuth("jet_whatever"))
    assert bearer.status_code == 401
    assert "token authentication is not enabled" in bearer.json()["detail"]


# ---------------------------------------------------------------------------------------------
# 7. Static tokens


def test_static_tokens(make_api, db_url, make_batch):
    api = make_api(db_url, auth="munge,token")
    agent = issue_token(db_url, "--node", "n1")
    hooks = issue_token(db_url, "--role", "hooks")
    admin = issue_token(db_url, "--role", "admin")
    issued = (agent, hooks, admin)
    assert len(set(issued)) == 3 and all(t.startswith("jet_") for t in issued)

    assert api.post_batch(make_batch(node="n1"), BearerAuth(agent)).status_code == 200
    refused = api.post_batch(make_batch(node="n2"), BearerAuth(agent))
    assert refused.status_code == 403 and "n2" in refused.json()["detail"]
    other_cluster = api.post_batch(make_batch(cluster="c2", node="n1", seq=1), BearerAuth(agent))
    assert other_cluster.status_code == 403
    assert api.post_event(BearerAuth(agent), job_id="5").status_code == 403
    assert api.put_pue("c1", 1.3, BearerAuth(agent)).status_code == 403
    assert job_ids(api.get("/api/v1/jobs", BearerAuth(agent))) == []  # reads no one's jobs

    assert api.post_event(BearerAuth(hooks), job_id="5", user="nobody").status_code == 200
    assert api.post_batch(make_batch(node="n1", seq=1), BearerAuth(hooks)).status_code == 403
    assert api.put_pue("c1", 1.3, BearerAuth(hooks)).status_code == 403
    assert job_ids(api.get("/api/v1/jobs", BearerAuth(hooks))) == ["101", "5"]
    assert api.get("/api/v1/nodes", BearerAuth(hooks)).status_code == 200

    assert api.put_pue("c1", 1.3, BearerAuth(admin)).status_code == 200
    assert api.post_batch(make_batch(node="n1", seq=2), BearerAuth(admin)).status_code == 403

    who = {name: api.whoami(BearerAuth(t)) for name, t in zip(
        ("agent", "hooks", "admin"), issued, strict=True)}
    assert who["agent"]["agent_nodes"] == ["c1/n1"] and not who["agent"]["reads_all"]
    assert who["agent"]["identity"].startswith("token:agent c1/n1 id=")
    assert (who["hooks"]["posts_events"], who["hooks"]["admin"]) == (True, False)
    assert (who["admin"]["admin"], who["admin"]["posts_events"]) == (True, False)

    issue_token(db_url, "--node", "n1", "--revoke")
    revoked = api.post_batch(make_batch(node="n1", seq=3), BearerAuth(agent))
    assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]
    assert api.whoami(BearerAuth(hooks))["posts_events"] is True  # only n1's were revoked

    audit = api.get("/api/v1/audit", BearerAuth(admin)).json()
    assert [e["action"] for e in audit] == ["token.issue"] * 3 + ["pue.set", "token.revoke"]
    assert audit[3]["actor"].startswith("token:admin id=")

    # The database holds no token text: scan every column of both tables.
    from jobenergy.collector.models import AuditLog, AuthToken

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            stored = [repr(tuple(row)) for table in (AuthToken, AuditLog)
                      for row in conn.execute(select(table.__table__))]
    finally:
        engine.dispose()
    assert len(stored) == 3 + 5
    for token in issued:
        secret = token.removeprefix("jet_")
        assert not any(secret[:12] in text or secret[-12:] in text for text in stored)


def test_unknown_bearer_token_is_401(make_api, sqlite_url):
    api = make_api(sqlite_url, auth="token")
    for value in ("jet_" + "A" * 43, "", "x" * 9000, "jet_\xe9"):
        response = api.get("/api/v1/whoami", None,
                           headers={"Authorization": f"Bearer {value}".encode("latin-1")})
        assert response.status_code == 401, (value[:20], response.text)
    assert api.get("/api/v1/whoami", None).headers["www-authenticate"] == "Bearer"


# ---------------------------------------------------------------------------------------------
# 8. Rate limits (a frozen clock: no sleeping, no timing luck)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Freeze the rate limiters' clock; tests move it by changing ``clock[0]``."""
    from jobenergy.api import ratelimit

    now = [1000.0]
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def test_user_rate_limit(make_api, sqlite_url, clock):
    api = make_api(sqlite_url, rate_limit_per_s=1, rate_limit_burst=3)
    statuses = [api.get("/api/v1/whoami", "nobody").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = api.get("/api/v1/whoami", "nobody")
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert "nobody" in limited.json()["detail"]
    assert api.get("/api/v1/whoami", "daemon").status_code == 200  # a bucket per user
    assert all(api.get("/api/v1/whoami", "root").status_code == 200 for _ in range(6))
    clock[0] += 1.0
    assert api.get("/api/v1/whoami", "nobody").status_code == 200


def test_failed_credentials_are_limited_per_client(make_api, sqlite_url, clock, monkeypatch):
    """Past the burst, failures from one address answer 429 (and are not logged one by one);
    a good credential from that same address (a login node, the controller) still gets in."""
    from jobenergy.api.authenticate import FAILURES_BURST

    api = make_api(sqlite_url)
    decoded = []
    real_decode = munge.decode

    def counting(*args: Any, **kwargs: Any) -> Any:
        decoded.append(1)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(munge, "decode", counting)
    responses = [api.get("/api/v1/jobs", None, headers={"Authorization": "MUNGE bogus"})
                 for _ in range(25)]
    assert [r.status_code for r in responses] == (
        [401] * FAILURES_BURST + [429] * (25 - FAILURES_BURST))
    assert int(responses[-1].headers["retry-after"]) >= 1
    assert "too many failed authentications" in responses[-1].json()["detail"]
    assert decoded == []  # malformed: refused without costing munged anything
    forged = api.get("/api/v1/jobs", None, headers={"Authorization": "MUNGE MUNGE:AAAA:"})
    assert forged.status_code == 429 and len(decoded) == 1  # well-formed: munged decides
    assert api.whoami("root")["user"] == "root"
    assert api.whoami("nobody")["user"] == "nobody"
    assert api.get("/api/v1/jobs", None, headers={"Authorization": "MUNGE bogus"}
                   ).status_code == 429
    clock[0] += 1.0  # two failures' worth of refill
    assert api.get("/api/v1/jobs", None, headers={"Authorization": "MUNGE bogus"}
                   ).status_code == 401


# ---------------------------------------------------------------------------------------------
# 9. Startup checks


@pytest.mark.parametrize(("settings", "message"), [
    ({"auth": "none", "host": "0.0.0.0"}, "loopback"),
    ({"munge_socket": "/nonexistent/munge.socket.2"}, "/nonexistent/munge.socket.2"),
    ({"auth": "jwt"}, "--jwt-key"),
    ({"auth": "munge,jwt", "jwt_key": "/nonexistent/jwt_hs256.key"}, "/nonexistent/jwt_hs256"),
])
def test_startup_refuses_unsafe_or_unusable_auth(sqlite_url, munge_socket, settings, message):
    from jobenergy.api.app import create_app
    from jobenergy.collector.settings import ServerSettings

    values = {"db_url": sqlite_url, "migrate": False, "munge_socket": munge_socket, **settings}
    with pytest.raises(ConfigError, match=message):
        create_app(ServerSettings(**values))


def test_startup_refuses_an_empty_jwt_key(sqlite_url, munge_socket, tmp_path):
    from jobenergy.api.app import create_app
    from jobenergy.collector.settings import ServerSettings

    empty = tmp_path / "jwt_hs256.key"
    empty.write_bytes(b"")
    with pytest.raises(ConfigError, match="empty"):
        create_app(ServerSettings(db_url=sqlite_url, migrate=False, auth="jwt", jwt_key=empty))


def test_default_auth_is_munge_when_munged_answers(make_api, sqlite_url):
    api = make_api(sqlite_url, auth="")
    assert api.get("/api/v1/jobs", None).headers["www-authenticate"] == "MUNGE"
    assert api.whoami("nobody")["mechanism"] == "munge"


def test_auth_none_on_loopback_lets_everyone_in(make_api, sqlite_url, make_batch):
    api = make_api(sqlite_url, auth="none", host="127.0.0.1")
    me = api.whoami(None)
    assert (me["mechanism"], me["admin"], me["agent_nodes"]) == ("none", True, None)
    assert api.post_batch(make_batch(node="anything"), None).status_code == 200


# ---------------------------------------------------------------------------------------------
# whoami


def test_whoami_roles(make_api, sqlite_url):
    api = make_api(sqlite_url)
    root = api.whoami("root")
    assert (root["user"], root["uid"], root["admin"], root["reads_all"],
            root["posts_events"]) == ("root", 0, True, True, True)
    assert root["agent_nodes"] == ["n1", "n2"]
    assert root["identity"] == "munge:root(uid=0)@127.0.0.1"
    nobody = api.whoami("nobody")
    assert (nobody["user"], nobody["uid"], nobody["admin"], nobody["reads_all"],
            nobody["posts_events"], nobody["agent_nodes"]) == (
        "nobody", 65534, False, False, False, [])
    assert nobody["private_data"] == ["jobs", "usage", "users", "accounts"]


def test_root_without_a_node_mapping_posts_for_its_own_hostname(make_api, sqlite_url,
                                                                 make_batch):
    import socket

    try:
        short = socket.gethostbyaddr("127.0.0.1")[0].split(".")[0]
    except OSError:  # no name for the address: root there speaks for no node at all
        api = make_api(sqlite_url, nodes={})
        assert api.whoami("root")["agent_nodes"] == []
        assert api.post_batch(make_batch(node="n1")).status_code == 403
        return
    api = make_api(sqlite_url, nodes={})
    assert api.whoami("root")["agent_nodes"] == [short]
    assert api.post_batch(make_batch(node=short)).status_code == 200
    assert api.post_batch(make_batch(node="n1")).status_code == 403
