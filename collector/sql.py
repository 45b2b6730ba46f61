"""Dialect helpers shared by the writers, and the error they raise for unstorable input."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
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


def lock_for_ingest(conn: Connection, nodes: Sequence[tuple[str, str]], defaults: str) -> None:
    """Take the locks of batches of ``nodes`` (``(cluster, node)`` pairs, distinct): the server
    defaults' factors (shared), each node (exclusive: the overlap check must see the rows of
    the node's other batches) in sorted order, then each cluster's factors (shared) in sorted
    order: the one order of every writer, so two groups of batches never deadlock.

    One statement instead of one per lock: each statement costs a round trip and the driver's
    and SQLAlchemy's overhead. A target list is evaluated left to right, and a lock that waits
    stops the evaluation there, so the order holds as with one statement per lock (a waiter
    holds only the locks left of it).
    """
    if conn.dialect.name != "postgresql":
        return
    ordered = sorted(set(nodes))
    clusters = sorted({cluster for cluster, _ in ordered})
    params = {"defaults": _factors_key(defaults)}
    params.update({f"n{i}": f"jobenergy:node:{c}/{n}" for i, (c, n) in enumerate(ordered)})
    params.update({f"c{i}": _factors_key(c) for i, c in enumerate(clusters)})
    conn.execute(_ingest_locks(len(ordered), len(clusters)), params)


@cache
def _ingest_locks(nodes: int, clusters: int) -> Any:
    targets = ["pg_advisory_xact_lock_shared(hashtextextended(:defaults, 0))"]
    targets += [f"pg_advisory_xact_lock(hashtextextended(:n{i}, 0))" for i in range(nodes)]
    targets += [f"pg_advisory_xact_lock_shared(hashtextextended(:c{i}, 0))"
                for i in range(clusters)]
    return text(f"SELECT {', '.join(targets)}")
