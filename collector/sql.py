"""Dialect helpers shared by the writers, and the error they raise for unstorable input."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, func
from sqlalchemy.dialects import postgresql, sqlite

from jobenergy.core.errors import JobEnergyError


class IngestRejected(JobEnergyError):
    """Input that passed the wire schema but cannot be stored (the caller answers 422)."""


def dialect_insert(conn: Connection) -> Any:
    """Return the dialect's ``insert`` construct (both have ``on_conflict_do_*``)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert
    if conn.dialect.name == "sqlite":
        return sqlite.insert
    raise IngestRejected(f"unsupported database dialect {conn.dialect.name!r}")


def least_greatest(conn: Connection) -> tuple[Any, Any]:
    """Return the two-argument ``least``/``greatest`` functions of the dialect."""
    # SQLite's two-argument min()/max() are scalar functions, PostgreSQL spells them
    # least()/greatest().
    if conn.dialect.name == "sqlite":
        return func.min, func.max
    return func.least, func.greatest
