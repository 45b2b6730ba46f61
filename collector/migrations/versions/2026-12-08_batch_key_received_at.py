"""An index on ``ingested_batch.received_at``, so ``jobenergy db maintain`` can prune the keys
of batches older than the retained raw intervals (``collector/batch_keys.py``) by range.

The table holds one row per batch ever stored (about 1,000 rows/s for 10,000 nodes pushing
every 10 s); without pruning it grows without bound. Appending to a timestamp index costs
ingest one rightmost-leaf insert per batch.

Revision ID: 0018_batch_key_received_at
Revises: 0017_job_energy_minute
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0018_batch_key_received_at"
down_revision: str | None = "0017_job_energy_minute"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the index."""
    op.create_index("ix_ingested_batch_received_at", "ingested_batch", ["received_at"])


def downgrade() -> None:
    """Drop the index."""
    op.drop_index("ix_ingested_batch_received_at", table_name="ingested_batch")
