"""Static tokens (``Authorization: Bearer``) for sites or rigs without MUNGE or Slurm JWT.

A token is 256 random bits; only its SHA-256 is stored (a stolen database holds no usable
token, and a hash of that much entropy needs no slow KDF). ``jobenergy auth token`` issues and
revokes them; each issue and revocation is audited.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, select, update

from jobenergy.collector.audit import record
from jobenergy.collector.models import AuthToken

#: What a token may do (``api/access.py``).
TOKEN_ROLES = ("agent", "hooks", "admin")
#: Prefix of every token, so that a leaked one is recognisable (secret scanners, logs).
TOKEN_PREFIX = "jet_"


@dataclass(frozen=True)
class TokenGrant:
    """What a valid token stands for."""

    role: str
    cluster: str
    node: str | None
    token_id: str  # the first 12 hex digits of its hash, for logs and the audit


def token_sha256(token: str) -> str:
    """Return the stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def issue(conn: Connection, role: str, cluster: str, node: str | None, actor: str) -> str:
    """Store a new token's hash and return the token (shown once, never stored)."""
    if role not in TOKEN_ROLES:
        raise ValueError(f"role must be one of {', '.join(TOKEN_ROLES)}")
    if (role == "agent") != (node is not None):
        raise ValueError("an agent token is for one node (--node); other roles take none")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    digest = token_sha256(token)
    conn.execute(AuthToken.__table__.insert().values(
        token_sha256=digest, role=role, cluster=cluster, node=node,
        created_at=datetime.now(UTC), created_by=actor, revoked_at=None))
    record(conn, actor, "token.issue", cluster, None,
           {"role": role, "node": node, "token_id": digest[:12]})
    return token


def revoke(conn: Connection, role: str, cluster: str, node: str | None, actor: str) -> int:
    """Revoke every live token of ``role`` for (cluster, node); return how many."""
    table = AuthToken.__table__
    where = [table.c.role == role, table.c.cluster == cluster, table.c.revoked_at.is_(None)]
    where.append(table.c.node.is_(None) if node is None else table.c.node == node)
    ids = conn.scalars(select(table.c.token_sha256).where(*where)).all()
    if ids:
        conn.execute(update(table).where(table.c.token_sha256.in_(ids))
                     .values(revoked_at=datetime.now(UTC)))
        record(conn, actor, "token.revoke", cluster,
               {"role": role, "node": node, "token_ids": [i[:12] for i in ids]}, None)
    return len(ids)


def lookup(conn: Connection, token: str) -> TokenGrant | None:
    """Return what a presented token grants, or None (unknown or revoked)."""
    digest = token_sha256(token)
    table = AuthToken.__table__
    row = conn.execute(
        select(table.c.role, table.c.cluster, table.c.node)
        .where(table.c.token_sha256 == digest, table.c.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    return TokenGrant(role=row.role, cluster=row.cluster, node=row.node, token_id=digest[:12])
