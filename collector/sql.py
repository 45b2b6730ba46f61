"""Dialect helpers shared by the writers, and the error they raise for unstorable input."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func, text
from sqlalchemy.dialects import postgresql, sqlite

from jobenergy.core.errors import JobEnergyError


class IngestRejected(JobEnergyError):
    """Input that passed the wire schema but cannot be stored (the caller answers 422)."""


def _dialect(conn: Connection | str) -> str:
    return conn if isinstance(conn, str) else conn.dialect.name


def dialect_insert(conn: Connection | str) -> Any:
    """Return the dialect's ``insert`` construct (both have ``on_conflict_do_*``).

    ``conn``: a connection, or its dialect's name (statements built once per dialect).
    """
    name = _dialect(conn)
    if name == "postgresql":
        return postgresql.insert
    if name == "sqlite":
        return sqlite.insert
    raise IngestRejected(f"unsupported database dialect {name!r}")


def least_greatest(conn: Connection | str) -> tuple[Any, Any]:
    """Return two-argument ``least``/``greatest`` that ignore NULL, on both dialects."""
    if _dialect(conn) == "sqlite":
        # SQLite's scalar min()/max() return NULL if either argument is NULL; PostgreSQL's
        # least()/greatest() ignore NULLs. Coalescing each with the other makes them agree.
        def least(a: Any, b: Any) -> Any:
            return func.min(func.coalesce(a, b), func.coalesce(b, a))

        def greatest(a: Any, b: Any) -> Any:
            return func.max(func.coalesce(a, b), func.coalesce(b, a))

        return least, greatest
    return func.least, func.greatest


def _advisory(conn: Connection, key: str, shared: bool) -> None:
    if conn.dialect.name != "postgresql":
        return  # SQLite has one writer at a time: its transactions are serialised anyway
    fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    conn.execute(text(f"SELECT {fn}(hashtextextended(:key, 0))"), {"key": key})


def lock_factors(conn: Connection, cluster: str, *, shared: bool = False) -> None:
    """Lock a cluster's PUE/carbon factors until the transaction ends.

    Ingest takes it shared (batches of one cluster still run in parallel); a factor change
    takes it exclusive, so an hour is never priced with a factor that is being replaced, and
    recomputation never races ingest for the same rows (no deadlock).
    """
    _advisory(conn, f"jobenergy:factors:{cluster}", shared)


def lock_node(conn: Connection, cluster: str, node: str) -> None:
    """Serialise batches of one node: the overlap check must see the other's rows."""
    _advisory(conn, f"jobenergy:node:{cluster}/{node}", False)
