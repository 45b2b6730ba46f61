"""Settled jobs' parts, materialised: ``job_detail``, and ``job.parts_version``
(``collector/job_details.py``).

Adding a column with a constant default changes no row (instant on PostgreSQL). Nothing to
backfill by hand: every job reads its parts live until the collector's background refresh, or
``jobenergy db maintain``, materialises the settled ones (the first run goes over every job).

Revision ID: 0021_job_detail
Revises: 0020_job_scope_indexes
Create Date: 2026-12-11
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021_job_detail"
down_revision: str | None = "0020_job_scope_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the column and the table."""
    op.add_column("job", sa.Column("parts_version", sa.BigInteger(), server_default="0",
                                   nullable=False))
    op.create_table(
        "job_detail",
        sa.Column("cluster", sa.String(length=255), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("parts_version", sa.BigInteger(), nullable=False),
        sa.Column("shape", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("cluster", "job_id", name=op.f("pk_job_detail")),
    )
    if op.get_bind().dialect.name == "postgresql":
        # Collectors of an earlier release, still running while others upgrade (or after a
        # package downgrade), change parts without adding to parts_version; every writer of
        # parts stamps the job's updated_at, so the database adds it for them. Current code
        # adds it itself (then this does nothing); a Slurm event's stamp adds one too, which
        # only has the job materialised again.
        op.execute("""
            CREATE FUNCTION job_parts_version_bump() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              NEW.parts_version := OLD.parts_version + 1;
              RETURN NEW;
            END $$""")
        op.execute("""
            CREATE TRIGGER job_parts_version_bump BEFORE UPDATE ON job FOR EACH ROW
            WHEN (NEW.updated_at IS DISTINCT FROM OLD.updated_at
                  AND NEW.parts_version = OLD.parts_version)
            EXECUTE FUNCTION job_parts_version_bump()""")
    # A materialisation state left by an earlier upgrade and downgrade: start over.
    op.execute("DELETE FROM rollup_state WHERE name LIKE 'job_detail %'")


def downgrade() -> None:
    """Drop the table and the column."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER job_parts_version_bump ON job")
        op.execute("DROP FUNCTION job_parts_version_bump()")
    op.drop_table("job_detail")
    op.execute("DELETE FROM rollup_state WHERE name LIKE 'job_detail %'")
    with op.batch_alter_table("job") as batch:
        batch.drop_column("parts_version")
