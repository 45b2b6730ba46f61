"""Slurm's ids and accounting of a job: array/het ids, AllocTRES, steps, the sync's mark.

- ``array_job_id``, ``array_task_id``, ``het_job_id``, ``het_job_offset``: sacct prints an
  array task as ``1234_5`` and a het component as ``1234+1``, and ``sacct -j 1234`` selects
  every task or component of 1234 (``ix_job_array_job_id``, ``ix_job_het_job_id``). Filled at
  event ingest from the tags the hooks and the sync have always sent; backfilled here from
  the stored tags.
- ``alloc_tres``, ``kill_requid``, ``slurm_steps``: sacct's AllocTRES text, the uid in
  "CANCELLED by <uid>", the job's steps; sent by the Slurm sync only.
- ``synced_at``: when the sync (sacct) last set the job: its times and state are then
  authoritative over the hooks' (an epilog's late end event only fills what is unknown).

Revision ID: 0014_job_slurm_ids
Revises: 0013_interval_job_index
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0014_job_slurm_ids"
down_revision: str | None = "0013_interval_job_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    ("array_job_id", sa.String(length=64)),
    ("array_task_id", sa.BigInteger()),
    ("het_job_id", sa.String(length=64)),
    ("het_job_offset", sa.BigInteger()),
    ("alloc_tres", sa.String(length=1024)),
    ("kill_requid", sa.BigInteger()),
    ("slurm_steps", sa.JSON().with_variant(postgresql.JSONB(), "postgresql")),
    ("synced_at", sa.DateTime(timezone=True)),
)

#: Backfill from the tags: only all-digit ids (as Slurm's), of at most 10 digits.
_BACKFILL = {
    "postgresql": """
UPDATE job SET
  array_job_id = CASE WHEN tags->>'array_job_id' ~ '^[0-9]{1,10}$'
                      AND tags->>'array_task_id' ~ '^[0-9]{1,10}$'
                      THEN tags->>'array_job_id' END,
  array_task_id = CASE WHEN tags->>'array_job_id' ~ '^[0-9]{1,10}$'
                       AND tags->>'array_task_id' ~ '^[0-9]{1,10}$'
                       THEN (tags->>'array_task_id')::bigint END,
  het_job_id = CASE WHEN tags->>'het_job_id' ~ '^[0-9]{1,10}$'
                    AND tags->>'het_job_offset' ~ '^[0-9]{1,10}$'
                    THEN tags->>'het_job_id' END,
  het_job_offset = CASE WHEN tags->>'het_job_id' ~ '^[0-9]{1,10}$'
                        AND tags->>'het_job_offset' ~ '^[0-9]{1,10}$'
                        THEN (tags->>'het_job_offset')::bigint END
WHERE jsonb_typeof(tags) = 'object' AND (tags ? 'array_job_id' OR tags ? 'het_job_id')
""",
    "sqlite": """
UPDATE job SET
  array_job_id = CASE WHEN {aj} AND {at} THEN json_extract(tags, '$.array_job_id') END,
  array_task_id = CASE WHEN {aj} AND {at}
                       THEN CAST(json_extract(tags, '$.array_task_id') AS INTEGER) END,
  het_job_id = CASE WHEN {hj} AND {ho} THEN json_extract(tags, '$.het_job_id') END,
  het_job_offset = CASE WHEN {hj} AND {ho}
                        THEN CAST(json_extract(tags, '$.het_job_offset') AS INTEGER) END
WHERE json_valid(tags) AND json_type(tags) = 'object'
  AND (json_type(tags, '$.array_job_id') IS NOT NULL
       OR json_type(tags, '$.het_job_id') IS NOT NULL)
""".format(**{
        key: (f"json_type(tags, '$.{tag}') = 'text' AND length(json_extract(tags, '$.{tag}')) "
              f"BETWEEN 1 AND 10 AND json_extract(tags, '$.{tag}') NOT GLOB '*[^0-9]*'")
        for key, tag in (("aj", "array_job_id"), ("at", "array_task_id"),
                         ("hj", "het_job_id"), ("ho", "het_job_offset"))
    }),
}


def upgrade() -> None:
    """Add the columns and indexes; fill the array/het ids from the stored tags."""
    with op.batch_alter_table("job") as batch:
        for name, type_ in _COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
    op.create_index("ix_job_array_job_id", "job", ["array_job_id", "array_task_id"])
    op.create_index("ix_job_het_job_id", "job", ["het_job_id", "het_job_offset"])
    backfill = _BACKFILL.get(op.get_bind().dialect.name)
    if backfill is not None:
        op.execute(backfill)


def downgrade() -> None:
    """Drop the indexes and columns."""
    op.drop_index("ix_job_het_job_id", table_name="job")
    op.drop_index("ix_job_array_job_id", table_name="job")
    with op.batch_alter_table("job") as batch:
        for name, _type in reversed(_COLUMNS):
            batch.drop_column(name)
