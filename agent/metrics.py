"""Prometheus metrics of the agent itself (not job energy: that goes to the collector).

A registry per agent instance, so tests and several agents in one process never collide on
the global default registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class AgentMetrics:
    """The agent's health counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.samples = Counter("jobenergy_agent_samples", "Samples taken", registry=r)
        self.sensor_errors = Counter(
            "jobenergy_agent_sensor_errors", "Failed sensor reads", ["sensor"], registry=r
        )
        self.energy_uj = Counter(
            "jobenergy_agent_measured_energy_uj",
            "Energy measured, µJ",
            ["component", "source"],
            registry=r,
        )
        self.unattributed_uj = Counter(
            "jobenergy_agent_unattributed_energy_uj",
            "Energy on no job, µJ",
            ["component"],
            registry=r,
        )
        self.gpu_errors = Gauge(
            "jobenergy_agent_gpu_errors",
            "NVML errors by reason (GPU lost, counter reset, unsupported function)",
            ["reason"],
            registry=r,
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
        self.spool_dropped = Gauge(
            "jobenergy_agent_spool_dropped_batches",
            "Batches dropped by the spool size cap",
            registry=r,
        )
        self.push_failures = Gauge(
            "jobenergy_agent_push_failures", "Failed deliveries to the collector", registry=r
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

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Expose /metrics on ``addr:port`` in a background thread."""
        start_http_server(port, addr=addr, registry=self.registry)
