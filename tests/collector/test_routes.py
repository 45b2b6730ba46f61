"""POST /api/v1/batches over HTTP: success, duplicates, and every kind of bad input."""

from __future__ import annotations

import gzip
import json

import pytest


def post(client, body: bytes, **headers):
    return client.post("/api/v1/batches", content=body,
                       headers={"Content-Type": "application/json", **headers})


def as_dict(batch) -> dict:
    return json.loads(batch.model_dump_json())


def test_post_batch_then_duplicate(client, make_batch, db_url, db_snapshot):
    batch = make_batch(jobs={"7": 1, "8": 2})
    expected_rows = sum(
        len(s.jobs_uj) + (1 if s.unattributed_uj or not s.jobs_uj else 0)
        for iv in batch.intervals for s in iv.sources
    )
    response = post(client, batch.model_dump_json().encode())
    assert response.status_code == 200, response.text
    assert response.json() == {"duplicate": False, "records": expected_rows}
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
]


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
    assert db_snapshot(db_url) == before


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
    assert db_snapshot(db_url) == before


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

    settings = ServerSettings(db_url="postgresql+psycopg://postgres@127.0.0.1:1/none",
                              migrate=False)
    response = post(make_client(settings), make_batch().model_dump_json().encode())
    assert response.status_code == 503
    assert "retry" in response.json()["detail"]


def test_a_form_post_is_refused_with_415(client, make_batch):
    response = client.post("/api/v1/batches", content=make_batch().model_dump_json(),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
    assert "application/json" in response.json()["detail"]


def test_no_migrate_on_an_empty_database_refuses_to_start(tmp_path):
    from jobenergy.api.app import create_app
    from jobenergy.collector.settings import ServerSettings
    from jobenergy.core.errors import ConfigError

    settings = ServerSettings(db_url=f"sqlite:///{tmp_path / 'empty.db'}", migrate=False)
    with pytest.raises(ConfigError, match="jobenergy db upgrade"):
        create_app(settings)
