"""Collector schema: SQLAlchemy 2 typed declarative models.

Tables (singular lower_snake, ``*_at`` timestamps in UTC):

- ``ingested_batch``: the idempotency key ``(cluster, node, boot_id, seq)`` of every stored
  batch, written in the same transaction as its energy (DESIGN.md decision 7).
- ``energy_interval``: one row per (interval, source, job-or-unattributed) share; ``job_id``
  NULL is the node's unattributed energy. Append-only, bulk-loaded with COPY on PostgreSQL,
  where it is partitioned by month of ``start_at`` (``collector/partitions.py``).
- ``job_energy``: per (cluster, job, node, component, source) totals maintained at ingest,
  so a job lookup never scans ``energy_interval`` (decision 8).
- ``node_energy``: per (cluster, node, component, source) measured/unattributed totals.
- ``node_energy_hour``: per (cluster, node, UTC hour, component) measured/unattributed µJ,
  each interval's shares split over the hours exactly (``collector/node_hours.py``): node and
  cluster series of whole hours, kept for ever like the other totals.
- ``job``: Slurm metadata, from job events and from what batches know, plus the per-job summary
  (energy, GPU energy, facility µJ, CO2e µg, GPU-seconds, samples, model, phase) maintained at
  ingest, so leaderboards and summaries are GROUP BY over one row per job.
- ``job_energy_hour``: a job's IT energy per UTC hour with the factors in force then and the
  facility µJ / CO2e µg they give; recomputed when a cluster's factors change.
- ``job_energy_minute``: a job's energy per (node, component, source, UTC minute), rolled up
  from the raw intervals by ``jobenergy db maintain`` just before retention drops them
  (``collector/job_minutes.py``): the job's power series before ``interval_retention``.
- ``job_phase``: energy per job × announced phase × model, with the closed phase records'
  samples and metrics.
- ``job_step_energy``: per (cluster, job, Slurm step, component) energy, the job's energy of
  each interval split over its steps by their CPU time (``collector/steps.py``).
- ``node_progress``: per (cluster, node) high-water mark of the ingested intervals (``last_at``)
  and how many sources the node's latest interval had (0: an agent without counters), so that
  a job's energy is known final when every node of it has pushed past its end.
- ``node_refusal``: per (cluster, node) how many batches the collector refused (4xx), how many
  of them were key conflicts (409), and the latest status, reason and time.
- ``job_node``: a job seen on a node by its agent (in an interval's jobs or energy shares), even
  with no energy source there: the nodes it ran on, and whether any source covered it.
- ``job_board_part``: the leaderboard's parts of jobs with in-job phase annotations, one per
  (job, model, phase): each annotated phase's energy and samples, the un-annotated rest under
  the job-level model and phase (``collector/board.py``).
- ``cluster_config`` / ``factor_point``: per-cluster PUE and carbon-intensity source, and
  imported series (cluster ``""`` holds the server's ``--pue``/``--carbon-intensity`` defaults).
- ``factor_change``: each factor change that rewrote stored facility energy/CO2e, with the
  hours it rewrote (``collector/factor_changes.py``), so the Slurm sync can follow.
- ``auth_token``: static tokens (``jobenergy auth token``), stored as SHA-256 only, each for
  one role (an agent of one node, the Slurm hooks, an admin).
- ``audit_log``: who changed what and when (factor changes, tokens issued and revoked), with
  the old and new values.
- ``budget``: energy budgets of a user, an account or a user in an account, per day, week,
  month or fixed range, in facility µJ or mg CO2e, with their submit and running policies
  (``collector/budget_usage.py`` computes what they used).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Text,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Largest value of a signed 64-bit column; totals beyond it are rejected, never wrapped.
#: (SQLite silently turns an overflowing integer sum into a REAL: the CHECK catches that.)
BIGINT_MAX = 2**63 - 1

NAME_LEN = 255
JOB_ID_LEN = 64
STEP_LEN = 32
#: Longest AllocTRES text stored (sacct's ``billing=4,cpu=4,gres/gpu=1,mem=4G,node=1``).
TRES_LEN = 1024
REASON_LEN = 1024


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no time zone type, so values are stored as
    naive UTC and given back their UTC zone when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Normalise to UTC (naive UTC on SQLite)."""
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return an aware UTC datetime."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JsonType = JSON().with_variant(JSONB(), "postgresql")
#: SQLite only auto-increments an ``INTEGER PRIMARY KEY``.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base carrying the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UtcDateTime, dict[str, Any]: JsonType}


class IngestedBatch(Base):
    """One stored batch; its key makes a retried batch a no-op."""

    __tablename__ = "ingested_batch"
    # db maintain prunes the keys of batches received before the retained raw intervals by
    # range (collector/batch_keys.py).
    __table_args__ = (Index("ix_ingested_batch_received_at", "received_at"),)

    cluster: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    node: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    boot_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    received_at: Mapped[datetime]
    agent_version: Mapped[str | None] = mapped_column(String(64))
    intervals: Mapped[int] = mapped_column(Integer)
    records: Mapped[int] = mapped_column(Integer)
    # SHA-256 (hex) of the batch's canonical JSON (collector/ingest.py: content_hash): a key
    # seen again with other content is a conflict, not a duplicate. NULL: stored before
    # revision 0008, a repeat of such a key is a duplicate.
    content_sha256: Mapped[str | None] = mapped_column(String(64))


class EnergyInterval(Base):
    """One share of one source's energy over one interval (job_id NULL: unattributed)."""

    __tablename__ = "energy_interval"
    __table_args__ = (
        Index("ix_energy_interval_cluster_node_start_at", "cluster", "node", "start_at"),
        # A job's power series (api/series_queries.py) reads its intervals in time order; the
        # node's unattributed rows (job_id NULL, about half) are left out of the index.
        Index("ix_energy_interval_cluster_job_id_start_at", "cluster", "job_id", "start_at",
              postgresql_where=text("job_id IS NOT NULL"),
              sqlite_where=text("job_id IS NOT NULL")),
    )

    # On PostgreSQL the table is RANGE-partitioned by month on start_at (revision
    # 0005_partition_intervals, collector/partitions.py) and its primary key is (id, start_at),
    # as a partitioned table's must hold the partition key. The model keeps (id): SQLite only
    # auto-increments a lone INTEGER PRIMARY KEY, Alembic does not compare primary keys, and
    # the schema comes from the migrations, never from metadata.create_all.
    id: Mapped[int] = mapped_column(BigIntId, Identity(always=False), primary_key=True)
    cluster: Mapped[str] = mapped_column(String(NAME_LEN))
    node: Mapped[str] = mapped_column(String(NAME_LEN))
    job_id: Mapped[str | None] = mapped_column(String(JOB_ID_LEN))
    component: Mapped[str] = mapped_column(String(8))
    source: Mapped[str] = mapped_column(String(NAME_LEN))
    start_at: Mapped[datetime]
    end_at: Mapped[datetime]
    energy_uj: Mapped[int] = mapped_column(BigInteger)
    estimated: Mapped[bool] = mapped_column(Boolean)


class JobEnergy(Base):
    """Per-job, per-node, per-source energy totals, upserted at ingest."""

    __tablename__ = "job_energy"
    __table_args__ = (
        CheckConstraint(f"energy_uj >= 0 AND energy_uj <= {BIGINT_MAX}", name="energy_uj_range"),
        CheckConstraint(
            f"estimated_uj >= 0 AND estimated_uj <= {BIGINT_MAX}", name="estimated_uj_range"
        ),
    )

    cluster: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(JOB_ID_LEN), primary_key=True)
    node: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    component: Mapped[str] = mapped_column(String(8), primary_key=True)
    source: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    energy_uj: Mapped[int] = mapped_column(BigInteger)
    estimated_uj: Mapped[int] = mapped_column(BigInteger)
    intervals: Mapped[int] = mapped_column(BigInteger)
    covered_s: Mapped[float] = mapped_column(Float)
    first_at: Mapped[datetime]
    last_at: Mapped[datetime]
    wraps: Mapped[int] = mapped_column(Integer)
    resets: Mapped[int] = mapped_column(Integer)
    device_name: Mapped[str | None] = mapped_column(String(128))


class NodeEnergy(Base):
    """Per-node, per-source measured and unattributed totals, upserted at ingest."""

    __tablename__ = "node_energy"
    __table_args__ = (
        CheckConstraint(
            f"measured_uj >= 0 AND measured_uj <= {BIGINT_MAX}", name="measured_uj_range"
        ),
        CheckConstraint(
            f"unattributed_uj >= 0 AND unattributed_uj <= {BIGINT_MAX}",
            name="unattributed_uj_range",
        ),
    )

    cluster: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    node: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    component: Mapped[str] = mapped_column(String(8), primary_key=True)
    source: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    measured_uj: Mapped[int] = mapped_column(BigInteger)
    unattributed_uj: Mapped[int] = mapped_column(BigInteger)
    intervals: Mapped[int] = mapped_column(BigInteger)
    first_at: Mapped[datetime]
    last_at: Mapped[datetime]


class NodeEnergyHour(Base):
    """A node's measured and unattributed energy of one component in one UTC hour.

    Added to at ingest in the batch's transaction (``collector/node_hours.py``): every share
    of an interval (each job's, the node's own) is split over the hours it overlaps by
    largest remainder, as ``job_energy_hour`` is; so ``Σ hours`` is the node's
    ``node_energy`` total of the component, exactly, and an hour's attributed part
    (``measured_uj − unattributed_uj``) is the sum of the node's job shares' parts.
    """

    __tablename__ = "node_energy_hour"
    __table_args__ = (
        CheckConstraint(
            f"measured_uj >= 0 AND measured_uj <= {BIGINT_MAX}", name="measured_uj_range"
        ),
        CheckConstraint(
            f"unattributed_uj >= 0 AND unattributed_uj <= {BIGINT_MAX}",
            name="unattributed_uj_range",
        ),
        # A cluster's hours over every node (the primary key serves one node's).
        Index("ix_node_energy_hour_cluster_hour_at", "cluster", "hour_at",
              postgresql_include=["component", "measured_uj"]),
    )

    cluster: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    node: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    hour_at: Mapped[datetime] = mapped_column(primary_key=True)
    component: Mapped[str] = mapped_column(String(8), primary_key=True)
    measured_uj: Mapped[int] = mapped_column(BigInteger)
    unattributed_uj: Mapped[int] = mapped_column(BigInteger)


class Job(Base):
    """Slurm job metadata; a row may exist with only what energy batches knew (uid)."""

    __tablename__ = "job"
    __table_args__ = (
        # ix_job_user_start and ix_job_start_order (job lists' order) follow the class.
        # Summaries by user: a parallel index-only GroupAggregate, no sort, no heap.
        Index(
            "ix_job_user_totals", "user",
            postgresql_include=["energy_uj", "gpu_uj", "facility_uj", "co2e_ug", "gpu_s"],
        ),
        Index("ix_job_job_id", "job_id"),
        # The materialised leaderboard is recomputed only when jobs changed since (rollups.py).
        Index("ix_job_updated_at", "updated_at"),
        Index("ix_job_begin_at", "begin_at"),
        Index("ix_job_model", "model", "phase", "begin_at"),
        # The leaderboard's medians: an index-only scan already sorted within each group.
        Index(
            "ix_job_model_energy", "model", "phase", "energy_uj",
            postgresql_include=["facility_uj", "co2e_ug", "gpu_s", "samples", "annotated"],
            postgresql_where=text("model IS NOT NULL"),
        ),
        # Leaderboards filtered by cluster (and phase): index-only, ordered by model.
        Index(
            "ix_job_cluster_model", "cluster", "phase", "model", "energy_uj",
            postgresql_include=["facility_uj", "co2e_ug", "gpu_s", "samples", "annotated"],
            postgresql_where=text("model IS NOT NULL"),
        ),
    )

    cluster: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(JOB_ID_LEN), primary_key=True)
    user: Mapped[str | None] = mapped_column(String(64))
    uid: Mapped[int | None] = mapped_column(BigInteger)
    account: Mapped[str | None] = mapped_column(String(64))
    partition: Mapped[str | None] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(255))
    nodes: Mapped[list[str] | None] = mapped_column(JsonType)
    gpus: Mapped[list[str] | None] = mapped_column(JsonType)
    comment: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str | None] = mapped_column(String(32))
    exit_code: Mapped[str | None] = mapped_column(String(16))
    tags: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    start_at: Mapped[datetime | None]
    end_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    # Summary maintained at ingest. begin_at: start_at, or the first energy seen without one.
    begin_at: Mapped[datetime | None]
    model: Mapped[str | None] = mapped_column(String(255))
    phase: Mapped[str | None] = mapped_column(String(16))
    energy_uj: Mapped[int] = mapped_column(BigInteger, server_default="0")
    gpu_uj: Mapped[int] = mapped_column(BigInteger, server_default="0")
    facility_uj: Mapped[int] = mapped_column(BigInteger, server_default="0")
    co2e_ug: Mapped[int] = mapped_column(BigInteger, server_default="0")
    gpu_s: Mapped[float] = mapped_column(Float, server_default="0")
    samples: Mapped[int | None] = mapped_column(BigInteger)
    # The job has in-job phase annotations (job_phase rows): leaderboards read its parts from
    # job_board_part instead of this row.
    annotated: Mapped[bool] = mapped_column(Boolean, server_default=false())
    # Slurm's ids of an array task / het-job component (sacct prints 1234_5 / 1234+1; the row
    # is filed under the raw id), from the events' tags (hooks and sync).
    array_job_id: Mapped[str | None] = mapped_column(String(JOB_ID_LEN))
    array_task_id: Mapped[int | None] = mapped_column(BigInteger)
    het_job_id: Mapped[str | None] = mapped_column(String(JOB_ID_LEN))
    het_job_offset: Mapped[int | None] = mapped_column(BigInteger)
    # From the Slurm sync only (sacct): AllocTRES as sacct prints it, the uid that cancelled
    # the job (State "CANCELLED by <uid>"), the job's steps ([{"id": "batch", "name": ...}]).
    alloc_tres: Mapped[str | None] = mapped_column(String(TRES_LEN))
    kill_requid: Mapped[int | None] = mapped_column(BigInteger)
    slurm_steps: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonType)
    # When an event of the Slurm sync (sacct) last set the job's metadata: from then on its
    # times, state, exit code, nodes and names are Slurm's, and a hook's event only fills
    # what is still unknown (collector/events.py).
    synced_at: Mapped[datetime | None]
    # Counts the transactions that changed the job's parts (job_energy, job_node, the hours'
    # factors, phases, steps): each adds 1 in the same transaction. A materialised detail
    # (job_detail) answers for the job only while it has the same number.
    parts_version: Mapped[int] = mapped_column(BigInteger, server_default="0")


# Job lists (GET /api/v1/jobs) in their order, for keyset pagination: newest start first, jobs
# without a start last, then (cluster, job_id); a user's jobs, and every job (or a cluster's).
# On SQLite the migration leaves out NULLS LAST, which it refuses in an index and which is its
# order anyway (NULL is lowest); the schema always comes from the migrations.
Index("ix_job_user_start", Job.user, Job.start_at.desc().nulls_last(), Job.cluster, Job.job_id)
Index("ix_job_start_order", Job.start_at.desc().nulls_last(), Job.cluster, Job.job_id)
# The parts of a user's PrivateData scope beyond their name (api/job_filters.py visible_parts).
Index("ix_job_uid_start", Job.uid, Job.user, Job.start_at.desc().nulls_last(), Job.cluster,
      Job.job_id)
Index("ix_job_account_start", Job.account, Job.start_at.desc().nulls_last(), Job.cluster,
      Job.job_id, postgresql_include=["user", "uid", "energy_uj", "gpu_uj", "facility_uj",
                                      "co2e_ug", "gpu_s"])
# sacct -j N: every task of array N, every component of het job N.
Index("ix_job_array_job_id", Job.array_job_id, Job.array_task_id)
Index("ix_job_het_job_id", Job.het_job_id, Job.het_job_offset)


class JobEnergyHour(Base):
    """A job's IT energy in one UTC hour and the facility energy and CO2e it stands for."""

    __tablename__ = "job_energy_hour"
    __table_args__ = (Index("ix_job_energy_hour_cluster_hour_at", "cluster", "hour_at"),)

    cluster: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(JOB_ID_LEN), primary_key=True)
    hour_at: Mapped[datetime] = mapped_column(primary_key=True)
    energy_uj: Mapped[int] = mapped_column(BigInteger)
    facility_uj: Mapped[int] = mapped_column(BigInteger)
    co2e_ug: Mapped[int] = mapped_column(BigInteger)
    pue: Mapped[float] = mapped_column(Float)
    carbon_g_per_kwh: Mapped[float] = mapped_column(Float)
    pue_source: Mapped[str] = mapped_column(String(32))
    carbon_source: Mapped[str] = mapped_column(String(32))


class JobEnergyMinute(Base):
    """A job's energy of one source on one node in one UTC minute, kept after the raw
    intervals are dropped (``collector/job_minutes.py``).

    Written only by the roll-up of a month's ``energy_interval`` partition before retention
    drops it (never at ingest): each job share split over the minutes it overlaps by largest
    remainder, so a job's minutes add up to its ``job_energy`` exactly. The key is the read
    order of a job's series (a job's window of minutes is one index range); the fixed-width
    columns come first so that no alignment padding follows the names.
    """

    __tablename__ = "job_energy_minute"
    __table_args__ = (
        PrimaryKeyConstraint("cluster", "job_id", "minute_at", "node", "component", "source"),
        CheckConstraint(f"energy_uj >= 0 AND energy_uj <= {BIGINT_MAX}", name="energy_uj_range"),
    )

    minute_at: Mapped[datetime]
    energy_uj: Mapped[int] = mapped_column(BigInteger)
    cluster: Mapped[str] = mapped_column(String(NAME_LEN))
    job_id: Mapped[str] = mapped_column(String(JOB_ID_LEN))
    node: Mapped[str] = mapped_column(String(NAME_LEN))
    component: Mapped[str] = mapped_column(String(8))
    source: Mapped[str] = mapped_column(String(NAME_LEN))
    # True when any of the minute's energy was estimated (power polling, DESIGN.md decision 3).
    estimated: Mapped[bool] = mapped_column(Boolean)


class JobPhase(Base):
    """Energy of a job while it announced a phase (model ``""``: none named)."""

    __tablename__ = "job_phase"

    cluster: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(JOB_ID_LEN), primary_key=True)
    phase: Mapped[str] = mapped_column(String(16), primary_key=True)
    model: Mapped[str] = mapped_column(String(255), primary_key=True)
    energy_uj: Mapped[int] = mapped_column(BigInteger)
    intervals: Mapped[int] = mapped_column(BigInteger)
    samples: Mapped[int | None] = mapped_column(BigInteger)
    records: Mapped[int] = mapped_column(Integer)
    gpu_s: Mapped[float] = mapped_column(Float, server_default="0")
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    tags: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    first_at: Mapped[datetime | None]
    last_at: Mapped[datetime | None]


class JobStepEnergy(Base):
    """A job's energy per Slurm step and component, upserted at ingest."""

    __tablename__ = "job_step_energy"
    __table_args__ = (
        CheckConstraint(f"energy_uj >= 0 AND energy_uj <= {BIGINT_MAX}", name="energy_uj_range"),
    )

    cluster: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(JOB_ID_LEN), primary_key=True)
    step: Mapped[str] = mapped_column(String(STEP_LEN), primary_key=True)
    component: Mapped[str] = mapped_column(String(8), primary_key=True)
    energy_uj: Mapped[int] = mapped_column(BigInteger)


class ClusterConfig(Base):
    """A cluster's PUE and carbon-intensity source (NULL: the server's default)."""

    __tablename__ = "cluster_config"

    cluster: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    pue: Mapped[float | None] = mapped_column(Float)
    carbon_source: Mapped[str | None] = mapped_column(String(16))
    carbon_params: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    carbon_g_per_kwh: Mapped[float | None] = mapped_column(Float)
    carbon_label: Mapped[str | None] = mapped_column(String(255))
    updated_at: Mapped[datetime]


class FactorPoint(Base):
    """One step of an imported series: ``value`` holds over ``[start_at, end_at)``."""

    __tablename__ = "factor_point"

    cluster: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    factor: Mapped[str] = mapped_column(String(16), primary_key=True)  # "pue" | "carbon"
    start_at: Mapped[datetime] = mapped_column(primary_key=True)
    end_at: Mapped[datetime]
    value: Mapped[float] = mapped_column(Float)


class FactorChange(Base):
    """A factor change that rewrote stored job values: its revision and the hours it touched.

    ``revision`` is one sequence over every cluster; a cluster's changes are made under its
    exclusive factors lock, so within a cluster revisions grow in commit order and "every
    change after revision N" is a complete list.
    """

    __tablename__ = "factor_change"
    __table_args__ = (Index("ix_factor_change_cluster_revision", "cluster", "revision"),)

    revision: Mapped[int] = mapped_column(BigIntId, Identity(always=False), primary_key=True)
    cluster: Mapped[str] = mapped_column(String(NAME_LEN))
    start_at: Mapped[datetime]  # first rewritten hour
    end_at: Mapped[datetime]  # last rewritten hour + 1 h
    hours: Mapped[int] = mapped_column(Integer)
    jobs: Mapped[int] = mapped_column(Integer)
    changed_at: Mapped[datetime]


class NodeProgress(Base):
    """How far a node's ingested intervals reach, whatever sources it has (none included)."""

    __tablename__ = "node_progress"

    cluster: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    node: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    first_at: Mapped[datetime]
    last_at: Mapped[datetime]  # the latest interval end ingested (high-water mark)
    intervals: Mapped[int] = mapped_column(BigInteger)
    last_sources: Mapped[int] = mapped_column(Integer)  # sources of the latest interval


class NodeRefusal(Base):
    """Batches of a node the collector refused (4xx), with the latest reason.

    ``cluster``/``node`` are empty when the refused body did not say (e.g. too large to read).
    """

    __tablename__ = "node_refusal"

    cluster: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    node: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    refused: Mapped[int] = mapped_column(BigInteger)  # every 4xx answer, conflicts included
    conflicts: Mapped[int] = mapped_column(BigInteger)  # 409: a key seen with other content
    first_at: Mapped[datetime]
    last_at: Mapped[datetime]
    last_status: Mapped[int] = mapped_column(Integer)
    last_reason: Mapped[str] = mapped_column(String(REASON_LEN))


class JobNode(Base):
    """A job seen on a node by that node's agent, with or without energy."""

    __tablename__ = "job_node"

    cluster: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(JOB_ID_LEN), primary_key=True)
    node: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    first_at: Mapped[datetime]
    last_at: Mapped[datetime]
    intervals: Mapped[int] = mapped_column(BigInteger)


class JobDetail(Base):
    """A job's parts as its JSON reads them, materialised once no batch changed it for a while
    (``collector/job_details.py``), as of ``job.parts_version`` = ``parts_version``."""

    __tablename__ = "job_detail"

    cluster: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(JOB_ID_LEN), primary_key=True)
    parts_version: Mapped[int] = mapped_column(BigInteger)
    # The SQL that built it (job_details.SHAPE): read only by code of the same.
    shape: Mapped[str] = mapped_column(String(16))
    # json, not jsonb: kept as the text it was built as, so it parses to exactly what the
    # live parts parse to.
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


class JobBoardPart(Base):
    """One (model, phase) part of an annotated job, as the model leaderboard counts it.

    ``phase`` ``""``: none. ``sampled_uj`` is the energy of the annotated phases that reported
    samples (J per sample is ``sampled_uj / samples``); the un-annotated rest has none.
    """

    __tablename__ = "job_board_part"
    __table_args__ = (Index("ix_job_board_part_model", "model", "phase", "energy_uj"),)

    cluster: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(JOB_ID_LEN), primary_key=True)
    model: Mapped[str] = mapped_column(String(255), primary_key=True)
    phase: Mapped[str] = mapped_column(String(16), primary_key=True)
    energy_uj: Mapped[int] = mapped_column(BigInteger)
    sampled_uj: Mapped[int] = mapped_column(BigInteger)
    samples: Mapped[int | None] = mapped_column(BigInteger)
    gpu_s: Mapped[float] = mapped_column(Float)


class AuthToken(Base):
    """A static token (``Authorization: Bearer``), stored as the SHA-256 of its text.

    ``role``: ``agent`` (posts batches for ``node`` of ``cluster`` only), ``hooks`` (job events
    and the Slurm sync) or ``admin``. A revoked token stays, with ``revoked_at``, for the audit.
    """

    __tablename__ = "auth_token"
    __table_args__ = (Index("ix_auth_token_node", "cluster", "node"),)

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    cluster: Mapped[str] = mapped_column(String(NAME_LEN))
    node: Mapped[str | None] = mapped_column(String(NAME_LEN))
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(NAME_LEN))
    revoked_at: Mapped[datetime | None]


class AuditLog(Base):
    """One privileged change: who (identity as authenticated), when, what, old and new value."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(BigIntId, Identity(always=False), primary_key=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(NAME_LEN))
    action: Mapped[str] = mapped_column(String(64))
    cluster: Mapped[str | None] = mapped_column(String(NAME_LEN))
    old_value: Mapped[dict[str, Any] | None]
    new_value: Mapped[dict[str, Any] | None]


class IntervalRetention(Base):
    """Where the retained raw intervals start: ``jobenergy db maintain --retention-days``
    dropped every ``energy_interval`` partition before ``kept_from`` (PostgreSQL only).

    A batch reaching back before it cannot be checked against what was stored there, so it is
    refused (``collector/intervals.py``); totals are not affected by the drop.
    """

    __tablename__ = "interval_retention"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    kept_from: Mapped[datetime]


class RollupState(Base):
    """How fresh a materialisation is: jobs changed before ``through`` are in it as they are."""

    __tablename__ = "rollup_state"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    through: Mapped[datetime]
    refreshed_at: Mapped[datetime]


class _BoardRow:
    """The figures of one (model, phase) row of a materialised leaderboard."""

    jobs: Mapped[int] = mapped_column(BigInteger)
    energy_uj: Mapped[int] = mapped_column(BigInteger)
    facility_uj: Mapped[float] = mapped_column(Float)
    co2e_ug: Mapped[float] = mapped_column(Float)
    gpu_s: Mapped[float] = mapped_column(Float)
    samples: Mapped[int | None] = mapped_column(BigInteger)
    sampled_uj: Mapped[int | None] = mapped_column(BigInteger)
    median_uj: Mapped[float] = mapped_column(Float)


class RollupBoardTotal(_BoardRow, Base):
    """The model leaderboard over all time, materialised whole (exact medians included): one
    row per (scope, model, phase); ``scope`` is a cluster, or "" for all clusters together
    (medians do not add up across clusters). ``phase`` "" for none. See ``collector/rollups.py``.
    """

    __tablename__ = "rollup_board_total"

    scope: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    model: Mapped[str] = mapped_column(String(255), primary_key=True)
    phase: Mapped[str] = mapped_column(String(16), primary_key=True)


class RollupBoardWindow(_BoardRow, Base):
    """The model leaderboard over the last ``period`` (``24h``, ``7d``, ``30d``: jobs that
    started in ``[through - period, through)`` of its ``rollup_state`` row), materialised as
    :class:`RollupBoardTotal` is, per (period, scope, model, phase)."""

    __tablename__ = "rollup_board_window"

    period: Mapped[str] = mapped_column(String(8), primary_key=True)
    scope: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    model: Mapped[str] = mapped_column(String(255), primary_key=True)
    phase: Mapped[str] = mapped_column(String(16), primary_key=True)


class RollupSummary(Base):
    """Energy totals per group (``GET /api/v1/summary``), materialised: one row per (period,
    scope, phase, group_by, group); ``period`` "" for all time, else a rolling window ending
    at its ``rollup_state`` row's ``through``; ``scope`` a cluster or "" for all; ``phase``
    "" for every phase. Sums are floats (they report kWh; a cluster's total may pass 2**63
    µJ). See ``collector/rollups.py``."""

    __tablename__ = "rollup_summary"
    __table_args__ = (Index("ix_rollup_summary_lookup", "period", "scope", "phase", "group_by"),)

    id: Mapped[int] = mapped_column(BigIntId, Identity(always=False), primary_key=True)
    period: Mapped[str] = mapped_column(String(8))
    scope: Mapped[str] = mapped_column(String(NAME_LEN))
    phase: Mapped[str] = mapped_column(String(16))
    group_by: Mapped[str] = mapped_column(String(16))
    group: Mapped[str | None] = mapped_column(String(255))
    jobs: Mapped[int] = mapped_column(BigInteger)
    energy_uj: Mapped[float] = mapped_column(Float)
    gpu_uj: Mapped[float] = mapped_column(Float)
    facility_uj: Mapped[float] = mapped_column(Float)
    co2e_ug: Mapped[float] = mapped_column(Float)
    gpu_s: Mapped[float] = mapped_column(Float)


#: Budget scopes, periods, units and policies (the ``budget`` table's CHECKs and the API's).
BUDGET_SCOPES = ("user", "account", "account_user")
BUDGET_PERIODS = ("day", "week", "month", "range")
BUDGET_UNITS = ("kwh", "kg_co2e")
SUBMIT_POLICIES = ("warn", "deny")
RUNNING_POLICIES = ("none", "warn", "cancel")
ACCOUNT_LEN = 64  # job.account's and job.user's length


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Budget(Base):
    """An energy budget: a limit on the facility energy (or CO2e) of matching jobs per period.

    ``account``/``user`` are ``""`` where the scope does not name one (so the unique index of
    recurring budgets holds; NULLs would never collide). The limit is an integer in the unit's
    inner form: ``limit_uj`` (facility µJ) for ``kwh``, ``limit_mg`` (mg CO2e) for
    ``kg_co2e``; the other is NULL. ``start_at``/``end_at`` bound a ``range`` budget (whole UTC
    hours, since usage is summed from ``job_energy_hour``) and are NULL otherwise.
    ``running_policy`` is for the agent's runtime enforcement; submission reads
    ``submit_policy``.
    """

    __tablename__ = "budget"
    __table_args__ = (
        CheckConstraint(_in("scope", BUDGET_SCOPES), name="scope"),
        CheckConstraint(_in("period", BUDGET_PERIODS), name="period"),
        CheckConstraint(_in("unit", BUDGET_UNITS), name="unit"),
        CheckConstraint(_in("submit_policy", SUBMIT_POLICIES), name="submit_policy"),
        CheckConstraint(_in("running_policy", RUNNING_POLICIES), name="running_policy"),
        CheckConstraint(
            f"(unit = 'kwh' AND limit_uj > 0 AND limit_uj <= {BIGINT_MAX} AND limit_mg IS NULL)"
            f" OR (unit = 'kg_co2e' AND limit_mg > 0 AND limit_mg <= {BIGINT_MAX}"
            " AND limit_uj IS NULL)", name="limit_of_unit"),
        CheckConstraint(
            "(period = 'range' AND start_at IS NOT NULL AND end_at IS NOT NULL"
            " AND start_at < end_at) OR (period <> 'range' AND start_at IS NULL"
            " AND end_at IS NULL)", name="range_bounds"),
        # One recurring budget per (cluster, scope, who, period, unit): `budget set` updates it.
        Index("ix_budget_recurring", "cluster", "scope", "account", "user", "period", "unit",
              unique=True, sqlite_where=text("period <> 'range'"),
              postgresql_where=text("period <> 'range'")),
    )

    id: Mapped[int] = mapped_column(BigIntId, Identity(always=False), primary_key=True)
    cluster: Mapped[str] = mapped_column(String(NAME_LEN))
    scope: Mapped[str] = mapped_column(String(16))
    account: Mapped[str] = mapped_column(String(ACCOUNT_LEN))
    user: Mapped[str] = mapped_column(String(ACCOUNT_LEN))
    period: Mapped[str] = mapped_column(String(8))
    start_at: Mapped[datetime | None]
    end_at: Mapped[datetime | None]
    unit: Mapped[str] = mapped_column(String(8))
    limit_uj: Mapped[int | None] = mapped_column(BigInteger)
    limit_mg: Mapped[int | None] = mapped_column(BigInteger)
    submit_policy: Mapped[str] = mapped_column(String(8))
    running_policy: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(NAME_LEN))
    updated_at: Mapped[datetime]
    updated_by: Mapped[str] = mapped_column(String(NAME_LEN))
