"""The job dashboard's Infinity queries (deploy/grafana/jobenergy-job.json), run against the
API's real answer: each target's JSONata ``root_selector`` evaluated by jsonata-python (a
port of the reference implementation), its columns read as Infinity reads them.

A rename in ``GET /api/v1/jobs/{id}/series`` or a broken selector fails here, not on a
site's Grafana.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonata

from jobenergy.core.schema import Batch, Interval, JobSample, SourceEnergy

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "jobenergy-job.json"
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def _targets() -> dict[str, dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return {panel["title"]: target for panel in dashboard["panels"]
            for target in panel.get("targets", []) if "url" in target}


def _batch(node: str, sources: list[tuple[str, str, int]], starts_s: list[int]) -> Batch:
    """Job 7 on ``node``: each (component, source, W) source at that power, 10-s intervals."""
    intervals = []
    for start_s in starts_s:
        start = T0 + timedelta(seconds=start_s)
        intervals.append(Interval(
            start=start, end=start + timedelta(seconds=10),
            sources=[SourceEnergy(component=c, source=s, measured_uj=w * 10 * 10**6,
                                  jobs_uj={"7": w * 10 * 10**6}, unattributed_uj=0)
                     for c, s, w in sources],
            jobs=[JobSample(job_id="7", uid=1000)]))
    return Batch(schema_version=1, cluster="graf", node=node, boot_id="b", seq=0,
                 intervals=intervals)


def _column(row: dict[str, Any], column: dict[str, Any]) -> Any:
    value = row[column["selector"]]
    assert value is not None, column
    if column["type"] == "number" or column["type"].startswith("timestamp_epoch"):
        assert isinstance(value, int | float) and not isinstance(value, bool), (column, value)
    else:
        assert isinstance(value, str), (column, value)
    return value


def test_job_dashboard_queries_read_the_series_api(client):
    # Two nodes: n1 a CPU at 100 W and a GPU at 300 W for 30 s; n2 a GPU at 250 W, from 10 s.
    for batch in (_batch("n1", [("cpu", "package-0", 100), ("gpu", "gpu/a", 300)], [0, 10, 20]),
                  _batch("n2", [("gpu", "gpu/b", 250)], [10, 20])):
        assert client.post("/api/v1/batches", content=batch.model_dump_json(),
                           headers={"Content-Type": "application/json"}).status_code == 200
    targets = _targets()
    assert set(targets) == {"Job power", "Job energy per node and source"}
    for target in targets.values():
        assert target["url"] == "${jobenergy_url}/api/v1/jobs/${job_id}/series"
        assert [p["key"] for p in target["url_options"]["params"]] == ["cluster"]
    answer = client.get("/api/v1/jobs/7/series", params={"cluster": "graf", "step": "10s"})
    assert answer.status_code == 200, answer.text
    series = answer.json()

    power = targets["Job power"]
    rows = jsonata.Jsonata(power["root_selector"]).evaluate(series)
    points = {_column(r, power["columns"][0]): _column(r, power["columns"][1]) for r in rows}
    start_s = int(T0.timestamp())
    assert points == {start_s: 400, start_s + 10: 650, start_s + 20: 650}

    table = targets["Job energy per node and source"]
    rows = jsonata.Jsonata(table["root_selector"]).evaluate(series)
    got = sorted(tuple(_column(r, c) for c in table["columns"]) for r in rows)
    assert got == [("n1", "cpu", "package-0", 3_000_000_000),
                   ("n1", "gpu", "gpu/a", 9_000_000_000),
                   ("n2", "gpu", "gpu/b", 5_000_000_000)]
