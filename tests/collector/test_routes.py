"""POST /api/v1/batches over HTTP: success, duplicates, and every kind of bad input."""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timedelta, timezone

import pytest


def post(client, body: bytes, **headers):
    return client.post("/api/v1/batches", content=body,
                       headers={"Content-Type": "application/json", **headers})


def as_dict(batch) -> dict:
    return json.loads(batch.model_dump_json())


def split_refusals(snapshot: dict) -> tuple[dict, list]:
    """Return (every other table, node_refusal rows): a refusal is recorded, nothing else."""
    rest = dict(snapshot)
    return rest, rest.pop("node_refusal")


def test_post_batch_then_duplicate(client, make_batch, db_url, db_snapshot):
    batch = make_batch(jobs={"7": 1, "8": 2})
    expected_rows = sum(
        len(s.jobs_uj) + (1 if s.unattributed_uj or not s.jobs_uj else 0)
        for iv in batch.intervals for s in iv.sources
    )
    response = post(client, batch.model_dump_json().encode())
    assert response.status_code == 200, response.text
    # The optional wire fields this collector stores: what its agents may send it.
    assert response.json() == {"duplicate": False, "records": expected_rows, "budget_actions": [],
                               "accepts": ["step_uj"]}
    before = db_snapshot(db_url)
    again = post(client, batch.model_dump_json().encode())
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert db_snapshot(db_url) == before


def test_gzip_body_is_accepted(client, make_batch, db_url, db_snapshot):
    batch = make_batch()
    response = post(client, gzip.compress(batch.model_dump_json().encode()),
                    **{"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert response.json()["duplicate"] is False
    job_rows = db_snapshot(db_url)["job_energy"]
    assert sum(row[5] for row in job_rows) == sum(
        sum(s.jobs_uj.values()) for iv in batch.intervals for s in iv.sources
    )


def _mutate(batch_dict: dict, path: str, value) -> dict:
    target = batch_dict
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if key.isdigit() else target[key]
    target[keys[-1]] = value
    return batch_dict


# (id, how to break a valid batch dict, status, words the message must contain)
BAD_INPUTS = [
    ("unknown-schema-version", lambda d: _mutate(d, "schema_version", 2), 422,
     ["schema_version", "2"]),
    ("negative-energy", lambda d: _mutate(d, "intervals.0.sources.0.unattributed_uj", -5), 422,
     ["intervals.0.sources.0.unattributed_uj", "greater than or equal to 0"]),
    ("not-conserved", lambda d: _mutate(d, "intervals.1.sources.0.measured_uj", 1), 422,
     ["intervals.1.sources.0", "energy not conserved"]),
    ("end-before-start", lambda d: _mutate(d, "intervals.0.end", d["intervals"][0]["start"]),
     422, ["intervals.0", "not after start"]),
    ("absurd-energy", lambda d: _scale(d, 1_000), 422, ["absurd energy"]),
    ("unknown-field", lambda d: _mutate(d, "intervals.0.sources.0.energy_j", 1.5), 422,
     ["energy_j", "not permitted"]),
    ("missing-field", lambda d: {k: v for k, v in d.items() if k != "node"}, 422, ["node"]),
    ("psys-attributed", lambda d: _attribute_psys(d), 422, ["psys"]),
    ("string-energy", lambda d: _mutate(d, "intervals.0.sources.0.measured_uj", "5"), 422,
     ["measured_uj"]),
    ("not-an-object", lambda d: [d], 422, ["object"]),
    # Times outside 1970..2100 (these gave 500: an overflowing date on the way to UTC or SQL).
    ("time-before-1970", lambda d: _mutate(d, "intervals.0.start", "1900-01-01T00:00:00Z"), 422,
     ["intervals.0.start", "1970"]),
    ("time-after-2100", lambda d: _mutate(d, "intervals.2.end", "9999-12-31T23:59:59Z"), 422,
     ["intervals.2.end", "2100"]),
    ("time-past-utc", lambda d: _mutate(d, "intervals.0.start", "9999-12-31T23:59:59-14:00"),
     422, ["intervals.0.start", "2100"]),
    ("phase-time-before-1970", lambda d: _phase(d, start="1900-01-01T00:00:00Z"), 422,
     ["intervals.0.phases.0.start", "1970"]),
    # Values that do not fit the database (BIGINT, text, JSON).
    ("uid-2^63", lambda d: _mutate(d, "intervals.0.jobs.0.uid", 2**63), 422,
     ["intervals.0.jobs.0.uid"]),
    ("samples-2^63", lambda d: _phase(d, samples=2**63), 422, ["intervals.0.phases.0.samples"]),
    ("nul-in-phase-tag", lambda d: _phase(d, tags={"k": "v\x00"}), 422,
     ["intervals.0.phases.0.tags.k", "NUL"]),
    ("nul-in-model", lambda d: _mutate(d, "intervals.0.jobs.0.model", "m\x00"), 422,
     ["intervals.0.jobs.0.model", "NUL"]),
    ("nan-metric", lambda d: _phase(d, metrics={"loss": float("nan")}), 422,
     ["intervals.0.phases.0.metrics.loss", "finite"]),
]


def _phase(d: dict, **fields) -> dict:
    interval = d["intervals"][0]
    record = {"job_id": "101", "phase": "training", "start": interval["start"],
              "end": interval["end"], **fields}
    interval["phases"] = [record]
    return d


def _scale(d: dict, factor: int) -> dict:
    src = d["intervals"][0]["sources"][0]
    src["measured_uj"] *= factor
    src["unattributed_uj"] *= factor
    src["jobs_uj"] = {k: v * factor for k, v in src["jobs_uj"].items()}
    return d


def _attribute_psys(d: dict) -> dict:
    psys = d["intervals"][0]["sources"][3]
    assert psys["component"] == "psys"
    psys["jobs_uj"] = {"101": psys["unattributed_uj"]}
    psys["unattributed_uj"] = 0
    return d


@pytest.mark.parametrize(("name", "mutate", "status", "words"), BAD_INPUTS,
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_batch_is_rejected_and_nothing_stored(client, make_batch, db_url, db_snapshot,
                                                  name, mutate, status, words):
    post(client, make_batch(seq=0).model_dump_json().encode())  # something already stored
    before = db_snapshot(db_url)
    body = json.dumps(mutate(as_dict(make_batch(seq=1, start=make_batch().intervals[-1].end))))
    response = post(client, body.encode())
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    for word in words:
        assert word in detail, detail
    after, refusals = split_refusals(db_snapshot(db_url))
    assert after == split_refusals(before)[0]
    # cluster, node, refused, conflicts, first_at, last_at, last_status, last_reason
    assert [(r[2], r[3], r[6], r[7]) for r in refusals] == [(1, 0, status, detail)]


@pytest.mark.parametrize(
    ("body", "headers", "status", "word"),
    [
        (b'{"schema_version": 1, "cluster": ', {}, 400, "malformed JSON"),
        (b"", {}, 400, "malformed JSON"),
        (b"not gzip at all", {"Content-Encoding": "gzip"}, 400, "gzip"),
        (gzip.compress(b'{"a": 1}')[:-6], {"Content-Encoding": "gzip"}, 400, "gzip"),
        (b"{}", {"Content-Encoding": "br"}, 415, "br"),
    ],
    ids=["truncated-json", "empty", "bad-gzip", "truncated-gzip", "brotli"],
)
def test_undecodable_body(client, db_url, db_snapshot, body, headers, status, word):
    before = db_snapshot(db_url)
    response = post(client, body, **headers)
    assert response.status_code == status, response.text
    assert word in response.json()["detail"]
    after, refusals = split_refusals(db_snapshot(db_url))
    assert after == split_refusals(before)[0]
    # Nothing says which node sent it: counted under ("", "").
    assert [(r[0], r[1], r[2], r[6]) for r in refusals] == [("", "", 1, status)]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_body_is_413(make_client, server_settings, make_batch, db_url, db_snapshot,
                               chunked):
    limit = 64 * 1024
    client = make_client(server_settings.model_copy(update={"max_body_bytes": limit}))
    body = make_batch(n_intervals=60, jobs={str(j): 1 for j in range(1, 9)}).model_dump_json()
    body = body.encode()
    assert len(body) > limit  # the scenario must actually be too big
    # Without Content-Length (chunked upload) the limit is enforced while streaming.
    content = iter([body[i:i + 8192] for i in range(0, len(body), 8192)]) if chunked else body
    response = client.post("/api/v1/batches", content=content,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert str(limit) in response.json()["detail"]
    assert db_snapshot(db_url)["ingested_batch"] == []


def test_gzip_bomb_is_413(client, server_settings, db_url, db_snapshot):
    limit = server_settings.max_body_bytes
    inflated = b'{"schema_version": 1, "pad": "' + b" " * (limit * 4) + b'"}'
    body = gzip.compress(inflated)
    assert len(body) < limit  # small on the wire, too big once inflated
    response = post(client, body, **{"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert db_snapshot(db_url)["ingested_batch"] == []


def test_gzip_at_the_limit_is_accepted(make_client, server_settings, make_batch):
    batch = make_batch(n_intervals=30)
    raw = batch.model_dump_json().encode()
    settings = server_settings.model_copy(update={"max_body_bytes": len(raw)})
    response = post(make_client(settings), gzip.compress(raw), **{"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text


def test_database_down_is_503(make_client, make_batch):
    from jobenergy.collector.settings import ServerSettings

    settings = ServerSettings(auth="none", db_url="postgresql+psycopg://postgres@127.0.0.1:1/none",
                              migrate=False)
    client = make_client(settings)
    response = post(client, make_batch().model_dump_json().encode())
    assert response.status_code == 503
    assert "retry" in response.json()["detail"]
    assert int(response.headers["Retry-After"]) > 0
    # A refusal that cannot be recorded while the database is down still answers its 4xx.
    assert post(client, b"{").status_code == 400


def test_same_key_with_other_content_is_a_conflict(client, make_batch, db_url, db_snapshot):
    """A batch key claimed with other content is refused (409), counted, never a duplicate."""
    real = make_batch(seq=5, jobs={"7": 1})
    forged = make_batch(seq=5, jobs={"7": 1}, power_w=1.0)  # same key, other energy
    assert post(client, forged.model_dump_json().encode()).json()["duplicate"] is False
    before = db_snapshot(db_url)
    response = post(client, real.model_dump_json().encode())
    assert response.status_code == 409, response.text
    detail = response.json()["detail"]
    assert "conflict" in detail and "seq=5" in detail
    after, refusals = split_refusals(db_snapshot(db_url))
    assert after == split_refusals(before)[0]
    # cluster, node, refused, conflicts, first_at, last_at, last_status, last_reason
    assert [(r[0], r[1], r[2], r[3], r[6], r[7]) for r in refusals] == [
        ("c1", "n1", 1, 1, 409, detail)]
    # Retrying it stays a conflict; the stored batch itself stays a duplicate.
    assert post(client, real.model_dump_json().encode()).status_code == 409
    again = post(client, forged.model_dump_json().encode())
    assert again.status_code == 200 and again.json()["duplicate"] is True
    nodes = client.get("/api/v1/nodes", params={"cluster": "c1"}).json()
    assert [(r["node"], r["refused"], r["conflicts"], r["last_status"])
            for r in nodes["refusals"]] == [("n1", 2, 2, 409)]


def test_same_content_in_another_encoding_is_a_duplicate(client, make_batch):
    """The hash is of the decoded content: gzip, spacing, field order, time zones do not count."""
    batch = make_batch(jobs={"7": 1, "8": 2})
    assert post(client, batch.model_dump_json().encode()).json()["duplicate"] is False
    body = as_dict(batch)
    plus_two = timezone(timedelta(hours=2))
    for interval in body["intervals"]:  # the same instants, written in another zone
        for key in ("start", "end"):
            when = datetime.fromisoformat(interval[key].replace("Z", "+00:00"))
            interval[key] = when.astimezone(plus_two).isoformat()
    text = json.dumps(dict(reversed(list(body.items()))), indent=2).encode()
    response = post(client, gzip.compress(text), **{"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert response.json()["duplicate"] is True


def test_key_stored_without_hash_repeats_as_duplicate(client, make_batch, db_url):
    """Keys stored before content hashes (NULL) keep answering duplicate, whatever comes."""
    from sqlalchemy import update

    from jobenergy.collector.db import make_engine
    from jobenergy.collector.models import IngestedBatch

    assert post(client, make_batch(seq=3).model_dump_json().encode()).status_code == 200
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(update(IngestedBatch).values(content_sha256=None))
    finally:
        engine.dispose()
    other = make_batch(seq=3, power_w=7.0)
    response = post(client, other.model_dump_json().encode())
    assert response.status_code == 200 and response.json()["duplicate"] is True


def test_refusals_are_recorded_per_node(make_client, server_settings, make_batch):
    """Every 4xx of POST /api/v1/batches is counted per node with the latest reason and time."""
    client = make_client(server_settings.model_copy(update={"max_body_bytes": 4096}))
    first = as_dict(make_batch(node="n1", seq=1))
    first["schema_version"] = 2
    assert post(client, json.dumps(first).encode()).status_code == 422
    second = as_dict(make_batch(node="n1", seq=2))
    second["intervals"][0]["sources"][0]["measured_uj"] += 1
    late = post(client, json.dumps(second).encode())
    assert late.status_code == 422
    other = as_dict(make_batch(cluster="c2", node="n9"))
    other["agent_version"] = "x\x00"
    assert post(client, json.dumps(other).encode()).status_code == 422
    too_big = make_batch(n_intervals=50).model_dump_json().encode()
    assert len(too_big) > 4096
    assert post(client, too_big).status_code == 413  # unread: the sender is unknown

    rows = {(r["cluster"], r["node"]): r for r in client.get("/api/v1/nodes").json()["refusals"]}
    assert set(rows) == {("", ""), ("c1", "n1"), ("c2", "n9")}
    n1 = rows[("c1", "n1")]
    assert (n1["refused"], n1["conflicts"], n1["last_status"]) == (2, 0, 422)
    assert n1["last_reason"] == late.json()["detail"]
    assert n1["first_at"] <= n1["last_at"]
    assert "NUL" in rows[("c2", "n9")]["last_reason"]
    assert rows[("", "")]["last_status"] == 413
    only_c2 = client.get("/api/v1/nodes", params={"cluster": "c2"}).json()["refusals"]
    assert [(r["cluster"], r["node"], r["refused"]) for r in only_c2] == [("c2", "n9", 1)]


def test_a_form_post_is_refused_with_415(client, make_batch):
    response = client.post("/api/v1/batches", content=make_batch().model_dump_json(),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
    assert "application/json" in response.json()["detail"]


def test_no_migrate_on_an_empty_database_refuses_to_start(tmp_path):
    from jobenergy.api.app import create_app
    from jobenergy.collector.settings import ServerSettings
    from jobenergy.core.errors import ConfigError

    settings = ServerSettings(auth="none", db_url=f"sqlite:///{tmp_path / 'empty.db'}",
                              migrate=False)
    with pytest.raises(ConfigError, match="jobenergy db upgrade"):
        create_app(settings)
