"""The read API answers 4xx naming the problem for any input, and 503 while the database is down.

Each case here gave a 500 before: dates that overflow on the way to UTC or SQL, integers past
BIGINT, NUL characters that PostgreSQL cannot compare, a PostgreSQL that is not running.
"""

from __future__ import annotations

import pytest

from jobenergy.api.job_filters import MAX_JOB_IDS
from jobenergy.api.routes_jobs import MAX_OFFSET

BAD_QUERIES = [
    ("/api/v1/jobs", {"start": "0001-01-01"}, 422, ["start", "1970"]),
    ("/api/v1/jobs", {"end": "9999-12-31T23:59:59-14:00"}, 422, ["end", "2100"]),
    ("/api/v1/jobs", {"start": "-1e12"}, 422, ["start", "1970"]),
    ("/api/v1/jobs", {"end": "2100-01-01T00:00:00Z"}, 422, ["end", "2100"]),
    ("/api/v1/summary", {"start": "1e12"}, 422, ["start", "2100"]),
    ("/api/v1/leaderboards/models", {"end": "9999-12-31"}, 422, ["end", "2100"]),
    ("/api/v1/jobs", {"offset": str(MAX_OFFSET + 1)}, 422, ["offset"]),
    ("/api/v1/jobs", {"limit": str(2**63)}, 422, ["limit"]),
    ("/api/v1/clusters/c1/factor-changes", {"after": str(2**63)}, 422, ["after"]),
    ("/api/v1/jobs?job_id=" + ",".join(str(i) for i in range(MAX_JOB_IDS + 1)), {}, 422,
     ["job_id", str(MAX_JOB_IDS)]),
    ("/api/v1/jobs/%00", {}, 400, ["path", "NUL"]),
    ("/api/v1/clusters/%00", {}, 400, ["path", "NUL"]),
    ("/api/v1/jobs/1", {"cluster": "\x00"}, 400, ["query", "NUL"]),
    ("/api/v1/jobs", {"user": "a\x00"}, 400, ["query", "NUL"]),
    ("/api/v1/jobs", {"job_id": "1,\x00"}, 400, ["query", "NUL"]),
    ("/api/v1/nodes", {"cluster": "\x00"}, 400, ["query", "NUL"]),
    ("/api/v1/summary", {"cluster": "\x00"}, 400, ["query", "NUL"]),
    ("/api/v1/leaderboards/models", {"cluster": "\x00"}, 400, ["query", "NUL"]),
]


@pytest.mark.parametrize(("path", "params", "status", "words"), BAD_QUERIES,
                         ids=[f"{p[:30]}?{','.join(q)}" for p, q, _, _ in BAD_QUERIES])
def test_bad_query_is_4xx_naming_it(client, make_batch, path, params, status, words):
    batch = make_batch(jobs={"1": 1})
    assert client.post("/api/v1/batches", content=batch.model_dump_json()).status_code == 200
    response = client.get(path, params=params or None)  # {} would drop a query in the path
    assert response.status_code == status, response.text
    text = response.text
    for word in words:
        assert word in text, text


def test_edges_of_the_ranges_are_accepted(client, make_batch):
    batch = make_batch(jobs={"1": 1})
    assert client.post("/api/v1/batches", content=batch.model_dump_json()).status_code == 200
    job_ids = ",".join(str(i) for i in range(MAX_JOB_IDS))  # commas unescaped: a shorter URL
    response = client.get(f"/api/v1/jobs?job_id={job_ids}", params={
        "start": "1970-01-01T00:00:00Z", "end": "2099-12-31T23:59:59Z", "offset": str(MAX_OFFSET),
    })
    assert response.status_code == 200, response.text
    assert response.json()["total"] == 1 and response.json()["jobs"] == []


READS = ["/healthz", "/api/v1/jobs", "/api/v1/jobs/1", "/api/v1/nodes", "/api/v1/summary",
         "/api/v1/leaderboards/models", "/api/v1/clusters", "/api/v1/clusters/c1"]


@pytest.mark.parametrize("path", READS)
def test_reads_while_the_database_is_down_are_503_with_retry_after(make_client, path):
    from jobenergy.collector.settings import ServerSettings

    settings = ServerSettings(auth="none", db_url="postgresql+psycopg://postgres@127.0.0.1:1/none",
                              migrate=False)
    response = make_client(settings).get(path)
    assert response.status_code == 503, response.text
    assert "retry" in response.json()["detail"]
    assert int(response.headers["Retry-After"]) > 0
