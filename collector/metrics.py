"""Prometheus metrics of the server (collector and API), served at ``GET /metrics``.

Two kinds, in one registry per app (never the global default registry):

- Counters of this process: batches stored, duplicate and refused (by reason = the HTTP
  status), ``energy_interval`` rows written, ingest latency, database errors by operation.
  They start at zero when the process starts, as Prometheus counters do.
- Totals read from the database when scraped (:class:`DatabaseTotals`), so they are right
  across restarts and identical on every collector behind a load balancer: measured and
  unattributed energy per cluster and component in joules (from ``node_energy``), and per
  node the end of its newest stored interval (``node_progress``) and its refused batches
  (``node_refusal``). Each is one small query over per-node rows (never history), cached for
  :data:`DB_METRICS_MAX_AGE_S` so that several Prometheus servers cost one query.

The server runs as one process (``uvicorn.run`` with the app object: no worker processes),
so no multiprocess mode is needed; several servers behind a load balancer are several
targets, each with its own counters (sum them) and the same database totals (take the max).

Nothing here names a job or a user: cluster, node, component and counts only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from jobenergy.collector.models import NodeEnergy, NodeProgress, NodeRefusal
from jobenergy.core.units import UJ_PER_J
from jobenergy.core.version import VERSION

logger = logging.getLogger(__name__)

#: How long the database totals of one scrape serve the next ones, seconds.
DB_METRICS_MAX_AGE_S = 5.0
#: Statuses a batch can be refused with (``collector/routes.py``); their series start at 0 so
#: that ``increase()`` sees the first refusal.
REFUSAL_STATUSES = ("400", "403", "409", "413", "415", "422")
#: Where database errors are counted: a batch, a job event, recording a refusal, any other
#: read or write request, and this module's own queries.
DB_OPERATIONS = ("ingest", "event", "refusal", "read", "write", "metrics", "budget_actions")
#: Ingest latency buckets, seconds (a batch of 10 s of one node takes milliseconds).
INGEST_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def operation_of(method: str, path: str) -> str:
    """Return the ``operation`` label of a database error raised answering a request."""
    if path == "/api/v1/batches":
        return "ingest"
    if path == "/api/v1/jobs/events":
        return "event"
    return "read" if method in ("GET", "HEAD", "OPTIONS") else "write"


class DatabaseTotals(Collector):
    """Energy and node freshness read from the database at scrape time (cached).

    Args:
        factory: The app's sessionmaker.
        errors: The counter a failed query is counted in (``operation="metrics"``).
        max_age_s: How long one reading serves further scrapes.
    """

    def __init__(self, factory: sessionmaker[Session], errors: Counter,
                 max_age_s: float = DB_METRICS_MAX_AGE_S) -> None:
        self.factory = factory
        self.errors = errors
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._families: list[Metric] = []
        self._read_at: float | None = None

    def collect(self) -> Iterator[Metric]:
        """Yield the cached families, reading the database first when they are too old.

        A database that cannot answer is counted and logged; its families are then absent
        from this scrape (never stale values that would look current).
        """
        with self._lock:
            now = time.monotonic()
            if self._read_at is None or now - self._read_at >= self.max_age_s:
                self._read_at = now
                try:
                    self._families = self._read()
                except sa_exc.SQLAlchemyError as err:
                    self.errors.labels("metrics").inc()
                    logger.warning("cannot read the metrics' totals from the database: %s",
                                   getattr(err, "orig", None) or err)
                    self._families = []
            families = self._families
        yield from families

    def _read(self) -> list[Metric]:
        measured: dict[tuple[str, str], int] = {}
        unattributed: dict[tuple[str, str], int] = {}
        with self.factory() as session:
            # Summed per node in SQL (a few rows per node), per cluster here in Python ints:
            # exact, where SQLite's sum() would overflow at 2^63 µJ on a large cluster.
            ne = NodeEnergy
            rows = session.execute(
                select(ne.cluster, ne.component, func.sum(ne.measured_uj),
                       func.sum(ne.unattributed_uj))
                .group_by(ne.cluster, ne.node, ne.component)
            ).all()
            progress = session.execute(
                select(NodeProgress.cluster, NodeProgress.node, NodeProgress.last_at,
                       NodeProgress.last_sources)
            ).all()
            refusals = session.execute(
                select(NodeRefusal.cluster, NodeRefusal.node, NodeRefusal.refused)
            ).all()
        for cluster, component, measured_uj, unattributed_uj in rows:
            key = (cluster, component)
            measured[key] = measured.get(key, 0) + int(measured_uj)
            unattributed[key] = unattributed.get(key, 0) + int(unattributed_uj)
        energy = CounterMetricFamily(
            "jobenergy_collector_measured_energy_joules",
            "Energy measured on the cluster's nodes and stored, J (integer µJ in the database)",
            labels=["cluster", "component"])
        lost = CounterMetricFamily(
            "jobenergy_collector_unattributed_energy_joules",
            "Stored energy on no job (idle nodes, unallocated GPUs, boundaries), J",
            labels=["cluster", "component"])
        for key in sorted(measured):
            energy.add_metric(list(key), measured[key] / UJ_PER_J)
            lost.add_metric(list(key), unattributed[key] / UJ_PER_J)
        last = GaugeMetricFamily(
            "jobenergy_collector_node_last_batch_timestamp_seconds",
            "End of the newest interval stored for the node (Unix time, the node's clock): "
            "its data is complete up to here",
            labels=["cluster", "node"])
        sources = GaugeMetricFamily(
            "jobenergy_collector_node_last_interval_sources",
            "Energy sources in the node's newest stored interval (0: the node is unmeasured)",
            labels=["cluster", "node"])
        for cluster, node, last_at, last_sources in sorted(progress):
            last.add_metric([cluster, node], last_at.timestamp())
            sources.add_metric([cluster, node], last_sources)
        refused = CounterMetricFamily(
            "jobenergy_collector_node_batches_refused",
            "Batches of the node refused (4xx), as recorded in the database (every collector)",
            labels=["cluster", "node"])
        for cluster, node, count in sorted(refusals):
            refused.add_metric([cluster, node], count)
        return [energy, lost, last, sources, refused]


class CollectorMetrics:
    """The server's registry and the counters the routes update.

    Args:
        factory: The app's sessionmaker, for :class:`DatabaseTotals`.
    """

    def __init__(self, factory: sessionmaker[Session]) -> None:
        disable_created_metrics()  # process-wide in prometheus_client
        self.registry = CollectorRegistry()
        r = self.registry
        Info("jobenergy_build", "The running jobenergy version", registry=r).info(
            {"version": VERSION})
        self.batches = Counter(
            "jobenergy_collector_batches",
            "Batches answered 200: outcome stored, or duplicate (stored before, nothing written)",
            ["outcome"], registry=r)
        self.batches_refused = Counter(
            "jobenergy_collector_batches_refused",
            "Batches refused with a 4xx, by reason (the HTTP status); the agent keeps them",
            ["reason"], registry=r)
        self.records = Counter(
            "jobenergy_collector_records",
            "energy_interval rows written by stored batches", registry=r)
        self.ingest_seconds = Histogram(
            "jobenergy_collector_ingest_duration_seconds",
            "Time to validate and store (or find a duplicate of) one batch, s",
            buckets=INGEST_BUCKETS_S, registry=r)
        self.ingest_group_batches = Histogram(
            "jobenergy_collector_ingest_group_batches",
            "Batches stored together in one transaction (group commit)",
            buckets=GROUP_BUCKETS, registry=r)
        self.ingest_group_fallbacks = Counter(
            "jobenergy_collector_ingest_group_fallbacks",
            "Groups whose transaction failed, then stored batch by batch", registry=r)
        self.database_errors = Counter(
            "jobenergy_collector_database_errors",
            "Database errors by operation (down, locked, out of connections, a value refused)",
            ["operation"], registry=r)
        for outcome in ("stored", "duplicate"):
            self.batches.labels(outcome)
        for status in REFUSAL_STATUSES:
            self.batches_refused.labels(status)
        for operation in DB_OPERATIONS:
            self.database_errors.labels(operation)
        self.totals = DatabaseTotals(factory, self.database_errors)
        r.register(self.totals)
