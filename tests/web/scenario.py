"""A known workload for the web pages: three jobs on two GPU nodes, posted to a real server.

Every energy is an exact integer, so each figure a page shows can be derived here:

| job  | user  | account         | node | model    | job phase | in-job phases (s)            |
|------|-------|-----------------|------|----------|-----------|------------------------------|
| 9001 | alice | ``=1+2`` (CSV!) | gpu1 | llama-7b | training  | training 0-40, inference 40-60 |
| 9002 | bob   | physics         | gpu2 | llama-7b | inference | inference 30-90              |
| 9003 | alice | physics         | gpu1 | bert     | training  | training 60-120              |

Job 9001's name is markup (``<img src=x onerror=...>``): a page that injected it as HTML
would run it. Intervals are 10 s; on each node a job gets 3/4 of each source's energy, the
node's unattributed account the rest. The work starts at 10:59, so it straddles an hour: the
cluster's PUE and carbon intensity series (:data:`FACTORS`) change at 11:00 (job 9001 runs
wholly in the first hour, 9003 in the second). :data:`BUDGETS` (set by :func:`post_budgets`)
are budgets over these jobs, for the budgets page.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from jobenergy.core.schema import Batch, Interval, JobSample, PhaseRecord, SourceEnergy
from jobenergy.core.split import split_uj

CLUSTER = "webc"
T0 = datetime(2026, 11, 23, 10, 59, tzinfo=UTC)
#: factor -> ((hour, value), ...): PUE 1.5 then 1.2, carbon 200 then 300 g/kWh at 11:00.
FACTORS = {
    "pue": ((datetime(2026, 11, 23, 10, tzinfo=UTC), 1.5),
            (datetime(2026, 11, 23, 11, tzinfo=UTC), 1.2)),
    "carbon": ((datetime(2026, 11, 23, 10, tzinfo=UTC), 200.0),
               (datetime(2026, 11, 23, 11, tzinfo=UTC), 300.0)),
}
INTERVAL_S = 10
XSS_NAME = '<img src=x onerror="window.__xss=1">train'
FORMULA_ACCOUNT = "=1+2"

#: node -> (component, source, device name, power W)
SOURCES = {
    "gpu1": [("cpu", "package-0", None, 120), ("dram", "package-0/dram", None, 20),
             ("gpu", "gpu/GPU-11111111-1111-1111-1111-111111111111", "NVIDIA H100", 300),
             ("gpu", "gpu/GPU-22222222-2222-2222-2222-222222222222", "NVIDIA H100", 250)],
    "gpu2": [("cpu", "package-0", None, 90),
             ("gpu", "gpu/GPU-33333333-3333-3333-3333-333333333333", "NVIDIA A100", 200)],
}


@dataclass(frozen=True)
class JobPlan:
    job_id: str
    user: str
    uid: int
    account: str
    node: str
    model: str
    phase: str
    start_s: int
    end_s: int
    #: (phase, start_s, end_s, samples) announced in the job
    phases: tuple[tuple[str, int, int, int], ...]
    name: str = "job"


JOBS = (
    JobPlan("9001", "alice", 65001, FORMULA_ACCOUNT, "gpu1", "llama-7b", "training", 0, 60,
            (("training", 0, 40, 4000), ("inference", 40, 60, 1000)), name=XSS_NAME),
    JobPlan("9002", "bob", 65002, "physics", "gpu2", "llama-7b", "inference", 30, 90,
            (("inference", 30, 90, 3000),), name="serve"),
    JobPlan("9003", "alice", 65001, "physics", "gpu1", "bert", "training", 60, 120,
            (("training", 60, 120, 6000),), name="bert-ft"),
)
#: Each node's intervals: [first s, last s)
NODE_SPAN = {"gpu1": (0, 120), "gpu2": (30, 90)}


@dataclass
class Expected:
    """What the pages must show, from the posted batches."""

    job_uj: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    job_component_uj: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    node_measured_uj: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    node_attributed_uj: dict[tuple[str, str], int] = field(
        default_factory=lambda: defaultdict(int))
    phase_uj: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    intervals: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    #: (job, UTC hour) -> µJ: what the hour's PUE and carbon intensity price
    job_hour_uj: dict[tuple[str, datetime], int] = field(
        default_factory=lambda: defaultdict(int))

    def kwh(self, job_id: str) -> float:
        return self.job_uj[job_id] / 3.6e12

    def user_kwh(self, user: str) -> float:
        return sum(self.job_uj[j.job_id] for j in JOBS if j.user == user) / 3.6e12

    def account_kwh(self, account: str) -> float:
        return sum(self.job_uj[j.job_id] for j in JOBS if j.account == account) / 3.6e12

    def facility_kwh(self, job_id: str) -> float:
        """The job's facility energy: each hour's energy times that hour's PUE."""
        return sum(uj * factor("pue", hour) for (job, hour), uj in self.job_hour_uj.items()
                   if job == job_id) / 3.6e12

    def co2e_kg(self, job_id: str) -> float:
        """The job's CO2e: each hour's facility energy times that hour's g/kWh."""
        return sum(uj * factor("pue", hour) * factor("carbon", hour) / 1000
                   for (job, hour), uj in self.job_hour_uj.items() if job == job_id) / 3.6e12


def factor(name: str, hour: datetime) -> float:
    """Return the value of :data:`FACTORS` ``name`` in force at ``hour``."""
    return [v for t, v in FACTORS[name] if t <= hour][-1]


def _at(s: int) -> datetime:
    return T0 + timedelta(seconds=s)


def _job_on(node: str, s: int) -> JobPlan | None:
    for job in JOBS:
        if job.node == node and job.start_s <= s < job.end_s:
            return job
    return None


def batches(expected: Expected) -> list[Batch]:
    """Return one batch per node; fill ``expected`` with what they carry."""
    out = []
    for node, (first, last) in NODE_SPAN.items():
        intervals = []
        for i, s in enumerate(range(first, last, INTERVAL_S)):
            job = _job_on(node, s)
            sources = []
            for n, (component, source, device, power_w) in enumerate(SOURCES[node]):
                measured = power_w * INTERVAL_S * 1_000_000 + 1_009 * i + 17 * n
                weights: dict[str | None, int] = {job.job_id: 3, None: 1} if job else {None: 1}
                parts = split_uj(measured, weights)
                unattributed = parts.pop(None)
                sources.append(SourceEnergy(
                    component=component, source=source, device_name=device,
                    measured_uj=measured, jobs_uj=parts, unattributed_uj=unattributed))
                expected.node_measured_uj[node, component] += measured
                expected.node_attributed_uj[node, component] += measured - unattributed
                if job:
                    expected.job_uj[job.job_id] += parts[job.job_id]
                    hour = _at(s).replace(minute=0, second=0)
                    expected.job_hour_uj[job.job_id, hour] += parts[job.job_id]
                    expected.job_component_uj[job.job_id, component] += parts[job.job_id]
            expected.intervals[node] += 1
            samples, records = [], []
            if job:
                phase = next(p for p in job.phases if p[1] <= s < p[2])
                for src in sources:
                    expected.phase_uj[job.job_id, phase[0]] += src.jobs_uj[job.job_id]
                samples.append(JobSample(
                    job_id=job.job_id, uid=job.uid, cpus=8, cpu_time_us=40_000_000,
                    step_cpu_us={"batch": 10_000_000, "0": 30_000_000},
                    step_ids=["batch", "0"], phase=phase[0], model=job.model))
                if s + INTERVAL_S == phase[2]:
                    records.append(PhaseRecord(
                        job_id=job.job_id, phase=phase[0], model=job.model,
                        start=_at(phase[1]), end=_at(phase[2]), samples=phase[3],
                        metrics={"loss": 1.25}))
            intervals.append(Interval(start=_at(s), end=_at(s + INTERVAL_S), sources=sources,
                                      jobs=samples, phases=records))
        out.append(Batch(schema_version=1, cluster=CLUSTER, node=node, boot_id="boot-web",
                         seq=0, agent_version="test", intervals=intervals))
    return out


def _event(job: JobPlan, kind: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "cluster": CLUSTER, "job_id": job.job_id, "event": kind,
        "time": _at(job.start_s if kind == "start" else job.end_s).isoformat(),
        "user": job.user, "uid": job.uid, "account": job.account, "partition": "gpu",
        "name": job.name, "nodes": [job.node],
        "tags": {"model": job.model, "phase": job.phase},
    }
    if kind == "end":
        body |= {"state": "COMPLETED", "exit_code": "0:0"}
    return body


def post(url: str, hooks: dict[str, str] | None = None,
         agents: dict[str, dict[str, str]] | None = None,
         admin: dict[str, str] | None = None) -> Expected:
    """Post the scenario's factor series, events and batches to the server at ``url``.

    ``hooks``, ``agents`` (per node) and ``admin`` are the request headers that authenticate
    them; none for a server with ``--auth none``.
    """
    expected = Expected()
    with httpx.Client(base_url=url, timeout=30) as client:
        for factor, points in FACTORS.items():
            client.post(f"/api/v1/clusters/{CLUSTER}/{factor}/series", headers=admin or {},
                        json={"points": [{"time": t.isoformat(), "value": v}
                                         for t, v in points]}).raise_for_status()
        for job in JOBS:
            client.post("/api/v1/jobs/events", json=_event(job, "start"),
                        headers=hooks or {}).raise_for_status()
        for batch in batches(expected):
            client.post("/api/v1/batches", content=batch.model_dump_json(),
                        headers={"content-type": "application/json",
                                 **(agents or {}).get(batch.node, {})}).raise_for_status()
        for job in JOBS:
            client.post("/api/v1/jobs/events", json=_event(job, "end"),
                        headers=hooks or {}).raise_for_status()
    return expected


#: Budgets for the budgets page: (body of PUT /api/v1/budgets less the cluster, the jobs that
#: count). Ranges from the scenario's day to a whole UTC hour 30 days after the tests start:
#: under way whenever they run.
RANGE_END = (datetime.now(UTC) + timedelta(days=30)).replace(minute=0, second=0, microsecond=0)
BUDGET_RANGE = {"period": "range", "start": "2026-11-23T00:00:00Z",
                "end": RANGE_END.strftime("%Y-%m-%dT%H:%M:%SZ")}
#: A name that is markup (a Slurm name has no spaces, so ``<img/src=x/...>``).
MARKUP_ACCOUNT = "<img/src=x/onerror=window.__xss=2>"
BUDGETS = (
    # alice: 9001 and 9003, ~23.3 Wh of 25 Wh (93 %: amber).
    ({"scope": "user", "user": "alice", **BUDGET_RANGE, "limit": "25Wh",
      "submit_policy": "warn", "running_policy": "warn"}, ("9001", "9003")),
    # physics: 9002 and 9003, ~15.2 Wh of 15 Wh (over: red).
    ({"scope": "account", "account": "physics", **BUDGET_RANGE, "limit": "15Wh",
      "submit_policy": "deny", "running_policy": "cancel"}, ("9002", "9003")),
    # =1+2: 9001's CO2e, ~2.6 g of 20 g.
    ({"scope": "account", "account": FORMULA_ACCOUNT, **BUDGET_RANGE, "limit": "20g",
      "submit_policy": "deny", "running_policy": "none"}, ("9001",)),
    # bob this month: no job (they ran in November 2026).
    ({"scope": "user", "user": "bob", "period": "month", "limit": "1kWh",
      "submit_policy": "deny", "running_policy": "none"}, ()),
    # Nobody's but the admins': carol in an account named with markup.
    ({"scope": "account_user", "account": MARKUP_ACCOUNT, "user": "carol", "period": "week",
      "limit": "2kgCO2e", "submit_policy": "warn", "running_policy": "cancel"}, ()),
)


def post_budgets(url: str, admin: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Set :data:`BUDGETS` on the server at ``url``; return them as the API answers."""
    out = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for body, _ in BUDGETS:
            resp = client.put("/api/v1/budgets", json={"cluster": CLUSTER, **body},
                              headers=admin or {})
            resp.raise_for_status()
            out.append(resp.json()["budget"])
    return out
