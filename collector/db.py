"""Engines and schema migrations.

``make_engine`` knows the two supported backends: PostgreSQL through psycopg 3 (production)
and SQLite (the embedded default). ``upgrade`` runs the Alembic migrations shipped inside this
package, with a Config built in code so that no ``alembic.ini`` in the working directory is
needed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: How long a SQLite writer waits for the database lock before failing, ms.
SQLITE_BUSY_TIMEOUT_MS = 30_000

#: Key of the PostgreSQL advisory lock that serialises concurrent ``upgrade`` calls
#: (several collector replicas starting at once).
_MIGRATION_LOCK_KEY = 0x6A6F62656E  # b"joben"


def normalise_url(url: str) -> str:
    """Map ``postgresql://`` and ``postgres://`` URLs to the psycopg 3 driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the read API query while the collector writes; foreign keys are off by
    # default in SQLite; the busy timeout makes concurrent writers wait instead of failing.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _sqlite_in_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


#: Seconds a new PostgreSQL connection may take, unless the URL says (``?connect_timeout=``).
CONNECT_TIMEOUT_S = 5
#: libpq's settings for a server that stops answering, unless the URL says: connecting gives
#: up after ``CONNECT_TIMEOUT_S``; data sent and not acknowledged for 30 s, or an idle
#: connection (waiting for an answer) whose keepalive probes go unanswered for 30 + 3 × 10 s,
#: is closed. A long query is not cut: its server acknowledges it and answers the probes.
LIBPQ_TIMEOUTS = {
    "connect_timeout": CONNECT_TIMEOUT_S, "tcp_user_timeout": 30_000, "keepalives": 1,
    "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
}


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine for ``url`` with the per-backend settings jobenergy relies on.

    Args:
        url: SQLAlchemy URL (``sqlite:///file.db``, ``postgresql+psycopg://...``).
        **kwargs: Passed to :func:`sqlalchemy.create_engine`.

    Returns:
        The engine. SQLite connections get WAL, foreign keys and a busy timeout; PostgreSQL
        ones are pinged before use, give up on a silent server (``LIBPQ_TIMEOUTS``), and the
        pool never opens more than ``pool_size`` (5).
    """
    url = normalise_url(url)
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        if _sqlite_in_memory(make_url(url)):
            # Its pool is one connection per thread, and takes no sizing options.
            kwargs.pop("pool_size", None)
            kwargs.pop("pool_timeout", None)
        kwargs.setdefault("connect_args", {}).setdefault("check_same_thread", False)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    # A host gone behind a firewall that drops packets holds a connection for the OS's TCP
    # timeouts (minutes to a quarter of an hour): libpq would wait for it without end while
    # connecting, and ingest with it. Give up sooner, answer 503, and the agents retry. The
    # URL's own settings win.
    query = make_url(url).query
    connect_args = dict(kwargs.get("connect_args", {}))
    for name, value in LIBPQ_TIMEOUTS.items():
        if name not in query:
            connect_args.setdefault(name, value)
    kwargs["connect_args"] = connect_args
    # A fixed set of kept connections: overflow ones are closed on return, so a busy server
    # would make PostgreSQL fork a backend per request (callers size it with pool_size).
    kwargs.setdefault("max_overflow", 0)
    return create_engine(url, **kwargs)


def alembic_config(url: str) -> Config:
    """Build the Alembic config for the packaged migrations, pointing at ``url``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision`` (idempotent: at head it does nothing).

    On PostgreSQL a transaction-scoped advisory lock serialises replicas migrating at once.

    Args:
        url: SQLAlchemy URL of the database.
        revision: Alembic revision to reach.
    """
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
            cfg = alembic_config(url)
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()
    logger.info("database migrated revision=%s", revision)


def schema_revision_problem(url: str) -> str | None:
    """Return why the database at ``url`` is not at the packaged head revision, or None."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    heads = set(ScriptDirectory.from_config(alembic_config(url)).get_heads())
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    finally:
        engine.dispose()
    if current == heads:
        return None
    have = ", ".join(sorted(current)) or "no schema"
    return (
        f"database {make_url(normalise_url(url)).render_as_string(hide_password=True)} is at "
        f"{have}, this server needs {', '.join(sorted(heads))}: run `jobenergy db upgrade "
        "--db URL`, or start without --no-migrate"
    )
