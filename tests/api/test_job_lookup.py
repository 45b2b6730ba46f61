"""A job's JSON, lookup and list alike: exactly what the posted batches make it, the same from
the one-statement read (PostgreSQL) as from the query-per-table read, in a bounded number of
statements."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, text

from jobenergy.api import job_lookup
from jobenergy.collector import job_details
from jobenergy.collector.ingest import ingest_batch
from jobenergy.collector.steps import OUTSIDE_STEP, plan_steps, step_sort_key
from jobenergy.core.schema import Batch, Interval, JobSample, PhaseRecord
from jobenergy.core.units import UJ_PER_KWH

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
GPUS = (("cpu", "package-0"), ("dram", "package-0/dram"), ("gpu", "gpu/GPU-aaaa"),
        ("gpu", "gpu/GPU-bbbb"), ("psys", "psys"))
ATTRIBUTED = ("cpu", "dram", "gpu")


def post(client: Any, path: str, **kwargs: Any) -> None:
    response = client.post(path, **kwargs)
    assert response.status_code == 200, response.text


def event_(client: Any, **body: Any) -> None:
    body.setdefault("cluster", "c1")
    body["time"] = body["time"].isoformat()
    post(client, "/api/v1/jobs/events", json=body)


def annotate(batch: Batch, job_id: str, steps: list[dict[str, int]],
             phases: list[tuple[str | None, str | None]],
             records: list[tuple[int, dict[str, Any]]] = ()) -> Batch:
    """Give ``job_id``'s samples in interval i the step CPU times ``steps[i]`` and the phase
    ``phases[i]``, and add phase records."""
    intervals = []
    for i, interval in enumerate(batch.intervals):
        jobs = [
            JobSample(job_id=s.job_id, uid=s.uid, step_cpu_us=steps[i], phase=phases[i][0],
                      model=phases[i][1]) if s.job_id == job_id else s
            for s in interval.jobs
        ]
        extra = [PhaseRecord(job_id=job_id, **r) for index, r in records if index == i]
        intervals.append(Interval(start=interval.start, end=interval.end,
                                  sources=interval.sources, jobs=jobs, phases=extra))
    return batch.model_copy(update={"intervals": intervals})


@pytest.fixture
def server_settings(server_settings: Any) -> Any:
    """No background refresh: these tests materialise job details when they choose."""
    return server_settings.model_copy(update={"rollup_interval_s": 0})


@pytest.fixture
def scenario(client: Any, make_batch: Any) -> list[Batch]:
    """Jobs of every shape; return the batches posted.

    - c1/500: Slurm nodes n1, n2 and n3 (never heard from), two GPUs a node, steps, phases
      with records, an estimated source and counter wraps on n2; ended.
    - c1/501: energy only (no Slurm event), shares n1 with 500.
    - c1/600: n9 has no counters, n4 has; ended; c1/601: only n9, unmeasured.
    - c2/700: three hours on c2 under an hourly carbon series and a constant PUE: several
      factor groups; ended, final.
    - c1/800 and c2/800: one id on two clusters.
    - c1/900: Slurm events only (no agent sent anything of it); ended.
    """
    batches = [
        annotate(
            make_batch(node="n1", jobs={"500": 3, "501": 1}, sources=GPUS, n_intervals=4,
                       power_w=250.0),
            "500",
            steps=[{"batch": 3, "0": 1}, {}, {"batch": 1, "0": 2, "extern": 1}, {"0": 5}],
            phases=[("training", "llama"), ("training", "llama"), ("inference", "llama"),
                    (None, None)],
            records=[(1, {"phase": "training", "model": "llama", "start": T0,
                          "end": T0 + timedelta(seconds=20), "samples": 640,
                          "metrics": {"loss": 0.25, "tokens": 3}})],
        ),
        make_batch(node="n2", jobs={"500": 1}, unattributed_weight=0, sources=GPUS,
                   n_intervals=4, power_w=300.0, estimated=True, wraps=1, resets=2),
        make_batch(node="n9", jobs={"600": 1, "601": 1}, sources=(), n_intervals=3),
        make_batch(node="n4", jobs={"600": 1}, n_intervals=5, power_w=80.0),
        make_batch(cluster="c2", node="m1", jobs={"700": 2}, n_intervals=3, interval_s=3600.0,
                   power_w=500.0),
        make_batch(node="n5", jobs={"800": 1}, n_intervals=2),
        make_batch(cluster="c2", node="m2", jobs={"800": 1}, n_intervals=2, power_w=20.0),
    ]
    event_(client, job_id="500", event="start", time=T0, user="alice", uid=1001,
           account="phys", partition="gpu", name="train", nodes=["n1", "n2", "n3"],
           gpus=["0", "1"], tags={"team": "ml"})
    event_(client, job_id="600", event="start", time=T0, user="bob", nodes=["n9", "n4"])
    event_(client, cluster="c2", job_id="700", event="start", time=T0, user="carol")
    event_(client, job_id="900", event="start", time=T0, user="dave", nodes=["n7"])
    for batch in batches:
        post(client, "/api/v1/batches", content=batch.model_dump_json())
    csv = "time,value\n2026-11-23T10:00:00Z,100\n2026-11-23T11:00:00Z,250\n"
    post(client, "/api/v1/clusters/c2/carbon/series", content=csv.encode(),
         headers={"Content-Type": "text/csv"})
    assert client.put("/api/v1/clusters/c2/pue", json={"pue": 1.25}).status_code == 200
    event_(client, job_id="500", event="end", time=T0 + timedelta(seconds=40),
           state="COMPLETED", exit_code=0)
    event_(client, job_id="600", event="end", time=T0 + timedelta(seconds=25), state="FAILED")
    event_(client, cluster="c2", job_id="700", event="end", time=T0 + timedelta(hours=3),
           state="COMPLETED")
    event_(client, job_id="900", event="end", time=T0 + timedelta(seconds=60), state="FAILED")
    return batches


def reference(batches: list[Batch], cluster: str, job_id: str) -> dict[str, Any]:
    """What the job's JSON says of its energy, from the batches alone."""
    totals: dict[tuple[str, str, str], dict[str, Any]] = {}
    steps: dict[str, dict[str, int]] = {}
    for batch in batches:
        if batch.cluster != cluster:
            continue
        for interval in batch.intervals:
            seconds = (interval.end - interval.start).total_seconds()
            for src in interval.sources:
                if job_id not in src.jobs_uj or src.component not in ATTRIBUTED:
                    continue
                t = totals.setdefault((batch.node, src.component, src.source), {
                    "energy": 0, "estimated": 0, "intervals": 0, "covered": 0.0, "wraps": 0,
                    "resets": 0, "device": src.device_name})
                share = src.jobs_uj[job_id]
                t["energy"] += share
                t["estimated"] += share if src.estimated else 0
                t["intervals"] += 1
                t["covered"] += seconds
                t["wraps"] += src.wraps
                t["resets"] += src.resets
        for (job, step, component), energy in plan_steps(batch).items():
            if job == job_id:
                steps.setdefault(step, {})
                steps[step][component] = steps[step].get(component, 0) + energy
    by_component = {"cpu": 0, "dram": 0}
    by_node: dict[str, dict[str, int]] = {}
    best: dict[str, float] = {}
    for (node, component, _), t in sorted(totals.items()):
        by_component[component] = by_component.get(component, 0) + t["energy"]
        by_node.setdefault(node, {})
        by_node[node][component] = by_node[node].get(component, 0) + t["energy"]
        best[node] = max(best.get(node, 0.0), t["covered"])
    energy = sum(by_component.values())
    if steps:
        rest = {c: by_component.get(c, 0) - sum(s.get(c, 0) for s in steps.values())
                for c in sorted({*by_component, *(c for s in steps.values() for c in s)})}
    else:
        rest = dict(by_component)
    if any(rest.values()):
        steps[OUTSIDE_STEP] = {c: e for c, e in rest.items() if e}
    return {
        "energy_uj": energy,
        "energy_kwh": energy / UJ_PER_KWH,
        "by_component": by_component,
        "by_node": by_node,
        "devices": [
            {"node": node, "source": source, "device_name": t["device"], "component": "gpu",
             "energy_uj": t["energy"]}
            for (node, component, source), t in sorted(totals.items()) if component == "gpu"
        ],
        "steps": [
            {"step": step, "energy_uj": sum(steps[step].values()),
             "energy_kwh": sum(steps[step].values()) / UJ_PER_KWH,
             "by_component": dict(sorted(steps[step].items()))}
            for step in sorted(steps, key=step_sort_key)
        ],
        "sources": sorted({source for _, _, source in totals}),
        "samples": max((t["intervals"] for t in totals.values()), default=0),
        "covered_s": min(best.values(), default=0.0),
        "wraps": sum(t["wraps"] for t in totals.values()),
        "resets": sum(t["resets"] for t in totals.values()),
        "estimated_uj": sum(t["estimated"] for t in totals.values()),
        "estimated_components": sorted({c for (_, c, _), t in totals.items() if t["estimated"]}),
    }


JOBS = [("c1", "500"), ("c1", "501"), ("c1", "600"), ("c1", "601"), ("c2", "700"),
        ("c1", "800"), ("c2", "800"), ("c1", "900")]


def lookup(client: Any, cluster: str, job_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/jobs/{job_id}", params={"cluster": cluster})
    assert response.status_code == 200, response.text
    return response.json()


def test_lookups_are_what_the_batches_make(client, scenario):
    for cluster, job_id in JOBS:
        out = lookup(client, cluster, job_id)
        ref = reference(scenario, cluster, job_id)
        quality = out["quality"]
        for key in ("energy_uj", "energy_kwh", "by_component", "by_node", "devices", "steps"):
            assert out[key] == ref[key], (cluster, job_id, key)
        for key in ("sources", "samples", "covered_s", "wraps", "resets", "estimated_uj",
                    "estimated_components"):
            assert quality[key] == ref[key], (cluster, job_id, key)

    job = lookup(client, "c1", "500")
    assert (job["user"], job["uid"], job["account"], job["name"]) == ("alice", 1001, "phys",
                                                                     "train")
    assert job["nodes"] == ["n1", "n2", "n3"] and job["gpus"] == ["0", "1"]
    assert job["tags"] == {"team": "ml"} and job["elapsed_s"] == 40.0
    assert job["final"] is False  # n3 never reported
    assert job["quality"]["unmeasured"] is False and job["quality"]["unmeasured_nodes"] == []
    phases = {p["phase"]: p for p in job["phases"]}
    assert [p["phase"] for p in job["phases"]] == ["training", "inference"]
    assert phases["training"]["samples"] == 640
    assert phases["training"]["metrics"] == {"loss": 0.25, "tokens": 3.0}
    assert phases["training"]["j_per_sample"] == pytest.approx(
        phases["training"]["energy_uj"] / 1e6 / 640)
    assert datetime.fromisoformat(phases["training"]["start"]) == T0
    assert phases["inference"]["samples"] is None

    only_energy = lookup(client, "c1", "501")
    assert only_energy["start"] is None and only_energy["nodes"] == ["n1"]
    assert only_energy["uid"] == 1000 and only_energy["user"] is None

    mixed = lookup(client, "c1", "600")
    assert mixed["quality"]["unmeasured_nodes"] == ["n9"]
    assert mixed["quality"]["unmeasured"] is False and mixed["final"] is True
    bare = lookup(client, "c1", "601")
    assert bare["quality"]["unmeasured"] is True and bare["energy_uj"] == 0

    hours = lookup(client, "c2", "700")
    assert hours["final"] is True and hours["pue"] == 1.25
    # Hours 10 and 11 from the series, hour 12 (after it) the world-average fallback.
    assert hours["carbon_intensity_source"] == "world-average fallback, series"
    assert hours["carbon_intensity_fallback"] is True
    kwh = hours["energy_kwh"]
    assert hours["facility_energy_kwh"] == pytest.approx(kwh * 1.25, rel=1e-9)
    # Three hours of equal energy at 100, 250 and (after the series) the fallback 475 g/kWh.
    assert hours["co2e_kg"] == pytest.approx(kwh * 1.25 * (100 + 250 + 475) / 3 / 1000,
                                             rel=1e-6)
    assert client.get("/api/v1/jobs/800").status_code == 409


def test_lists_say_the_same_as_lookups(client, scenario):
    listed = client.get("/api/v1/jobs", params={"limit": 100}).json()
    assert sorted((j["cluster"], j["job_id"]) for j in listed["jobs"]) == sorted(JOBS)
    for job in listed["jobs"]:
        assert job == lookup(client, job["cluster"], job["job_id"])


@pytest.mark.parametrize("db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)],
                         indirect=True)  # the one-statement read is PostgreSQL's
def test_one_statement_reads_what_the_query_per_table_reads(client, scenario, db_url,
                                                           monkeypatch):
    assert db_url.startswith("postgresql")
    combined = {key: lookup(client, *key) for key in JOBS}
    pages = [client.get("/api/v1/jobs", params={"limit": n, "offset": o}).json()
             for n, o in ((100, 0), (2, 0), (2, 3))]
    monkeypatch.setattr(job_lookup, "COMBINED", False)
    assert {key: lookup(client, *key) for key in JOBS} == combined
    assert [client.get("/api/v1/jobs", params={"limit": n, "offset": o}).json()
            for n, o in ((100, 0), (2, 0), (2, 3))] == pages


@contextmanager
def statements(client: Any) -> Iterator[list[str]]:
    """Record the SQL statements the server runs."""
    engine = client.app.state.engine
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_statements_per_request(client, scenario, db_url):
    """PostgreSQL: a lookup is one statement; a page one (after ``SET LOCAL jit = off``), and
    one more for its count unless the page tells the total. Elsewhere a statement per table,
    however many jobs (no N+1)."""
    postgres = db_url.startswith("postgresql")
    requests = [
        ("/api/v1/jobs/500", {"cluster": "c1"}, 1),
        ("/api/v1/jobs/601", {"cluster": "c1"}, 1),
        ("/api/v1/jobs", {}, 2),  # the whole result on the page: nothing to count
        ("/api/v1/jobs", {"limit": 2}, 3),  # and the count
        ("/api/v1/jobs", {"limit": 1, "offset": 3}, 3),
        ("/api/v1/jobs", {"limit": 2, "offset": 6}, 2),  # the last page: offset + its jobs
        ("/api/v1/jobs", {"limit": 2, "count": "false"}, 2),
    ]
    for path, params, expected in requests:
        with statements(client) as seen:
            assert client.get(path, params=params).status_code == 200
        if postgres:
            assert len(seen) == expected, (path, params, seen)
        else:
            assert len(seen) <= expected + 8, (path, params, seen)
    with statements(client) as seen:
        page = client.get("/api/v1/jobs", params={"limit": 2}).json()
        client.get("/api/v1/jobs", params={"limit": 2, "after": page["next"]}).json()
    if postgres:
        assert len(seen) == 6


# --- Settled jobs read from their own row (collector/job_details.py) ----------------------

PG_ONLY = pytest.mark.parametrize(
    "db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
PART_TABLES = {"job_energy", "job_node", "job_energy_hour", "job_phase", "job_step_energy"}
PAGES = ((100, 0), (2, 0), (2, 3))


def materialise_settled(client: Any, chunk: int = job_details.CHUNK) -> int:
    """Materialise every job unchanged until now (the server waits job_details.SETTLE)."""
    return job_details.materialise(client.app.state.engine, settle=timedelta(0), chunk=chunk)


def read_all(client: Any) -> tuple[dict[tuple[str, str], Any], list[Any]]:
    """Every job's lookup, and a few pages of the list."""
    return ({key: lookup(client, *key) for key in JOBS},
            [client.get("/api/v1/jobs", params={"limit": n, "offset": o}).json()
             for n, o in PAGES])


def part_scans(client: Any, cluster: str, job_id: str) -> dict[str, int]:
    """How many times the lookup statement of a job scanned each part table (EXPLAIN
    ANALYZE: a scan never executed has 0 loops)."""
    stmt = job_lookup._lookup_stmt(True)
    sql = str(stmt.compile(dialect=client.app.state.engine.dialect))
    with client.app.state.engine.connect() as conn:
        plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}",
                                    {"job_id": job_id, "cluster": cluster}).scalar_one()
    loops: dict[str, int] = {}

    def walk(node: dict[str, Any]) -> None:
        if node.get("Relation Name") in PART_TABLES:
            loops[node["Relation Name"]] = loops.get(node["Relation Name"], 0) + node[
                "Actual Loops"]
        for child in node.get("Plans", ()):
            walk(child)

    walk(plan[0]["Plan"])
    return loops


def details_of(client: Any) -> dict[tuple[str, str], bool]:
    """Whether each job has a materialised detail of its parts' version."""
    with client.app.state.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT j.cluster, j.job_id, d.parts_version IS NOT DISTINCT FROM j.parts_version"
            " FROM job j LEFT JOIN job_detail d USING (cluster, job_id)")  # one shape here
        return {(cluster, job_id): current for cluster, job_id, current in rows}


@pytest.mark.parametrize("first_run", [True, False], ids=["first-run", "rounds"])
@PG_ONLY
def test_settled_jobs_are_read_from_their_row_as_they_are_read_live(client, scenario, db_url,
                                                                   first_run):
    """In chunks of 2 jobs: the first run goes by key, rounds by time of change."""
    live = read_all(client)
    assert part_scans(client, "c1", "500")["job_energy"] >= 1  # read live, so far
    if not first_run:
        with client.app.state.engine.begin() as conn:
            conn.execute(text("INSERT INTO rollup_state (name, through, refreshed_at) "
                              "VALUES (:name, now() - interval '1 hour', now())"),
                         {"name": job_details.STATE})
    assert materialise_settled(client, chunk=2) == len(JOBS)
    assert details_of(client) == {key: True for key in JOBS}
    assert read_all(client) == live
    for key in JOBS:
        assert set(part_scans(client, *key).values()) == {0}, key  # none of the part tables
    assert materialise_settled(client) == 0  # nothing changed since


@PG_ONLY
def test_a_change_after_materialising_is_read_live_then_materialised_again(
        client, scenario, db_url, make_batch, monkeypatch):
    materialise_settled(client)
    late = make_batch(node="n1", jobs={"500": 2, "501": 1}, sources=GPUS, seq=1,
                      start=T0 + timedelta(minutes=5), n_intervals=2, power_w=90.0)
    post(client, "/api/v1/batches", content=late.model_dump_json())
    # A retroactive PUE on c2: the factor recompute changes its jobs' groups.
    assert client.put("/api/v1/clusters/c2/pue", json={"pue": 1.5}).status_code == 200
    changed_jobs = {("c1", "500"), ("c1", "501"), ("c2", "700"), ("c2", "800")}
    assert details_of(client) == {key: key not in changed_jobs for key in JOBS}
    batches = [*scenario, late]
    for cluster, job_id in JOBS:
        out, ref = lookup(client, cluster, job_id), reference(batches, cluster, job_id)
        assert (out["energy_uj"], out["by_node"], out["steps"]) == (
            ref["energy_uj"], ref["by_node"], ref["steps"]), (cluster, job_id)
    hours = lookup(client, "c2", "700")
    assert hours["pue"] == 1.5
    assert hours["facility_energy_kwh"] == pytest.approx(hours["energy_kwh"] * 1.5, rel=1e-9)
    changed = read_all(client)
    assert materialise_settled(client) == len(changed_jobs)
    assert read_all(client) == changed
    monkeypatch.setattr(job_lookup, "COMBINED", False)  # the query-per-table read agrees
    assert read_all(client) == changed


@PG_ONLY
def test_details_built_by_other_code_are_never_read_and_are_replaced(client, scenario, db_url):
    """Rows as another version of the parts' SQL left them: another shape, other content."""
    live = read_all(client)
    materialise_settled(client)
    with client.app.state.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE job_detail SET shape = 'another', detail = json_build_object("
            "'totals', '[]'::json, 'seen', '[]'::json, 'nodes', '[]'::json)")
    assert read_all(client) == live
    assert materialise_settled(client) == len(JOBS)
    assert read_all(client) == live
    assert set(details_of(client).values()) == {True}


@PG_ONLY
def test_parts_changed_by_code_that_does_not_count_them_are_still_read_live(
        client, scenario, db_url, monkeypatch):
    """A collector of the release before job_detail, still running during a rolling upgrade:
    its batches stamp the job's updated_at and change its parts, but not parts_version."""
    materialise_settled(client)
    with client.app.state.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE job_energy SET energy_uj = energy_uj + 1000000 "
            "WHERE cluster = 'c1' AND job_id = '600' AND node = 'n4' AND component = 'cpu'")
        conn.exec_driver_sql("UPDATE job SET energy_uj = energy_uj + 1000000, "
                             "updated_at = now() WHERE cluster = 'c1' AND job_id = '600'")
    assert details_of(client)[("c1", "600")] is False
    changed = lookup(client, "c1", "600")
    monkeypatch.setattr(job_lookup, "COMBINED", False)  # the query-per-table read
    assert changed == lookup(client, "c1", "600")
    assert changed["by_node"]["n4"]["cpu"] == reference(scenario, "c1", "600")["by_node"][
        "n4"]["cpu"] + 1000000


@PG_ONLY
def test_a_batch_that_commits_after_its_job_was_materialised_is_never_hidden(
        client, scenario, db_url, make_batch):
    """The detail is computed while the batch is not committed yet: it is of the job's parts
    before the batch, and the batch's commit makes it out of date. Reading it would hide the
    batch's energy."""
    engine = client.app.state.engine
    late = make_batch(node="n4", jobs={"600": 1}, seq=1, start=T0 + timedelta(minutes=5),
                      n_intervals=2, power_w=70.0)
    with engine.connect() as conn, conn.begin():
        ingest_batch(conn, late)
        assert materialise_settled(client) == len(JOBS)  # takes no lock: nothing waits
    assert details_of(client) == {key: key != ("c1", "600") for key in JOBS}
    out, ref = lookup(client, "c1", "600"), reference([*scenario, late], "c1", "600")
    assert (out["energy_uj"], out["by_node"]) == (ref["energy_uj"], ref["by_node"])
    assert materialise_settled(client) == 1
    assert lookup(client, "c1", "600") == out


@PG_ONLY
def test_a_round_that_cannot_write_leaves_its_jobs_to_the_next(client, scenario, db_url,
                                                              caplog):
    """Fault injection in the database: every detail refused for a while (a full disk, say).
    The jobs are not passed over: the next round writes them."""
    engine = client.app.state.engine
    with engine.begin() as conn:
        # Jobs that ended a while ago (a round rescans only the last RESCAN).
        conn.exec_driver_sql("UPDATE job SET updated_at = updated_at - interval '2 hours'")
        conn.exec_driver_sql("""
            CREATE FUNCTION refuse_all() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'injected fault'; END $$""")
        conn.exec_driver_sql("CREATE TRIGGER refuse_all BEFORE INSERT ON job_detail "
                             "FOR EACH ROW EXECUTE FUNCTION refuse_all()")
    try:
        assert materialise_settled(client, chunk=3) == 0
        assert "job details not materialised, 0 written this round: injected fault" in (
            caplog.text)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER refuse_all ON job_detail")
            conn.exec_driver_sql("DROP FUNCTION refuse_all()")
    assert materialise_settled(client, chunk=3) == len(JOBS)


@PG_ONLY
def test_a_job_whose_detail_fails_costs_the_others_nothing(client, scenario, db_url, caplog):
    """Fault injection in the database: writing 600's detail raises."""
    engine = client.app.state.engine
    with engine.begin() as conn:
        conn.exec_driver_sql("""
            CREATE FUNCTION refuse_600() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.job_id = '600' THEN RAISE EXCEPTION 'injected fault for job 600'; END IF;
              RETURN NEW;
            END $$""")
        conn.exec_driver_sql("CREATE TRIGGER refuse_600 BEFORE INSERT ON job_detail "
                             "FOR EACH ROW EXECUTE FUNCTION refuse_600()")
    try:
        live = read_all(client)
        assert materialise_settled(client, chunk=3) == len(JOBS) - 1
        assert details_of(client) == {key: key != ("c1", "600") for key in JOBS}
        assert "job 600 on c1 not materialised (read live): injected fault" in caplog.text
        assert read_all(client) == live
    finally:  # the database is shared by the tests that follow
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER refuse_600 ON job_detail")
            conn.exec_driver_sql("DROP FUNCTION refuse_600()")
