"""The node agent: sample → attribute → spool → push, once per ``interval_s``.

One sample reads every counter once (RAPL zones, NVML devices), the Slurm cgroups and
``/proc/stat``. Consecutive samples make an interval whose per-source deltas are attributed
to jobs (CPU/DRAM: :mod:`.attribution`; GPU: :mod:`.gpu.attribution`). Consecutive sampled
intervals are merged, exactly, into stored intervals of up to ``store_interval_s``
(:mod:`.coalesce`); the stored intervals are sealed into a batch every ``push_interval_s``
and handed to the spool; the pusher thread delivers them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from jobenergy.agent.annotations import AnnotationServer
from jobenergy.agent.answer import accepted_fields
from jobenergy.agent.attribution import CpuSplit, StaticFloor, job_usage
from jobenergy.agent.bmc_poller import BmcPoller
from jobenergy.agent.coalesce import Coalescer, StoredInterval
from jobenergy.agent.continuity import CounterRecord, gap_interval
from jobenergy.agent.energy_limits import EnergyLimits
from jobenergy.agent.lifetime import alive_spans
from jobenergy.agent.metrics import AgentMetrics
from jobenergy.agent.phases import PhaseBook, Segment
from jobenergy.agent.procstat import read_boot_id
from jobenergy.agent.pusher import Pusher
from jobenergy.agent.readings import Reading
from jobenergy.agent.reconcile import Reconciler
from jobenergy.agent.records import (
    JobRecord,
    PhaseSample,
    SampledInterval,
    SourceSample,
    check_sampled,
)
from jobenergy.agent.sampler import Sample, Sampler
from jobenergy.agent.sensors.bmc_config import bmc_sensor
from jobenergy.agent.spool import Spool, split_by_size, utf8_len
from jobenergy.agent.wire import WireError, interval_json, phase_json
from jobenergy.core.counters import counter_delta
from jobenergy.core.errors import ConfigError
from jobenergy.core.limits import MAX_STEPS_PER_JOB, SCHEMA_VERSION
from jobenergy.core.signing import (
    BearerSigner,
    MungeSigner,
    Signer,
    read_token_file,
    transport_verify,
)
from jobenergy.core.version import VERSION

if TYPE_CHECKING:  # the type only: the daemon never imports pydantic-settings
    from jobenergy.agent.settings import AgentSettings  # (agent/settings_child.py)

logger = logging.getLogger(__name__)

#: Reported in every batch: the installed distribution's version (core/version.py).
AGENT_VERSION = VERSION
_MAX_STEP_NAME = 32


def _step_cpu_us(step_cpu_ns: dict[str, int]) -> dict[str, int]:
    """Return the wire's per-step CPU time, µs: steps with time only, at most the schema's cap.

    Steps that used no CPU carry no energy and are left out. Beyond ``MAX_STEPS_PER_JOB``
    steps the busiest are kept (the collector splits over those); a name longer than the
    schema allows (never made by Slurm) is dropped.
    """
    out = {
        step: ns // 1000
        for step, ns in step_cpu_ns.items()
        if ns >= 1000 and len(step) <= _MAX_STEP_NAME
    }
    if len(out) > MAX_STEPS_PER_JOB:
        busiest = sorted(out.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_STEPS_PER_JOB]
        out = dict(busiest)
    return out


def push_auth(settings: AgentSettings) -> Signer | None:
    """Return how the agent signs its pushes (``[agent] auth``).

    Raises:
        ConfigError: The token file is unusable (missing, empty, readable by others).
    """
    if settings.auth == "munge":
        return MungeSigner(settings.munge_socket)
    if settings.auth == "token":
        assert settings.token_file is not None  # checked by the settings
        return BearerSigner(read_token_file(settings.token_file))
    return None


def _envelope_bytes(batch: dict) -> int:
    """Return the bytes a batch body holds besides its intervals (the largest ``seq``), plus
    room for gzip's header and trailer."""
    return len(json.dumps({**batch, "seq": 2**62, "intervals": []}).encode()) + 64


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


class Agent:
    """A node agent bound to its settings; :meth:`run` is the daemon loop."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.metrics = AgentMetrics(settings.cluster, settings.node)
        self.boot_id = read_boot_id(settings.procfs_root)
        self.sampler = Sampler(settings, self.metrics)
        self.gpu = self.sampler.gpu
        self.spool = Spool(settings.spool_dir, settings.spool_max_bytes)
        self.pusher = Pusher(
            settings.collector_url, self.spool, metrics=self.metrics,
            sign=push_auth(settings),
            verify=transport_verify(settings.collector_url, settings.ca_file,
                                    settings.allow_insecure),
        )
        self._floors = {
            "cpu": settings.cpu_static_power_w,
            "dram": settings.dram_static_power_w,
        }
        self._static: dict[str, StaticFloor] = {}
        self._last_reading: dict[str, Reading] = {}
        self.counter_record = CounterRecord(settings.spool_dir, self.boot_id)
        self.phases = PhaseBook()
        # The node's wall power (bmc = redfish|ipmi): read in its own thread, reconciled here.
        sensor = bmc_sensor(settings)
        self.bmc = None if sensor is None else BmcPoller(sensor, settings.bmc_interval_s,
                                                         self.metrics)
        self.reconciler = None if sensor is None else Reconciler(settings.bmc_other_policy)
        if self.reconciler is not None:
            reconciler = self.reconciler
            self.metrics.totals.add(
                "jobenergy_agent_bmc_flagged_windows",
                "BMC windows whose energy was below the RAPL + GPU sum (nothing taken from jobs)",
                lambda: reconciler.flagged_total)
            # Progress an operator (or a test) can wait on: each closed window is reconciled.
            self.metrics.totals.add(
                "jobenergy_agent_bmc_windows",
                "BMC windows closed and reconciled (other = BMC - measured), flagged included",
                lambda: reconciler.windows_total)
        assert settings.limit_dir is not None  # per-node default
        self.energy_limits = EnergyLimits(
            settings.limit_dir, settings.scancel_path, policy=settings.limit_policy,
            warn_fraction=settings.limit_warn_fraction,
            warn_signal=settings.limit_warn_signal, registry=self.metrics.registry)
        # The collector's answers name the running jobs a budget applies to (warn, cancel),
        # and the optional wire fields the collector stores.
        self.pusher.on_accepted = self._collector_answer
        self.annotations: AnnotationServer | None = None
        self._prev: Sample | None = None
        self._coalescer = Coalescer(
            _us(settings.store_interval_s), _us(settings.interval_s)
        )
        self._last_seal_mono_ns = time.monotonic_ns()
        self.metrics.watch(
            spool_dropped=lambda: self.spool.dropped_total,
            push_failures=lambda: self.pusher.failures_total,
            batches_sent=lambda: self.pusher.sent_total,
        )
        # Read when scraped: acknowledgements empty the spool between two seals.
        self.metrics.spool_pending.set_function(self.spool.pending_count)
        # Prometheus children per label set: ``labels()`` costs a lock and a lookup each.
        self._static_metric: dict[tuple[str, str], Any] = {}

    def _collector_answer(self, body: bytes) -> None:
        """Handle the collector's answer to a batch (the pusher's thread)."""
        self.energy_limits.budget_answer(body)
        # Jobs with several busy steps are merged only for a collector that stores the
        # split (agent/answer.py); a plain attribute: the sampler reads it at its next merge.
        self._coalescer.split_steps = "step_uj" in accepted_fields(body)

    @property
    def _pending(self) -> list[SampledInterval]:
        """The sampled intervals not yet spooled, oldest first (stored or still merging)."""
        return list(self._coalescer.records())

    def take_sample(self) -> Sample:
        """Read every counter, the job cgroups and /proc/stat once."""
        floor = None
        if self._prev is None:
            recorded = self.counter_record.load()
            floor = recorded[0] if recorded is not None else None
        sample = self.sampler.take(self._prev, floor)
        if self.bmc is not None:
            sample.bmc = self.bmc.latest()  # never waits on the BMC: its thread reads it
        return sample

    def attribute(self, prev: Sample, cur: Sample) -> SampledInterval:
        """Attribute the energy between two samples; conserving per source.

        Raises:
            ValueError: The interval would be refused on the wire (:func:`check_sampled`);
                nothing is committed, so the next sample covers its energy.
        """
        interval_ns = cur.mono_ns - prev.mono_ns
        start_ns, end_ns = prev.wall_ns, cur.wall_ns
        job_map = {**prev.job_map, **cur.job_map}  # the later view carries the epilog's end
        # A job in the map that ended before the interval or starts after it is not in it.
        hinted = {
            j
            for j, e in job_map.items()
            if not e.ended_by(start_ns) and (e.start_ns is None or e.start_ns < end_ns)
        }
        usage = job_usage(prev.cgroups, cur.cgroups, hinted)
        spans = alive_spans(
            usage.keys() | job_map.keys(),
            start_ns=start_ns,
            end_ns=end_ns,
            prev_jobs=prev.cgroups.jobs,
            cur_jobs=cur.cgroups.jobs,
            job_map=job_map,
            ended=cur.cgroups.ended_ns,
        )
        alive = {j: hi - lo for j, (lo, hi) in spans.items()}
        if spans:
            usage = {
                j: replace(u, alive_ns=alive[j], alive_from_ns=spans[j][0]) if j in spans else u
                for j, u in usage.items()
            }
        node_busy_ns = 0
        ncpus = 0
        if prev.cpu is not None and cur.cpu is not None:
            node_busy_ns = max(0, cur.cpu.busy_ns - prev.cpu.busy_ns)
            ncpus = cur.cpu.ncpus
        sources: list[SourceSample] = []
        seen: dict[str, Reading] = {}  # committed to _last_reading once the interval is built
        split: CpuSplit | None = None  # the jobs' weights: the same for every CPU/DRAM source
        for source, reading in cur.readings.items():
            before = self._last_reading.get(source)
            seen[source] = reading
            if before is None:
                continue  # first sight of this counter: it is the baseline
            delta = counter_delta(before.energy_uj, reading.energy_uj, reading.max_range_uj)
            if reading.component == "psys":
                jobs_uj, unattributed_uj = {}, delta.energy_uj
            else:
                floor = self._static.get(source)
                if floor is None:
                    floor = self._static[source] = StaticFloor(
                        self._floors.get(reading.component)
                    )
                if split is None:
                    split = CpuSplit(
                        usage, node_busy_ns=node_busy_ns, ncpus=ncpus, span_ns=end_ns - start_ns
                    )
                jobs_uj, unattributed_uj = split.split(
                    delta.energy_uj, floor.static_uj(delta.energy_uj, interval_ns)
                )
                if floor.power_w is not None:
                    self._static_gauge(reading.component, source).set(floor.power_w)
            sources.append(
                SourceSample(
                    component=reading.component,
                    source=source,
                    measured_uj=delta.energy_uj,
                    jobs_uj=jobs_uj,
                    unattributed_uj=unattributed_uj,
                    estimated=reading.estimated,
                    wraps=int(delta.wrapped),
                    resets=int(delta.reset),
                )
            )
        if self.gpu is not None and cur.gpu is not None:
            sources.extend(self.gpu.attribute(prev.gpu, cur.gpu, alive, end_ns - start_ns))
        for src in sources:
            self.metrics.add_energy(src.component, src.source, src.measured_uj,
                                    src.unattributed_uj)
        jobs = [
            JobRecord(
                job_id=j,
                uid=u.uid,
                cpus=u.cpus,
                cpu_time_us=u.cpu_ns // 1000,
                ended=u.ended,
                step_cpu_us=_step_cpu_us(u.step_cpu_ns),
                alive_us=alive[j] // 1000 if j in alive else None,
            )
            for j, u in usage.items()
        ]
        gpu_jobs = {j for s in sources if s.component == "gpu" for j in s.jobs_uj}
        jobs.extend(
            JobRecord(job_id=j, alive_us=alive[j] // 1000 if j in alive else None)
            for j in sorted(gpu_jobs - usage.keys())
        )
        labels = self.phases.labels([job.job_id for job in jobs], prev.wall, cur.wall)
        for job in jobs:
            label = labels.get(job.job_id)
            if label is not None:
                job.phase, job.model = label
        phases = [
            record
            for job_id, seg in self.phases.pop_finished()
            if (record := self._phase_record(job_id, seg)) is not None
        ]
        self.phases.forget(set(cur.cgroups.jobs), before=prev.wall)
        if self.reconciler is not None:
            sources.extend(self.reconciler.add(
                sources, jobs, cur.bmc, span_us=(end_ns - start_ns) // 1000, ncpus=ncpus))
        interval = SampledInterval(
            start=prev.wall,
            end=cur.wall,
            start_us=start_ns // 1000,
            end_us=end_ns // 1000,
            sources=sources,
            jobs=jobs,
            phases=phases,
        )
        check_sampled(interval)  # where the wire Interval was validated before
        self._last_reading.update(seen)
        if self.reconciler is not None:
            self.reconciler.commit()
        return interval

    def _static_gauge(self, component: str, source: str) -> Any:
        child = self._static_metric.get((component, source))
        if child is None:
            child = self._static_metric[(component, source)] = (
                self.metrics.static_power_w.labels(component, source)
            )
        return child

    def _phase_record(self, job_id: str, seg: Segment) -> PhaseSample | None:
        """Return the wire record of a closed phase; None (logged, counted) when invalid.

        The socket already checks every field, so this never happens; but a record the
        collector would refuse must cost only itself, never the node's batch.
        """
        assert seg.end is not None  # closed
        record = PhaseSample(
            job_id=job_id,
            phase=seg.phase,
            model=seg.model,
            start=seg.start,
            end=seg.end,
            samples=seg.samples,
            metrics=dict(seg.metrics),
            tags=dict(seg.tags),
        )
        try:
            phase_json(record.wire())
        except WireError as err:
            self.metrics.phases_dropped.inc()
            logger.warning("phase not sent: invalid for the wire job_id=%s err=%s", job_id, err)
            return None
        return record

    def _queue(self, interval: SampledInterval) -> None:
        """Hand a sampled interval to the coalescer, with the counters after it."""
        interval.counters = dict(self._last_reading)
        # Read at each interval, as the other [agent] sizes are at each seal. A budget's close
        # watch (agent/energy_limits.py) stores every sampled interval.
        self._coalescer.store_us = _us(self.settings.interval_s if self.energy_limits.watching
                                       else self.settings.store_interval_s)
        self._coalescer.add(interval)

    def tick(self) -> None:
        """Take one sample and queue the interval it closes; seal when a batch is due."""
        cur = self.take_sample()
        self._coalescer.expire(cur.wall_ns // 1000)
        closed: SampledInterval | None = None
        try:
            if self._prev is None:
                for source, reading in cur.readings.items():
                    self._last_reading[source] = reading
                if self.gpu is not None and cur.gpu is not None:
                    self.gpu.attribute(None, cur.gpu)  # the GPUs' baseline readings
                recorded = self.counter_record.load()
                if recorded is not None:
                    gap = gap_interval(recorded[0], recorded[1], cur.wall, cur.readings)
                    if gap is not None:
                        logger.info(
                            "energy while the agent was down sent as unattributed since=%s",
                            recorded[0].isoformat(),
                        )
                        self._queue(gap)
            elif cur.wall > self._prev.wall:
                closed = self.attribute(self._prev, cur)
                self._queue(closed)
            self._prev = cur
            if closed is not None:  # after _prev moved on: a failure here re-counts nothing
                self.energy_limits.observe(cur.job_map, closed)
        finally:
            ready = self._coalescer.ready
            # On a budget's close watch every sampled interval goes out as it closes.
            due_ns = (0 if self.energy_limits.watching
                      else int(self.settings.push_interval_s * 1e9))
            if ready and (
                time.monotonic_ns() - self._last_seal_mono_ns >= due_ns
                or ready >= self.settings.max_intervals_per_batch
            ):
                self.seal(flush=False)

    def seal(self, flush: bool = True) -> None:
        """Write the stored intervals to the spool and wake the pusher.

        Args:
            flush: Also the stored interval still merging (shutdown; the default). The loop
                seals only complete ones: one still merging is complete within
                ``store_interval_s``, and goes with the next batch after.

        The intervals are spread over as many batches as it takes for each body to stay
        within ``max_batch_bytes`` (JSON before gzip) and ``max_intervals_per_batch``, so no
        batch is ever refused as too large: a refused batch would cost every job of the node
        its energy.
        """
        self._last_seal_mono_ns = time.monotonic_ns()
        if flush:
            self._coalescer.close()
        stored = self._coalescer.complete()  # dropped once spooled: a full disk retries
        if not stored:
            return
        batch = {
            "schema_version": SCHEMA_VERSION,
            "cluster": self.settings.cluster,
            "node": self.settings.node,
            "boot_id": self.boot_id,
            "agent_version": AGENT_VERSION,
        }
        budget_bytes = self.settings.max_batch_bytes - _envelope_bytes(batch)
        texts = [text for group in stored for text in self._stored_json(group, budget_bytes)]
        # The counters after the last interval spooled: a restart's gap starts there.
        last = stored[-1].last
        if last.counters is not None:
            self.counter_record.save(last.end, last.counters)
        elif self._prev is not None and self._coalescer.open_since_us is None:
            self.counter_record.save(self._prev.wall, self._last_reading)
        per_batch = self.settings.max_intervals_per_batch
        for group in split_by_size(texts, budget_bytes):
            for i in range(0, len(group), per_batch):
                chunk = group[i : i + per_batch]
                self.spool.seal(batch, {"intervals": "[" + ",".join(chunk) + "]"})
        self._coalescer.drop(len(stored))
        self.pusher.notify()

    def _stored_json(self, stored: StoredInterval, budget_bytes: int) -> list[str]:
        """Return a stored interval's JSON, checked as the wire model does (:mod:`.wire`).

        A merged interval that the wire model refuses (never: the sampled ones were checked)
        or that is too large for a batch alone is stored as its sampled intervals instead,
        so coalescing never costs energy or phases that storing them one by one would keep.
        """
        merged = len(stored.records) > 1
        fields = stored.wire()
        try:
            text = interval_json(fields)
        except WireError as err:
            if merged:
                logger.error("merged interval refused by the wire model, stored unmerged: %s", err)
                return self._unmerged(stored, budget_bytes)
            logger.error(
                "interval not sent: invalid for the wire start=%s err=%s",
                stored.records[0].start.isoformat(),
                err,
            )
            return []
        if merged and utf8_len(text) >= budget_bytes:
            return self._unmerged(stored, budget_bytes)
        return [self._interval_json(fields, budget_bytes, text)]

    def _unmerged(self, stored: StoredInterval, budget_bytes: int) -> list[str]:
        return [
            text
            for record in stored.records
            for text in self._stored_json(StoredInterval(record), budget_bytes)
        ]

    def _interval_json(self, fields: dict[str, Any], budget_bytes: int, text: str) -> str:
        """Return an interval's JSON; one too large for a batch alone loses its phases.

        Never at the defaults (phases per interval are capped far below); with a small
        ``max_batch_bytes`` the energy is kept and the phases, counted and logged, are not.
        """
        phases = fields["phases"]
        if utf8_len(text) < budget_bytes or not phases:
            return text
        self.metrics.phases_dropped.inc(len(phases))
        logger.warning(
            "interval larger than max_batch_bytes=%s: its %s phases are not sent start=%s",
            self.settings.max_batch_bytes,
            len(phases),
            fields["start"].isoformat(),
        )
        text = interval_json({**fields, "phases": []})
        if utf8_len(text) >= budget_bytes:
            logger.error(
                "interval larger than max_batch_bytes=%s even without phases: sent alone "
                "bytes=%s start=%s",
                self.settings.max_batch_bytes,
                utf8_len(text),
                fields["start"].isoformat(),
            )
        return text

    # -- daemon -----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Sample every ``interval_s`` until ``stop`` is set, then shut down cleanly.

        Raises:
            ConfigError: The metrics port cannot be listened on (before anything starts).
        """
        if self.settings.metrics_port is not None:
            try:
                self.metrics.serve(self.settings.metrics_port, self.settings.metrics_addr)
            except OSError as err:  # in use, or an address this host does not have
                raise ConfigError(
                    f"cannot serve metrics on {self.settings.metrics_addr} port "
                    f"{self.settings.metrics_port}: {err.strerror or err}") from err
        if self.settings.annotation_socket:
            server = AnnotationServer(
                self.settings.annotation_socket,
                self.settings.procfs_root,
                self.phases,
                cgroup_root=self.settings.cgroup_root,
                metrics=self.metrics,
            )
            try:
                server.start()
                self.annotations = server
            except OSError as err:
                logger.error(
                    "annotation socket off path=%s err=%s", self.settings.annotation_socket, err
                )
        self.pusher.start()
        if self.bmc is not None:
            self.bmc.start()
        interval_ns = int(self.settings.interval_s * 1e9)
        next_ns = time.monotonic_ns()
        logger.info(
            "agent started cluster=%s node=%s boot_id=%s interval_s=%s collector=%s",
            self.settings.cluster,
            self.settings.node,
            self.boot_id,
            self.settings.interval_s,
            self.settings.collector_url,
        )
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # the daemon's top loop: log and keep sampling
                logger.exception("sample failed")
            next_ns += interval_ns
            now_ns = time.monotonic_ns()
            if next_ns < now_ns:  # overran (suspended, slow disk): do not burst to catch up
                next_ns = now_ns + interval_ns
            stop.wait((next_ns - now_ns) / 1e9)
        self.shutdown()

    def shutdown(self, flush_timeout_s: float = 5.0) -> None:
        """Take a final sample, seal, and try to deliver what is spooled, in under 10 s.

        Never raises, and never waits on a collector that does not answer: whatever is not
        delivered stays in the spool for the next start (acknowledged batches only leave it).
        """
        if self.annotations is not None:
            self.annotations.stop()
        if self.bmc is not None:
            self.bmc.stop(join_timeout_s=self.settings.bmc_timeout_s + 1)
        try:
            self.tick()
        except Exception:
            logger.exception("final sample failed")
        self.energy_limits.wait_idle(5.0)  # a signal decided (and recorded) still goes out
        try:
            self.seal()
        except Exception:
            logger.exception("final seal failed: the last intervals are lost")
        # A push in flight to a hanging collector may take its whole timeout: do not wait for
        # it, and do not race it over the same spool files with a final push of our own.
        stopped = self.pusher.stop(join_timeout_s=2.0)
        deadline = time.monotonic() + flush_timeout_s
        left = -1
        try:
            if stopped:
                while time.monotonic() < deadline and self.spool.pending():
                    if self.pusher.push_once(deadline=deadline):
                        break
                    time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))  # retry pace
            left = len(self.spool.pending())
        except Exception:
            logger.exception("final delivery failed")
        if left:
            logger.warning("exiting with undelivered batches kept in spool pending=%s", left)
        if stopped:
            self.pusher.close()
        logger.info("agent stopped")
