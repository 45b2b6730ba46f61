"""Authentication and audit: the ``auth_token`` and ``audit_log`` tables.

- ``auth_token``: static tokens (``jobenergy auth token``) as SHA-256 only, each with a role
  (``agent`` of one node, ``hooks``, ``admin``), who issued it, and when it was revoked.
- ``audit_log``: every privileged change (factors, tokens): who, when, old and new value.

Revision ID: 0009_auth
Revises: 0008_batch_integrity
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0009_auth"
down_revision: str | None = "0008_batch_integrity"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create both tables."""
    op.create_table(
        "auth_token",
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("cluster", sa.String(length=255), nullable=False),
        sa.Column("node", sa.String(length=255), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("revoked_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("token_sha256", name=op.f("pk_auth_token")),
    )
    op.create_index("ix_auth_token_node", "auth_token", ["cluster", "node"])
    json = sa.JSON().with_variant(JSONB(), "postgresql")
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  sa.Identity(always=False), nullable=False),
        sa.Column("at", _utc(), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("cluster", sa.String(length=255), nullable=True),
        sa.Column("old_value", json, nullable=True),
        sa.Column("new_value", json, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])


def downgrade() -> None:
    """Drop both tables."""
    op.drop_index("ix_audit_log_at", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index("ix_auth_token_node", table_name="auth_token")
    op.drop_table("auth_token")
