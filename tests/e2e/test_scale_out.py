"""Scale-out: stateless collectors behind a real load balancer, reads from a real replica.

- Several real ``jobenergy server`` processes on one PostgreSQL database behind a real
  haproxy (Debian's), fed by real agent senders (``agent/pusher.py`` threads, each with its own
  ``agent/spool.py`` spool holding its node's batches). The database ends up exactly as with one
  collector: same per-node and per-job totals, same API answers. When a collector is SIGKILLed
  mid-way, haproxy and the agents' retries still land every batch exactly once.
- A read-only server (``read_only``) on a PostgreSQL streaming replica answers the same reads
  as the primary's server and refuses writes with 503.

haproxy missing: the tests fail in CI (``CI=true``) and are skipped elsewhere, like PostgreSQL
(``scripts/system-deps.sh`` installs both).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobenergy.agent.pusher import Pusher
from jobenergy.agent.spool import Spool
from jobenergy.sim.processes import free_port, start_server, stop

HAPROXY = Path("/usr/sbin/haproxy")
HAPROXY_MISSING = ("haproxy not found: apt-get install haproxy (or run `make test`, which "
                   "installs it)")

CLUSTER = "c1"
NODES = 8
BATCHES_PER_NODE = 20
INTERVALS_PER_BATCH = 2
INTERVAL_S = 10.0
#: A job that runs on every node: concurrent batches from several collectors upsert its rows.
SHARED_JOB = "900"
DRAIN_TIMEOUT_S = 180.0
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def _haproxy() -> Path:
    """Return Debian's haproxy; fail in CI, else skip, when it is not installed."""
    if HAPROXY.is_file():
        return HAPROXY
    found = shutil.which("haproxy")
    if found:
        return Path(found)
    if os.environ.get("CI") == "true":
        pytest.fail(HAPROXY_MISSING)
    pytest.skip(HAPROXY_MISSING)


def _wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


# -- databases ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def make_db(pg_url: str) -> Iterator[Callable[[], str]]:
    """Return a factory of new, migrated databases on the session's server (dropped after)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from jobenergy.collector.db import upgrade

    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    names: list[str] = []

    def factory() -> str:
        name = f"jobenergy_so_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        names.append(name)
        url = make_url(pg_url).set(database=name).render_as_string(hide_password=False)
        upgrade(url)
        return url

    try:
        yield factory
    finally:
        with admin.connect() as conn:
            for name in names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _count_batches(url: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM ingested_batch")).scalar_one()
    finally:
        engine.dispose()


# -- batches in the agents' spools ---------------------------------------------------------

def _node(i: int) -> str:
    return f"n{i:02d}"


def _jobs_of(i: int, k: int) -> dict[str, int]:
    """Jobs on node ``i`` during its batch ``k``: the shared job and one of the node's own."""
    own = f"{1000 + i}" if k < BATCHES_PER_NODE // 2 else f"{1100 + i}"
    return {SHARED_JOB: 1, own: 2 + i % 3}


@dataclass
class Expected:
    """What the database must hold after every batch, computed from the batches alone."""

    batches: int = 0
    # (node, component) -> [measured, unattributed, attributed, intervals]
    nodes: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    # job -> node -> component -> µJ
    jobs: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    def add(self, batch: Any) -> None:
        self.batches += 1
        for interval in batch.intervals:
            for src in interval.sources:
                row = self.nodes.setdefault((batch.node, src.component), [0, 0, 0, 0])
                attributed = sum(src.jobs_uj.values())
                row[0] += src.measured_uj
                row[1] += src.unattributed_uj
                row[2] += attributed
                row[3] += 1
                for job_id, uj in src.jobs_uj.items():
                    per_node = self.jobs.setdefault(job_id, {}).setdefault(batch.node, {})
                    per_node[src.component] = per_node.get(src.component, 0) + uj


@dataclass
class Spools:
    """Spool folders (one per node) holding every batch, and what they must add up to."""

    root: Path
    expected: Expected

    def copy(self, target: Path) -> Path:
        """Copy the spools (same files, same sequence numbers) for one run; return the copy."""
        shutil.copytree(self.root, target)
        return target


@pytest.fixture
def spools(tmp_path: Path, make_batch: Callable[..., Any]) -> Spools:
    """Seal each node's batches into its own spool, as the agent does (``agent/daemon.py``)."""
    root = tmp_path / "spools"
    expected = Expected()
    for i in range(NODES):
        spool = Spool(root / _node(i))
        for k in range(BATCHES_PER_NODE):
            batch = make_batch(
                cluster=CLUSTER, node=_node(i), boot_id=f"boot-{i}",
                start=T0 + timedelta(seconds=k * INTERVALS_PER_BATCH * INTERVAL_S),
                n_intervals=INTERVALS_PER_BATCH, interval_s=INTERVAL_S, jobs=_jobs_of(i, k),
                power_w=80.0 + 5 * i,
            )
            expected.add(batch)
            fields = batch.model_dump(mode="json", exclude={"seq", "intervals"})
            intervals = "[" + ",".join(iv.model_dump_json() for iv in batch.intervals) + "]"
            spool.seal(fields, {"intervals": intervals})
    return Spools(root, expected)


# -- the load balancer ---------------------------------------------------------------------

HAPROXY_CONFIG = """\
global
    maxconn 512
    stats socket {socket} mode 600 level operator
    log stderr format short local0 info
    # L7 retries replay the request from a buffer: a body larger than bufsize is never retried.
    tune.bufsize 131072

defaults
    mode http
    log global
    option httplog
    timeout connect 1s
    timeout client 30s
    timeout server 20s
    timeout queue 10s
    timeout check 1s
    # Ingest is idempotent by batch key (a replay is acknowledged as a duplicate), so a request
    # a collector died on may be replayed on another one.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout

frontend jobenergy
    bind 127.0.0.1:{port}
    default_backend collectors

backend collectors
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    default-server check inter 1s fall 2 rise 1
{servers}
"""


class HAProxy:
    """A real haproxy in front of collectors on 127.0.0.1 (round robin, health-checked)."""

    def __init__(self, binary: Path, workdir: Path, servers: dict[str, int]) -> None:
        self.binary = binary
        self.port = free_port()
        self.socket = workdir / "haproxy.sock"
        self.config = workdir / "haproxy.cfg"
        self.log = workdir / "haproxy.log"
        self.servers = servers
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Return the frontend's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> HAProxy:
        """Write the config, check it, start haproxy and wait until every server is UP."""
        servers = "\n".join(f"    server {name} 127.0.0.1:{port}"
                            for name, port in self.servers.items())
        self.config.write_text(HAPROXY_CONFIG.format(socket=self.socket, port=self.port,
                                                     servers=servers))
        check = subprocess.run([str(self.binary), "-c", "-f", str(self.config)],
                               capture_output=True, text=True, check=False)
        assert check.returncode == 0, f"haproxy refuses its config:\n{check.stdout}{check.stderr}"
        log = open(self.log, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen([str(self.binary), "-db", "-f", str(self.config)],
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def ready() -> bool:
            assert self.proc is not None
            assert self.proc.poll() is None, f"haproxy exited; see {self.log}"
            try:
                if not httpx.get(f"{self.url}/healthz", timeout=1).is_success:
                    return False
                stats = self.stats()
            except (httpx.HTTPError, OSError):
                return False
            return all(stats[name]["status"] == "UP" for name in self.servers)

        _wait_for(ready, timeout_s, "haproxy to answer /healthz with every collector UP")
        return self

    def stats(self) -> dict[str, dict[str, str]]:
        """Return ``show stat`` of the backend: server name (and ``BACKEND``) -> fields."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket))
            sock.sendall(b"show stat\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        text = b"".join(chunks).decode().lstrip("# ")
        return {row["svname"]: row for row in csv.DictReader(io.StringIO(text))
                if row["pxname"] == "collectors"}

    def served_2xx(self, name: str) -> int:
        """Return how many 2xx answers server ``name`` gave through haproxy."""
        return int(self.stats()[name]["hrsp_2xx"] or 0)

    def stop(self) -> None:
        """Stop haproxy."""
        if self.proc is not None:
            stop(self.proc)


@pytest.fixture
def haproxy_bin() -> Path:
    """Return Debian's haproxy (fail in CI, skip elsewhere, when missing)."""
    return _haproxy()


@pytest.fixture
def processes() -> Iterator[list[Any]]:
    """Collect started servers and haproxies; stop them all at teardown, newest first."""
    started: list[Any] = []
    yield started
    for proc in reversed(started):
        if isinstance(proc, HAProxy):
            proc.stop()
        else:
            stop(proc)


def _collector(db_url: str, log: Path, processes: list[Any], *extra: str) -> tuple[Any, int]:
    port = free_port()
    proc = start_server(db_url, port, log, "--no-migrate", *extra, auth="none")
    processes.append(proc)
    return proc, port


# -- the agents' senders -------------------------------------------------------------------

class Senders:
    """One real agent sender (``Pusher`` thread) per node spool, all pushing at once."""

    def __init__(self, url: str, spool_root: Path) -> None:
        self.spools = [Spool(spool_root / _node(i)) for i in range(NODES)]
        self.pushers = [
            Pusher(url, spool, timeout_s=30.0, backoff_initial_s=0.05, backoff_max_s=0.5)
            for spool in self.spools
        ]

    def start(self) -> Senders:
        """Start every sender thread."""
        for pusher in self.pushers:
            pusher.start()
        return self

    @property
    def sent(self) -> int:
        """Return how many batches were acknowledged so far."""
        return sum(p.sent_total for p in self.pushers)

    @property
    def failures(self) -> int:
        """Return how many pushes failed (and were retried) so far."""
        return sum(p.failures_total for p in self.pushers)

    @property
    def rejected(self) -> int:
        """Return how many batches the collectors refused (kept in ``rejected/``)."""
        return sum(s.rejected_total + len(list(s.rejected_dir.iterdir())) for s in self.spools)

    def wait_drained(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Wait until every spool is empty, then stop the senders."""
        try:
            _wait_for(lambda: all(s.pending_count() == 0 for s in self.spools), timeout_s,
                      "every spool to drain")
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop the sender threads and close their clients."""
        for pusher in self.pushers:
            pusher.stop()
            pusher.close()


# -- reads ---------------------------------------------------------------------------------

def _get(base_url: str, path: str) -> Any:
    resp = httpx.get(f"{base_url}{path}", timeout=30)
    assert resp.status_code == 200, f"GET {path}: {resp.status_code} {resp.text[:500]}"
    return resp.json()


def _read_totals(base_url: str) -> dict[str, Any]:
    """Return the nodes' and jobs' answers, in a stable order."""
    nodes = _get(base_url, f"/api/v1/nodes?cluster={CLUSTER}")
    jobs = _get(base_url, f"/api/v1/jobs?cluster={CLUSTER}&limit=10000")
    return {
        "nodes": sorted(nodes["nodes"], key=lambda r: (r["node"], r["component"])),
        "refusals": nodes["refusals"],
        "jobs": sorted(jobs["jobs"], key=lambda j: j["job_id"]),
        "total": jobs["total"],
    }


def _assert_expected(read: dict[str, Any], expected: Expected) -> None:
    """The answers hold exactly the totals computed from the batches."""
    assert read["refusals"] == []
    got_nodes = {
        (r["node"], r["component"]):
            [r["measured_uj"], r["unattributed_uj"], r["attributed_uj"], r["intervals"]]
        for r in read["nodes"]
    }
    assert got_nodes == expected.nodes
    assert read["total"] == len(expected.jobs)
    got_jobs = {j["job_id"]: j for j in read["jobs"]}
    assert set(got_jobs) == set(expected.jobs)
    for job_id, by_node in expected.jobs.items():
        job = got_jobs[job_id]
        assert job["by_node"] == by_node, job_id
        assert job["energy_uj"] == sum(uj for comps in by_node.values() for uj in comps.values())
    assert len(got_jobs[SHARED_JOB]["by_node"]) == NODES


# -- 1. N stateless collectors behind haproxy ----------------------------------------------

@pytest.mark.postgres
def test_two_collectors_behind_haproxy_store_exactly_what_one_does(
    haproxy_bin: Path, make_db: Callable[[], str], spools: Spools, tmp_path: Path,
    processes: list[Any],
) -> None:
    """Eight agents push through haproxy to two collectors on one database: the totals are
    those of the batches, and every answer is what a single collector's database gives."""
    # One collector, straight: the reference.
    single_db = make_db()
    single, single_port = _collector(single_db, tmp_path / "single.log", processes)
    one = Senders(f"http://127.0.0.1:{single_port}", spools.copy(tmp_path / "run-single"))
    one.start().wait_drained()
    reference = _read_totals(f"http://127.0.0.1:{single_port}")
    stop(single)

    # Two collectors behind haproxy, on another database.
    shared_db = make_db()
    ports = {}
    for name in ("c1", "c2"):
        _, ports[name] = _collector(shared_db, tmp_path / f"{name}.log", processes)
    lb = HAProxy(haproxy_bin, tmp_path, ports).start()
    processes.append(lb)
    two = Senders(lb.url, spools.copy(tmp_path / "run-lb"))
    two.start().wait_drained()

    assert one.rejected == two.rejected == 0
    assert one.sent == two.sent == spools.expected.batches
    stats = lb.stats()
    for name in ports:  # round robin: both collectors stored batches
        assert int(stats[name]["hrsp_2xx"]) > 0, stats[name]

    scaled = _read_totals(lb.url)
    _assert_expected(scaled, spools.expected)
    _assert_expected(reference, spools.expected)
    assert json.dumps(scaled, sort_keys=True) == json.dumps(reference, sort_keys=True)
    assert _count_batches(shared_db) == _count_batches(single_db) == spools.expected.batches


@pytest.mark.postgres
def test_a_collector_killed_mid_way_loses_and_doubles_nothing(
    haproxy_bin: Path, make_db: Callable[[], str], spools: Spools, tmp_path: Path,
    processes: list[Any],
) -> None:
    """SIGKILL one of two collectors while the agents push: haproxy's retries and the agents'
    land every batch exactly once, and no batch is refused."""
    db = make_db()
    procs, ports = {}, {}
    for name in ("c1", "c2"):
        procs[name], ports[name] = _collector(db, tmp_path / f"{name}.log", processes)
    lb = HAProxy(haproxy_bin, tmp_path, ports).start()
    processes.append(lb)
    senders = Senders(lb.url, spools.copy(tmp_path / "run")).start()
    total = spools.expected.batches
    try:
        _wait_for(lambda: senders.sent >= total // 3 and lb.served_2xx("c1") > 0, 120,
                  "a third of the batches delivered, some by c1")
        served_by_victim = lb.served_2xx("c1")
        sent_before = senders.sent
        assert sent_before < total, "the batches went through before the kill: make more"
        procs["c1"].kill()  # SIGKILL: in-flight requests die with it
        procs["c1"].wait()
    except BaseException:
        senders.stop()
        raise
    senders.wait_drained()

    _wait_for(lambda: lb.stats()["c1"]["status"].startswith("DOWN"), 30,
              "haproxy's checks to mark the killed collector DOWN")
    stats = lb.stats()
    assert served_by_victim > 0
    assert int(stats["c2"]["hrsp_2xx"]) > 0
    retried = (senders.failures + int(stats["BACKEND"]["wretr"] or 0)
               + int(stats["BACKEND"]["wredis"] or 0))
    assert retried > 0, "nothing was retried: the kill missed every request"
    assert senders.rejected == 0
    assert senders.sent == total
    assert _count_batches(db) == total
    _assert_expected(_read_totals(lb.url), spools.expected)


# -- 2. reads from a PostgreSQL streaming replica ------------------------------------------

def _pgserver() -> Any:
    """Return ``tests/pgserver.py`` (loaded by ``tests/conftest.py``, under that name)."""
    import importlib.util
    import sys

    name = "jobenergy_tests_pgserver"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "pgserver.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def primary_and_replica() -> Iterator[tuple[Any, Any]]:
    """Yield a private PostgreSQL primary (database ``jobenergy``) and its streaming replica."""
    pgserver = _pgserver()
    bindir = pgserver.find_pg_bin()
    if bindir is None:
        if os.environ.get("CI") == "true":
            pytest.fail(pgserver.NOT_FOUND_MESSAGE)
        pytest.skip(pgserver.NOT_FOUND_MESSAGE)
    primary = pgserver.PgServer(bindir).start()
    try:
        primary.create_database("jobenergy")
        replica = primary.start_replica()
        try:
            yield primary, replica
        finally:
            replica.stop()
    finally:
        primary.stop()


READ_PATHS = (
    f"/api/v1/nodes?cluster={CLUSTER}",
    f"/api/v1/jobs?cluster={CLUSTER}&limit=1000",
    "/api/v1/jobs/1000",
    f"/api/v1/jobs/{SHARED_JOB}",
    "/api/v1/leaderboards/models",
    "/api/v1/summary?group_by=user",
    "/api/v1/summary?group_by=model",
    "/api/v1/clusters",
    "/api/v1/whoami",
)


@pytest.mark.postgres
def test_read_only_server_on_a_streaming_replica_answers_like_the_primary(
    primary_and_replica: tuple[Any, Any], make_batch: Callable[..., Any], tmp_path: Path,
    processes: list[Any],
) -> None:
    """A ``read_only`` server on a replica starts without writing, answers every read as the
    primary's server does, follows the primary, and answers writes 503 with a clear detail."""
    from jobenergy.api.app import READ_ONLY_DETAIL

    primary, replica = primary_and_replica
    primary_port = free_port()
    processes.append(start_server(primary.url("jobenergy"), primary_port,
                                  tmp_path / "primary.log", auth="none"))  # migrates
    writer = f"http://127.0.0.1:{primary_port}"

    def post_batch(base_url: str, batch: Any) -> httpx.Response:
        return httpx.post(f"{base_url}/api/v1/batches", content=batch.model_dump_json(),
                          headers={"Content-Type": "application/json"}, timeout=30)

    batches = [
        make_batch(cluster=CLUSTER, node=_node(i), boot_id=f"boot-{i}", seq=k,
                   start=T0 + timedelta(seconds=k * 30), jobs=_jobs_of(i, k * 10))
        for i in range(3) for k in range(3)
    ]
    for batch in batches:
        assert post_batch(writer, batch).status_code == 200
    events = [
        {"cluster": CLUSTER, "job_id": "1000", "event": "start", "time": T0.isoformat(),
         "user": "alice", "uid": 1000, "account": "ml", "partition": "gpu", "name": "train",
         "nodes": [_node(0)], "tags": {"model": "resnet50", "phase": "training"}},
        {"cluster": CLUSTER, "job_id": "1000", "event": "end",
         "time": (T0 + timedelta(seconds=90)).isoformat(), "state": "COMPLETED",
         "exit_code": 0},
        {"cluster": CLUSTER, "job_id": SHARED_JOB, "event": "start", "time": T0.isoformat(),
         "user": "bob", "uid": 1001, "account": "nlp", "partition": "gpu",
         "nodes": [_node(i) for i in range(3)], "tags": {"model": "llama", "phase": "inference"}},
        {"cluster": CLUSTER, "job_id": SHARED_JOB, "event": "end",
         "time": (T0 + timedelta(seconds=90)).isoformat(), "state": "COMPLETED",
         "exit_code": 0},
    ]
    for event in events:
        resp = httpx.post(f"{writer}/api/v1/jobs/events", json=event, timeout=30)
        assert resp.status_code == 200, resp.text
    replica.wait_for_replay()

    # migrate is on by default: read_only must skip it, or the start fails on the replica.
    config = tmp_path / "replica.toml"
    config.write_text("[server]\nread_only = true\n")
    reader_port = free_port()
    processes.append(start_server(replica.url("jobenergy"), reader_port,
                                  tmp_path / "replica.log", "--config", str(config),
                                  auth="none"))
    reader = f"http://127.0.0.1:{reader_port}"

    answers = {path: _get(writer, path) for path in READ_PATHS}
    job_ids = {job_id for b in batches for iv in b.intervals for job_id in iv.sources[0].jobs_uj}
    assert {j["job_id"] for j in answers[READ_PATHS[1]]["jobs"]} == job_ids
    assert {row["model"] for row in answers["/api/v1/leaderboards/models"]} == {
        "resnet50", "llama"}
    for path in READ_PATHS:
        assert _get(reader, path) == answers[path], path

    # Writes: 503 (an agent pointed here by mistake keeps its batch and retries), not 500.
    extra = make_batch(cluster=CLUSTER, node=_node(0), boot_id="boot-0", seq=3,
                       start=T0 + timedelta(seconds=90), jobs={"1000": 1})
    writes = [
        post_batch(reader, extra),
        httpx.post(f"{reader}/api/v1/jobs/events", json=events[0], timeout=30),
        httpx.put(f"{reader}/api/v1/clusters/{CLUSTER}/pue", json={"pue": 1.3}, timeout=30),
        httpx.delete(f"{reader}/api/v1/clusters/{CLUSTER}/pue/series", timeout=30),
    ]
    for resp in writes:
        assert resp.status_code == 503, (resp.request.method, resp.request.url, resp.text)
        assert resp.json() == {"detail": READ_ONLY_DETAIL}

    # It follows the primary: a batch stored there is read here once replayed.
    assert post_batch(writer, extra).status_code == 200
    replica.wait_for_replay()
    path = f"/api/v1/nodes?cluster={CLUSTER}"
    assert _get(reader, path) == _get(writer, path) != answers[path]
    assert "Traceback" not in (tmp_path / "replica.log").read_text()


def test_read_only_app_writes_nothing_and_refuses_writes(
    db_url: str, make_client: Callable[[Any], Any],
    db_snapshot: Callable[[str], dict[str, list[tuple[Any, ...]]]],
    monkeypatch: pytest.MonkeyPatch, make_batch: Callable[..., Any],
) -> None:
    """``JOBENERGY_SERVER_READ_ONLY``: no migration, partition or default factors at start
    (a PUE other than the stored one would be stored otherwise), reads answer, writes 503."""
    from jobenergy.api.app import READ_ONLY_DETAIL
    from jobenergy.collector.settings import ServerSettings

    before = db_snapshot(db_url)
    monkeypatch.setenv("JOBENERGY_SERVER_READ_ONLY", "true")
    settings = ServerSettings(db_url=db_url, auth="none", migrate=True, pue=1.7,
                              carbon_intensity_g_per_kwh=123.0)
    assert settings.read_only
    client = make_client(settings)
    assert client.get("/healthz").status_code == 200
    assert client.get("/api/v1/nodes").json() == {"nodes": [], "refusals": []}
    assert client.get("/api/v1/jobs").json()["jobs"] == []
    for method, path, body in (
        ("POST", "/api/v1/batches", make_batch().model_dump_json()),
        ("POST", "/api/v1/jobs/events", "{}"),
        ("PUT", f"/api/v1/clusters/{CLUSTER}/carbon", '{"g_per_kwh": 1}'),
        ("POST", f"/api/v1/clusters/{CLUSTER}/carbon/series", "[]"),
        ("DELETE", f"/api/v1/clusters/{CLUSTER}/carbon/series", None),
    ):
        resp = client.request(method, path, content=body,
                              headers={"Content-Type": "application/json"})
        assert (resp.status_code, resp.json()) == (503, {"detail": READ_ONLY_DETAIL}), path
    assert db_snapshot(db_url) == before
