"""Batch integrity: content hash of stored batch keys, refusals per node.

- ``ingested_batch.content_sha256``: SHA-256 of the batch's canonical JSON, so that a key seen
  again with other content is refused (409) instead of acknowledged as a duplicate. Rows
  stored before this revision keep NULL: a repeat of their key stays a duplicate.
- ``node_refusal``: per (cluster, node) the batches refused with a 4xx, the conflicts among
  them, and the latest status, reason and time (``GET /api/v1/nodes``).

Revision ID: 0008_batch_integrity
Revises: 0007_presence_and_board
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_batch_integrity"
down_revision: str | None = "0007_presence_and_board"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Add the hash column and the refusal table."""
    op.add_column(
        "ingested_batch", sa.Column("content_sha256", sa.String(length=64), nullable=True)
    )
    op.create_table(
        "node_refusal",
        sa.Column("cluster", sa.String(length=255), nullable=False),
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("refused", sa.BigInteger(), nullable=False),
        sa.Column("conflicts", sa.BigInteger(), nullable=False),
        sa.Column("first_at", _utc(), nullable=False),
        sa.Column("last_at", _utc(), nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=False),
        sa.Column("last_reason", sa.String(length=1024), nullable=False),
        sa.PrimaryKeyConstraint("cluster", "node", name=op.f("pk_node_refusal")),
    )


def downgrade() -> None:
    """Drop what ``upgrade`` added."""
    op.drop_table("node_refusal")
    with op.batch_alter_table("ingested_batch") as batch:
        batch.drop_column("content_sha256")
