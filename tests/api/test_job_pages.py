"""GET /api/v1/jobs: keyset pages (``after`` = the previous page's ``next``) and OFFSET pages
give the same jobs as one big page, whatever the filters and the caller's PrivateData scope."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
SOURCES = (("cpu", "package-0"), ("gpu", "gpu/GPU-aaaa"))
#: (cluster, job_id, start hour or None (no Slurm start: energy only), user, uid, account).
#: Ties on the start time (within a cluster and across clusters), job ids that sort
#: differently as text and as numbers, jobs without a start, jobs known only by uid.
JOBS: list[tuple[str, str, int | None, str | None, int, str | None]] = [
    ("c1", "1", 0, "nobody", 65534, "nacct"),
    ("c1", "2", 1, "daemon", 1, "dacct"),
    ("c1", "10", 1, "nobody", 65534, "nacct"),
    ("c1", "9", 1, "daemon", 1, "coord"),
    ("c2", "1", 1, "nobody", 65534, "nacct"),
    ("c2", "100", 1, "bin", 2, "dacct"),
    ("c1", "3", 2, "bin", 2, "coord"),
    ("c1", "4", 3, "daemon", 1, "dacct"),
    ("c2", "5", 3, "nobody", 65534, "other"),
    ("c1", "5", 4, "nobody", 65534, "nacct"),
    ("c1", "6", 4, "daemon", 1, "dacct"),
    ("c2", "6", 5, "daemon", 1, "coord"),
    ("c1", "70", None, None, 65534, None),
    ("c1", "8", None, None, 1, None),
    ("c2", "70", None, None, 2, None),
    ("c1", "71", None, None, 65534, None),
    ("c1", "11", 6, "nobody", 65534, "nacct"),
    ("c1", "12", 6, "nobody", 65534, "nacct"),
]


def post(client: Any, path: str, **kwargs: Any) -> None:
    response = client.post(path, **kwargs)
    assert response.status_code == 200, response.text


@pytest.fixture
def jobs(client: Any, make_batch: Any) -> list[dict[str, Any]]:
    """Post :data:`JOBS` (a start event with owner and account, energy, an end event; or
    energy only); return them, in the list's order (newest start first, no start last, then
    cluster and job id)."""
    for i, (cluster, job_id, hour, user, uid, account) in enumerate(JOBS):
        start = T0 + timedelta(hours=hour if hour is not None else 7)
        if hour is not None:
            post(client, "/api/v1/jobs/events", json={
                "cluster": cluster, "job_id": job_id, "event": "start",
                "time": start.isoformat(), "user": user, "uid": uid, "account": account,
                "partition": "gpu", "nodes": [f"n{i}"]})
        post(client, "/api/v1/batches", content=make_batch(
            cluster=cluster, node=f"n{i}", jobs={job_id: 1}, uid=uid, sources=SOURCES,
            start=start, n_intervals=2).model_dump_json())
        if hour is not None:
            post(client, "/api/v1/jobs/events", json={
                "cluster": cluster, "job_id": job_id, "event": "end",
                "time": (start + timedelta(minutes=30)).isoformat(), "state": "COMPLETED"})
    specs = [
        {"cluster": c, "job_id": j, "start": h, "user": u, "uid": uid, "account": a}
        for c, j, h, u, uid, a in JOBS
    ]
    return sorted(specs, key=lambda s: (s["start"] is None, -(s["start"] or 0), s["cluster"],
                                        s["job_id"]))


def keys(page: dict[str, Any]) -> list[tuple[str, str]]:
    return [(job["cluster"], job["job_id"]) for job in page["jobs"]]


def get(client: Any, **params: Any) -> dict[str, Any]:
    response = client.get("/api/v1/jobs", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def walk(client: Any, limit: int, **filters: Any) -> tuple[list[dict[str, Any]], list[Any]]:
    """Follow ``next`` from the first page; return the pages and every job, in order."""
    pages = [get(client, limit=limit, **filters)]
    while "next" in pages[-1]:
        assert pages[-1]["next"], pages[-1]
        assert len(pages[-1]["jobs"]) == limit  # only a full page can have more after it
        pages.append(get(client, limit=limit, after=pages[-1]["next"], **filters))
        assert len(pages) < 100
    return pages, [job for page in pages for job in page["jobs"]]


FILTERS: list[dict[str, Any]] = [
    {},
    {"cluster": "c1"},
    {"user": "nobody"},
    {"account": "dacct"},
    {"state": "completed"},
    {"start": (T0 + timedelta(hours=1)).isoformat(), "end": (T0 + timedelta(hours=4)).isoformat()},
    {"job_id": "1,10,70,5,100,8"},
    {"user": "nobody", "cluster": "c2"},
    {"user": "nobody-else"},
]


def test_keyset_pages_concatenate_to_one_page(client, jobs):
    for filters in FILTERS:
        whole = get(client, limit=1000, **filters)
        assert "next" not in whole  # everything on one page: no cursor
        assert whole["total"] == len(whole["jobs"])
        for limit in (1, 2, 3, 5):
            pages, walked = walk(client, limit, **filters)
            assert walked == whole["jobs"], (limit, filters)  # same jobs, JSON and order
            assert "next" not in pages[-1]
            assert all(page["total"] == whole["total"] for page in pages)
            assert all(page["offset"] == 0 and page["limit"] == limit for page in pages)
            # OFFSET pages (the contract as before) give the same.
            by_offset = [job for offset in range(0, max(1, whole["total"]), limit)
                         for job in get(client, limit=limit, offset=offset, **filters)["jobs"]]
            assert by_offset == whole["jobs"]
    assert len(get(client, limit=1000)["jobs"]) == len(JOBS)


def test_total_without_counting(client, jobs):
    n = len(JOBS)
    whole = get(client, limit=1000, count="false")
    assert whole["total"] == n and "total_exact" not in whole  # the page holds them all
    first = get(client, limit=5, count="false")
    assert (first["total"], first["total_exact"]) == (6, False)  # 5 and more: at least 6
    assert "total_exact" not in get(client, limit=5)  # counted: exact, as before
    middle = get(client, limit=5, offset=5, count="false")
    assert (middle["total"], middle["total_exact"]) == (11, False)
    last = get(client, limit=5, offset=n - 2, count="false")
    assert (last["total"], "total_exact" in last, "next" in last) == (n, False, False)
    after = get(client, limit=5, after=first["next"], count="false")
    assert (after["total"], after["total_exact"]) == (6, False)
    # Past the end by offset: nothing tells the total but the count.
    assert get(client, limit=5, offset=n + 3)["total"] == n
    beyond = get(client, limit=5, offset=n + 3, count="false")
    assert (beyond["total"], beyond["total_exact"]) == (0, False)
    assert client.get("/api/v1/jobs", params={"count": "maybe"}).status_code == 422


def test_the_order_ties_and_jobs_without_start(client, jobs):
    listed = get(client, limit=1000)
    assert keys(listed) == [(s["cluster"], s["job_id"]) for s in jobs]
    # The ties at hour 1: by cluster, then job id as text ("10" before "2" before "9").
    hour1 = [k for k, s in zip(keys(listed), jobs, strict=True) if s["start"] == 1]
    assert hour1 == [("c1", "10"), ("c1", "2"), ("c1", "9"), ("c2", "1"), ("c2", "100")]
    assert [job["start"] for job in listed["jobs"][-4:]] == [None] * 4
    assert keys(listed)[-4:] == [("c1", "70"), ("c1", "71"), ("c1", "8"), ("c2", "70")]


def test_a_cursor_pages_on_from_any_row(client, jobs):
    listed = get(client, limit=1000)["jobs"]
    for i in range(len(listed)):
        # The cursor of row i (next of a one-row page at offset i) gives the rows after it.
        cursor = get(client, limit=1, offset=i).get("next")
        if i == len(listed) - 1:
            assert cursor is None
            continue
        rest = get(client, limit=1000, after=cursor)
        assert rest["jobs"] == listed[i + 1:]
        assert rest["total"] == len(listed) and "next" not in rest
        # offset after a cursor skips from there.
        assert get(client, limit=2, offset=1, after=cursor)["jobs"] == listed[i + 2:i + 4]
    far = get(client, limit=10_000, offset=2**63 - 1, after=get(client, limit=1)["next"])
    assert far["jobs"] == [] and "next" not in far


def test_a_cursor_survives_new_jobs(client, jobs, make_batch):
    first = get(client, limit=4)
    newer = T0 + timedelta(hours=9)
    post(client, "/api/v1/jobs/events", json={
        "cluster": "c1", "job_id": "999", "event": "start", "time": newer.isoformat(),
        "user": "nobody", "uid": 65534})
    # Keyset: the next page starts right after the last job seen, the new job does not
    # shift it (OFFSET would show the 4th job again).
    rest = get(client, limit=1000, after=first["next"])
    assert keys(rest) == [(s["cluster"], s["job_id"]) for s in jobs[4:]]
    assert keys(get(client, limit=1, offset=4)) == [(jobs[3]["cluster"], jobs[3]["job_id"])]


def cursor_of(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize("after", [
    "", "x", "!!!!", "not a cursor", "A" * 3000, "%00",
    base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    cursor_of("text"), cursor_of([]), cursor_of({"a": 1}),
    cursor_of([2, None, "c1", "1"]),  # another version
    cursor_of([1, None, "c1"]),
    cursor_of([1, 5, "c1", "1"]),
    cursor_of([1, "yesterday", "c1", "1"]),
    cursor_of([1, "2026-11-23T10:00:00", "c1", "1"]),  # no zone
    cursor_of([1, "9999-01-01T00:00:00+00:00", "c1", "1"]),
    cursor_of([1, None, "", "1"]),
    cursor_of([1, None, "c1", None]),
    cursor_of([1, None, "c1", 1]),
    cursor_of([1, None, "c1", "x" * 65]),
    cursor_of([1, None, "c" * 256, "1"]),
    cursor_of([1, None, "c1\u0000", "1"]),
    cursor_of([True, None, "c1", "1"]),
])
def test_a_malformed_cursor_is_422(client, after):
    response = client.get("/api/v1/jobs", params={"after": after})
    assert response.status_code in (400, 422), response.text
    if response.status_code == 400:  # a NUL in the query: refused before any route
        assert "NUL" in response.json()["detail"]
    else:
        assert "after" in json.dumps(response.json()["detail"])


def test_a_valid_cursor_of_a_row_that_does_not_exist_pages_from_its_place(client, jobs):
    after = cursor_of([1, (T0 + timedelta(hours=3, minutes=30)).isoformat(), "c1", "zzz"])
    assert keys(get(client, limit=1000, after=after)) == [
        (s["cluster"], s["job_id"]) for s in jobs if s["start"] is None or s["start"] <= 3]
    after = cursor_of([1, None, "c1", "71"])
    assert keys(get(client, limit=1000, after=after)) == [("c1", "8"), ("c2", "70")]


# ---------------------------------------------------------------------------------------------
# PrivateData: a user's pages hold only the jobs they may read.


#: Accounts ``nobody`` coordinates besides ``coord``: none, or more than
#: ``MAX_ACCOUNT_PARTS`` (then one part of the scope holds them all).
_MORE_ACCOUNTS = {"one": "", "many": ",".join(f"empty{n}" for n in range(9))}


@pytest.fixture(params=sorted(_MORE_ACCOUNTS))
def as_nobody(make_client, server_settings, jobs, tmp_path: Path, request) -> Any:
    """A client of the same database as user ``nobody`` by Slurm JWT, ``private_data = jobs``,
    coordinator of account ``coord`` (a stand-in sacctmgr), and in ``many`` of nine accounts
    without jobs too."""
    import jwt

    from jobenergy.core.request_auth import SlurmJwtAuth

    key = os.urandom(64)
    key_path = tmp_path / "jwt_hs256.key"
    key_path.write_bytes(key)
    key_path.chmod(0o600)
    sacctmgr = tmp_path / "sacctmgr"
    more = _MORE_ACCOUNTS[request.param]
    accounts = f"coord,{more}" if more else "coord"
    sacctmgr.write_text(f"#!/bin/sh\nprintf '%s' 'nobody|None|{accounts}\n'\n")
    sacctmgr.chmod(0o755)
    settings = server_settings.model_copy(update={
        "auth": "jwt", "jwt_key": key_path, "private_data": ("jobs", "usage"),
        "sacctmgr": str(sacctmgr), "rate_limit_per_s": 0,
    })
    client = make_client(settings)
    now = int(datetime.now(UTC).timestamp())
    token = jwt.encode({"sun": "nobody", "iat": now, "exp": now + 600}, key, algorithm="HS256")
    client.auth = SlurmJwtAuth("nobody", token)
    client.coordinated = {"coord", *filter(None, more.split(","))}
    return client


def _visible(as_nobody: Any, jobs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [
        (s["cluster"], s["job_id"]) for s in jobs
        if s["user"] == "nobody" or s["uid"] == 65534 or s["account"] in as_nobody.coordinated
    ]


def test_keyset_pages_in_a_private_data_scope(as_nobody, jobs):
    visible = _visible(as_nobody, jobs)
    assert 0 < len(visible) < len(jobs)
    for filters in FILTERS:
        whole = get(as_nobody, limit=1000, **filters)
        assert set(keys(whole)) <= set(visible)
        assert whole["total"] == len(whole["jobs"])
        for limit in (1, 3):
            pages, walked = walk(as_nobody, limit, **filters)
            assert walked == whole["jobs"]
            assert all(page["total"] == whole["total"] for page in pages)
            by_offset = [get(as_nobody, limit=limit, offset=offset, **filters)["jobs"]
                         for offset in range(0, len(whole["jobs"]), limit)]
            assert [job for page in by_offset for job in page] == whole["jobs"]
    assert keys(get(as_nobody, limit=1000)) == visible
    # A cursor naming another user's job reveals nothing: the page holds visible jobs only.
    hidden = next(s for s in jobs
                  if (s["cluster"], s["job_id"]) not in visible and s["start"] is not None)
    rest = get(as_nobody, limit=1000, after=cursor_of(
        [1, (T0 + timedelta(hours=hidden["start"])).isoformat(), hidden["cluster"],
         hidden["job_id"]]))
    assert set(keys(rest)) <= set(visible)


def test_a_summary_in_the_scope_sums_exactly_its_jobs(as_nobody, client, jobs):
    """``usage`` private: the summary adds up the jobs of the scope's parts, each once."""
    from jobenergy.core.units import UJ_PER_KWH

    visible = set(_visible(as_nobody, jobs))
    every = get(client, limit=1000)["jobs"]  # auth "none": every job, with its energy
    assert len(every) == len(jobs)
    for group_by in ("user", "account", "cluster", "partition"):
        counted: dict[str | None, list[int]] = {}
        for job in every:
            if (job["cluster"], job["job_id"]) in visible:
                row = counted.setdefault(job[group_by], [0, 0])
                row[0] += 1
                row[1] += job["energy_uj"]
        expected = sorted((str(group), n, uj / UJ_PER_KWH) for group, (n, uj) in counted.items())
        response = as_nobody.get("/api/v1/summary", params={"group_by": group_by})
        assert response.status_code == 200, response.text
        rows = sorted((str(r["group"]), r["jobs"], r["energy_kwh"]) for r in response.json())
        assert rows == expected, group_by


def test_long_filters_with_a_cursor_in_a_scope_are_answered(as_nobody, jobs):
    """Every part of a scope repeats the caller's filters: with long lists the scope is read
    under one OR instead (SQLite refused 3 x 6 000 job ids repeated 15 times: 503)."""
    visible = _visible(as_nobody, jobs)
    ids = [str(2_000_000 + n) for n in range(6000)] + sorted({job_id for _, job_id in visible})
    whole = get(as_nobody, limit=1000, job_id=",".join(ids))
    assert whole["total"] == len(whole["jobs"]) > 1
    first = get(as_nobody, limit=1, job_id=",".join(ids))
    rest = get(as_nobody, limit=1000, after=first["next"], job_id=",".join(ids))
    assert first["jobs"] + rest["jobs"] == whole["jobs"]
