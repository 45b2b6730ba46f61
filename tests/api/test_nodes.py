"""GET /api/v1/nodes: measured == attributed + unattributed per node and component."""

from __future__ import annotations

from collections import Counter


def test_nodes_conservation(client, make_batch):
    batches = [
        make_batch(node="n1", jobs={"1": 2, "2": 1}, unattributed_weight=1),
        make_batch(node="n1", seq=1, jobs={"2": 1}, unattributed_weight=3,
                   start=make_batch().intervals[-1].end),
        make_batch(node="n2", jobs={}, power_w=50.0),  # idle node: everything unattributed
        make_batch(cluster="other", node="n1", jobs={"1": 1}),
    ]
    for batch in batches:
        response = client.post("/api/v1/batches", content=batch.model_dump_json())
        assert response.status_code == 200, response.text
    measured, unattributed, attributed = Counter(), Counter(), Counter()
    for batch in batches:
        if batch.cluster != "c1":
            continue
        for interval in batch.intervals:
            for src in interval.sources:
                key = (batch.node, src.component)
                measured[key] += src.measured_uj
                unattributed[key] += src.unattributed_uj
                attributed[key] += sum(src.jobs_uj.values())
    rows = client.get("/api/v1/nodes", params={"cluster": "c1"}).json()["nodes"]
    assert {(r["node"], r["component"]) for r in rows} == set(measured)
    for row in rows:
        key = (row["node"], row["component"])
        assert row["cluster"] == "c1"
        assert row["measured_uj"] == measured[key]
        assert row["unattributed_uj"] == unattributed[key]
        assert row["attributed_uj"] == attributed[key]
        assert row["measured_uj"] == row["attributed_uj"] + row["unattributed_uj"]
    psys = next(r for r in rows if r["component"] == "psys" and r["node"] == "n1")
    assert psys["attributed_uj"] == 0 and psys["intervals"] == 6
    everything = client.get("/api/v1/nodes").json()
    assert {r["cluster"] for r in everything["nodes"]} == {"c1", "other"}
    assert everything["refusals"] == []  # every batch was stored
