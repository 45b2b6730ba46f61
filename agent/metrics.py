"""Prometheus metrics of the agent itself (not job energy: that goes to the collector).

A registry per agent instance, so tests and several agents in one process never collide on
the global default registry. Names follow Prometheus conventions: base units (joules,
seconds), ``_total`` on counters, no ``_created`` series (``disable_created_metrics``, which
is process-wide in prometheus_client).

Energy is kept as integer µJ (DESIGN.md decision 1) and converted to joules only when
scraped: ``µJ / 1e6`` is one correctly rounded division, no float accumulation. Running totals
that other objects already keep as integers (spool drops, push failures, NVML errors) are
read at scrape time by :class:`TotalCounters` rather than mirrored into gauges.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from jobenergy.core.units import UJ_PER_J
from jobenergy.core.version import VERSION

#: A total read at scrape time: one integer, or integers per label values.
TotalReader = Callable[[], int | Mapping[tuple[str, ...], int]]


@dataclass(frozen=True)
class _Total:
    name: str
    documentation: str
    labels: tuple[str, ...]
    read: TotalReader
    scale: int


class TotalCounters(Collector):
    """Counters whose running totals are integers kept elsewhere, read when scraped.

    The owner of a total (the spool, the pusher, the sampler) keeps counting as it does; a
    scrape reads the current value, divided by ``scale`` (``UJ_PER_J`` for µJ → J).
    """

    def __init__(self) -> None:
        self._totals: list[_Total] = []

    def add(self, name: str, documentation: str, read: TotalReader,
            labels: Sequence[str] = (), scale: int = 1) -> None:
        """Expose ``read()`` as the counter ``name`` (``_total`` is appended)."""
        self._totals.append(_Total(name, documentation, tuple(labels), read, scale))

    def collect(self) -> Iterator[Metric]:
        """Yield one counter family per total, with its current values."""
        for total in self._totals:
            family = CounterMetricFamily(total.name, total.documentation, labels=total.labels)
            value = total.read()
            items = value.items() if isinstance(value, Mapping) else [((), value)]
            for key, count in sorted(items):
                family.add_metric(list(key), count / total.scale if total.scale != 1 else count)
            yield family


#: Refusal statuses (``agent/pusher.py``) and sensors whose series exist from the start, so
#: that ``increase()`` sees the first one.
REJECT_REASONS = ("400", "404", "409", "413", "415", "422")
SENSORS = ("rapl", "nvml")


class AgentMetrics:
    """The agent's health counters and its measured energy, in joules.

    Args:
        cluster: The agent's cluster, for ``jobenergy_agent_node_info`` (absent when None).
        node: Its Slurm node name, likewise: joins agent health with the collector's series.
    """

    def __init__(self, cluster: str | None = None, node: str | None = None) -> None:
        disable_created_metrics()
        self.registry = CollectorRegistry()
        r = self.registry
        Info("jobenergy_build", "The running jobenergy version", registry=r).info(
            {"version": VERSION})
        if cluster is not None and node is not None:
            Info("jobenergy_agent_node", "The cluster and Slurm node this agent measures",
                 registry=r).info({"cluster": cluster, "node": node})
        ProcessCollector(registry=r)  # process_start_time_seconds, CPU, memory of the agent
        self.samples = Counter("jobenergy_agent_samples", "Samples taken", registry=r)
        self.sensor_errors = Counter(
            "jobenergy_agent_sensor_errors", "Failed sensor reads", ["sensor"], registry=r
        )
        self.jobs = Gauge("jobenergy_agent_jobs", "Slurm jobs seen at the last sample", registry=r)
        self.static_power_w = Gauge(
            "jobenergy_agent_static_power_watts",
            "Static (idle) power per source used to prorate boundary intervals, configured or "
            "learned (absent until learned)",
            ["component", "source"],
            registry=r,
        )
        self.spool_pending = Gauge(
            "jobenergy_agent_spool_pending_batches", "Batches waiting for the collector", registry=r
        )
        self.last_push_success = Gauge(
            "jobenergy_agent_last_push_success_timestamp_seconds",
            "When the collector last acknowledged a batch (Unix time; 0 until it first has)",
            registry=r,
        )
        # prometheus_client appends _total: jobenergy_agent_batches_rejected_total{reason}.
        self.batches_rejected = Counter(
            "jobenergy_agent_batches_rejected",
            "Batches the collector refused (4xx, reason = HTTP status), kept in rejected/",
            ["reason"],
            registry=r,
        )
        self.annotations_refused = Counter(
            "jobenergy_agent_annotations_refused",
            "Annotations refused at the socket, by reason (invalid, rate, connections, busy, "
            "not_in_job, owner, phase_cap)",
            ["reason"],
            registry=r,
        )
        self.phases_dropped = Counter(
            "jobenergy_agent_phases_dropped",
            "Closed phases not sent: invalid for the wire, or their interval alone was larger "
            "than max_batch_bytes",
            registry=r,
        )
        # Written by the sampling thread only; a scrape copies them (dict() of a dict is one
        # C call under the GIL, so it never sees a half-made update).
        self._measured_uj: dict[tuple[str, str], int] = {}
        self._unattributed_uj: dict[tuple[str], int] = {}
        self._gpu_errors: dict[tuple[str], int] = {}
        for reason in REJECT_REASONS:
            self.batches_rejected.labels(reason)
        for sensor in SENSORS:
            self.sensor_errors.labels(sensor)
        self.totals = TotalCounters()
        self.totals.add(
            "jobenergy_agent_measured_energy_joules",
            "Energy measured per source since the agent started, J (integer µJ inside)",
            lambda: dict(self._measured_uj), ["component", "source"], UJ_PER_J)
        self.totals.add(
            "jobenergy_agent_unattributed_energy_joules",
            "Energy on no job since the agent started, J (integer µJ inside)",
            lambda: dict(self._unattributed_uj), ["component"], UJ_PER_J)
        self.totals.add(
            "jobenergy_agent_gpu_errors",
            "NVML errors by reason (GPU lost, counter reset, unsupported function)",
            lambda: dict(self._gpu_errors), ["reason"])
        r.register(self.totals)

    def add_energy(self, component: str, source: str, measured_uj: int,
                   unattributed_uj: int) -> None:
        """Count one interval's measured and unattributed energy of a source (µJ)."""
        key = (component, source)
        self._measured_uj[key] = self._measured_uj.get(key, 0) + measured_uj
        self._unattributed_uj[(component,)] = (
            self._unattributed_uj.get((component,), 0) + unattributed_uj)

    def set_gpu_errors(self, errors_total: Mapping[str, int]) -> None:
        """Take the NVML layer's running error counts by reason."""
        self._gpu_errors = {(reason,): count for reason, count in errors_total.items()}

    def watch(self, *, spool_dropped: Callable[[], int], push_failures: Callable[[], int],
              batches_sent: Callable[[], int]) -> None:
        """Expose the spool's and the pusher's running totals, read when scraped."""
        self.totals.add("jobenergy_agent_spool_dropped_batches",
                        "Batches dropped by the spool size cap (data lost)", spool_dropped)
        self.totals.add("jobenergy_agent_push_failures",
                        "Failed deliveries to the collector (unreachable, 5xx, 401/403)",
                        push_failures)
        self.totals.add("jobenergy_agent_batches_sent",
                        "Batches the collector acknowledged (stored or duplicate)",
                        batches_sent)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Expose /metrics on ``addr:port`` in a background thread."""
        start_http_server(port, addr=addr, registry=self.registry)
