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
    _advisory(conn, _factors_key(cluster), shared)


def _factors_key(cluster: str) -> str:
    return f"jobenergy:factors:{cluster}"


def lock_for_ingest(conn: Connection, cluster: str, node: str, defaults: str) -> None:
    """Take a batch's locks: the server defaults' factors (shared), the node (exclusive:
    the overlap check must see the rows of the node's other batches) and the cluster's
    factors (shared), in that order, the one order of every writer (no deadlock).

    One statement instead of three: each statement costs a round trip and the driver's and
    SQLAlchemy's overhead, and a small batch is only about fifteen of them. A target list
    is evaluated left to right, and a lock that waits stops the evaluation there, so the
    order holds as with three statements (a waiter holds only the locks left of it).
    """
    if conn.dialect.name != "postgresql":
        return
    conn.execute(_INGEST_LOCKS, {"defaults": _factors_key(defaults),
                                 "node": f"jobenergy:node:{cluster}/{node}",
                                 "cluster": _factors_key(cluster)})


_INGEST_LOCKS = text(
    "SELECT pg_advisory_xact_lock_shared(hashtextextended(:defaults, 0)),"
    " pg_advisory_xact_lock(hashtextextended(:node, 0)),"
    " pg_advisory_xact_lock_shared(hashtextextended(:cluster, 0))"
)
