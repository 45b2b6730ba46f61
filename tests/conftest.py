"""Fixtures shared by the whole suite.

Keep imports here to the standard library and pytest: agent tests must be able to run (and
check that the agent never imports SQLAlchemy) without the server stack being loaded. Server
fixtures import it lazily.

- ``pg_url``: a PostgreSQL database for the session: ``$JOBENERGY_TEST_PG_URL`` (its tables
  are wiped by ``db_url``), or a private server started from Debian's binaries.
- ``db_url``: an empty, migrated database per test, once on SQLite and once on PostgreSQL.
- ``munge_socket``: the socket of a private munged for the session (own key, own socket).
- ``make_munged``: factory of further private munged servers, each with another key.
- ``make_batch``: factory of valid, energy-conserving ``Batch`` objects.
- ``server_settings`` / ``client``: a FastAPI TestClient over ``create_app``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo what a command run in-process (CliRunner) does to logging: CLI entry points
    configure the root logger (core/logs.py), which must not leak into the next test."""
    root = logging.getLogger()
    named = ("httpx", "httpcore", "alembic")
    saved = root.level, list(root.handlers), {n: logging.getLogger(n).level for n in named}
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


def _load_helper(stem: str) -> ModuleType:
    # Loaded by path: putting tests/ on sys.path would let tests/api shadow jobenergy.api.
    name = f"jobenergy_tests_{stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{stem}.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


pgserver = _load_helper("pgserver")
mungeserver = _load_helper("mungeserver")

#: Start of every default test scenario.
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)

DEFAULT_SOURCES: tuple[tuple[str, str], ...] = (
    ("cpu", "package-0"),
    ("dram", "package-0/dram"),
    ("gpu", "gpu/GPU-00000000-0000-0000-0000-000000000000"),
    ("psys", "psys"),
)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """Yield the SQLAlchemy URL of a PostgreSQL database for this session."""
    external = os.environ.get("JOBENERGY_TEST_PG_URL")
    if external:
        yield external
        return
    bindir = pgserver.find_pg_bin()
    if bindir is None:
        if os.environ.get("CI") == "true":
            pytest.fail(pgserver.NOT_FOUND_MESSAGE)
        pytest.skip(pgserver.NOT_FOUND_MESSAGE)
    server = pgserver.PgServer(bindir).start()
    try:
        yield server.create_database("jobenergy_test")
    finally:
        server.stop()


def _munged() -> Path:
    """Return the munged executable; fail in CI, else skip, when it is not installed."""
    munged = mungeserver.find_munged()
    if munged is None:
        if os.environ.get("CI") == "true":
            pytest.fail(mungeserver.NOT_FOUND_MESSAGE)
        pytest.skip(mungeserver.NOT_FOUND_MESSAGE)
    return munged


@pytest.fixture(scope="session")
def munge_socket() -> Iterator[str]:
    """Yield the socket path of a private munged (its own random key) for this session."""
    with mungeserver.MungeServer(_munged()) as server:
        yield server.socket_path


@pytest.fixture
def make_munged() -> Iterator[Callable[..., Any]]:
    """Return a factory ``make_munged(**kwargs) -> MungeServer``, started; stopped at teardown.

    Each server has its own random key unless ``key=`` is given, so it refuses the
    credentials of ``munge_socket``'s server ("another realm"). Keywords go to
    ``tests/mungeserver.py``'s ``MungeServer``.
    """
    munged = _munged()
    servers: list[Any] = []

    def factory(**kwargs: Any) -> Any:
        server = mungeserver.MungeServer(munged, **kwargs).start()
        servers.append(server)
        return server

    yield factory
    for server in reversed(servers):
        server.stop()


@contextlib.contextmanager
def fresh_database(pg_url: str) -> Iterator[str]:
    """Create a new, empty PostgreSQL database on ``pg_url``'s server; yield its URL; drop it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"jobenergy_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture
def pg_fresh_url(pg_url: str) -> Iterator[str]:
    """Yield the URL of a new, empty PostgreSQL database, dropped afterwards."""
    with fresh_database(pg_url) as url:
        yield url


@pytest.fixture(scope="module")
def pg_module_url(pg_url: str) -> Iterator[str]:
    """Yield the URL of a new, empty PostgreSQL database for one test module (the live Slurm
    modules: each stack's jobs and energy must not show in another's)."""
    with fresh_database(pg_url) as url:
        yield url


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a migrated SQLite file that tests copy (migrating once is faster)."""
    from jobenergy.collector.db import upgrade

    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def _pg_migrated(pg_url: str) -> str:
    """Return ``pg_url`` after migrating it to head once."""
    from jobenergy.collector.db import upgrade

    upgrade(pg_url)
    return pg_url


def _wipe_pg(url: str) -> None:
    from sqlalchemy import create_engine, text

    from jobenergy.collector.models import Base

    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL lock_timeout = '10s'"))
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Return the URL of an empty database at the latest migration (SQLite, then PostgreSQL)."""
    if request.param == "sqlite":
        path = tmp_path / "jobenergy.db"
        shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("_pg_migrated")
    _wipe_pg(url)
    return url


def _make_batch(
    *,
    cluster: str = "c1",
    node: str = "n1",
    boot_id: str = "boot-1",
    seq: int = 0,
    start: datetime = T0,
    n_intervals: int = 3,
    interval_s: float = 10.0,
    jobs: Mapping[str, int] | None = None,
    unattributed_weight: int = 1,
    sources: Sequence[tuple[str, str]] = DEFAULT_SOURCES,
    power_w: float = 100.0,
    uid: int | None = 1000,
    estimated: bool = False,
    device_name: str = "NVIDIA H100 80GB HBM3",
    wraps: int = 0,
    resets: int = 0,
) -> Any:
    """Build a valid Batch; each source's energy is split by weight, so it conserves exactly.

    ``jobs`` maps job id → weight (default ``{"101": 1}``); the node's unattributed share has
    ``unattributed_weight``; ``psys`` is always wholly unattributed. Each source's measured
    energy is about ``power_w × interval_s`` with a per-interval and per-source offset so that
    sums are not trivially round.
    """
    from jobenergy.core.schema import Batch, Interval, JobSample, SourceEnergy
    from jobenergy.core.split import split_uj

    jobs = {"101": 1} if jobs is None else dict(jobs)
    intervals = []
    for i in range(n_intervals):
        begin = start + timedelta(seconds=i * interval_s)
        srcs = []
        for s, (component, source) in enumerate(sources):
            measured = int(power_w * interval_s * 1_000_000) + 7_919 * i + 104_729 * s
            weights = {} if component == "psys" else dict(jobs)
            weights[None] = unattributed_weight if weights and any(weights.values()) else 1
            parts = split_uj(measured, weights)
            unattributed = parts.pop(None)
            srcs.append(
                SourceEnergy(
                    component=component,
                    source=source,
                    device_name=device_name if component == "gpu" else None,
                    measured_uj=measured,
                    jobs_uj=parts,
                    unattributed_uj=unattributed,
                    estimated=estimated and component == "gpu",
                    wraps=wraps if component == "cpu" else 0,
                    resets=resets if component == "gpu" else 0,
                )
            )
        intervals.append(
            Interval(
                start=begin,
                end=begin + timedelta(seconds=interval_s),
                sources=srcs,
                jobs=[JobSample(job_id=job_id, uid=uid) for job_id in jobs],
            )
        )
    return Batch(
        schema_version=1, cluster=cluster, node=node, boot_id=boot_id, seq=seq,
        agent_version="test", intervals=intervals,
    )


@pytest.fixture
def make_batch() -> Callable[..., Any]:
    """Return the factory of valid batches (see ``_make_batch`` for its keywords)."""
    return _make_batch


@pytest.fixture
def server_settings(db_url: str) -> Any:
    """Return ServerSettings on the test database (migrated already; fallback carbon)."""
    from jobenergy.collector.settings import ServerSettings

    return ServerSettings(
        db_url=db_url, auth="none", migrate=False, pue=1.0, carbon_intensity_g_per_kwh=None,
        max_body_bytes=1024 * 1024,
    )


@pytest.fixture
def make_client() -> Iterator[Callable[[Any], Any]]:
    """Return a factory ``make_client(settings) -> TestClient``; clients close at teardown."""
    from fastapi.testclient import TestClient

    from jobenergy.api.app import create_app

    clients: list[Any] = []

    def factory(settings: Any) -> Any:
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in reversed(clients):
        client.__exit__(None, None, None)


@pytest.fixture
def client(server_settings: Any, make_client: Callable[[Any], Any]) -> Any:
    """Return a TestClient over ``create_app(server_settings)``."""
    return make_client(server_settings)


def _snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    from sqlalchemy import create_engine, select

    from jobenergy.collector.models import Base

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                table.name: [
                    tuple(row)
                    for row in conn.execute(select(table).order_by(*table.primary_key.columns))
                ]
                for table in Base.metadata.sorted_tables
                # Materialised from the others in the background (collector/rollups.py).
                if not table.name.startswith("rollup_")
            }
    finally:
        engine.dispose()


@pytest.fixture
def db_snapshot() -> Callable[[str], dict[str, list[tuple[Any, ...]]]]:
    """Return ``snapshot(url)``: every collector table's rows, to compare before/after."""
    return _snapshot


@pytest.fixture(scope="module")
def ipmi_bmc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real BMC for the module: Debian openipmi's ipmi_sim on loopback (LAN), reading 0 W
    until the test sets its power (``set_power_w``). Missing tools fail in CI, naming them."""
    from jobenergy.sim.bmc import ipmi as ipmi_emu

    missing = ipmi_emu.missing_parts()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"missing {', '.join(missing)}: {ipmi_emu.NOT_FOUND_MESSAGE}")
        pytest.skip(ipmi_emu.NOT_FOUND_MESSAGE)
    emu = ipmi_emu.IpmiSimBmc(tmp_path_factory.mktemp("ipmi_bmc"), power_w=0)
    emu.start()
    yield emu
    emu.stop()
