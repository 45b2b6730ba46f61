"""The sample loop's faster paths give what the straightforward code gave.

* :class:`CpuSplit` (the CPU/DRAM weights computed once per interval, applied per source,
  with a shortcut when every job was there all along) and ``_Weights.parts`` against the
  per-source ``attribute_cpu`` of before (kept here verbatim as the reference) and
  ``core.split.split_uj``;
* :class:`JobMapReader` (re-reads only changed files) against ``read_job_map``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from jobenergy.agent import jobmap
from jobenergy.agent.attribution import UNATTRIBUTED, CpuSplit, JobUsage, _Weights, attribute_cpu
from jobenergy.agent.jobmap import JobMapReader, read_job_map
from jobenergy.core.split import split_uj


def reference_attribute_cpu(
    delta_uj: int,
    usage: Mapping[str, JobUsage],
    *,
    node_busy_ns: int,
    ncpus: int,
    static_uj: int,
    span_ns: int = 0,
) -> tuple[dict[str, int], int]:
    """``attribute_cpu`` as it was before the weights were shared by the sources."""
    if not usage:
        return {}, delta_uj
    span_ns = max(0, span_ns)

    def lived(u: JobUsage) -> int:
        if span_ns == 0 or u.alive_ns is None:
            return max(1, span_ns)
        return min(max(0, u.alive_ns), span_ns)

    partial = any(lived(u) < max(1, span_ns) for u in usage.values())
    if len(usage) == 1 and not partial:
        (job_id,) = usage
        return {job_id: delta_uj}, 0

    static_uj = max(0, min(delta_uj, static_uj))
    dynamic_uj = delta_uj - static_uj
    full = max(1, span_ns)
    shares, alone_ns = _reference_split_static(static_uj, usage, lived, ncpus, full)

    jobs_busy_ns = sum(u.cpu_ns for u in usage.values())
    busy_weights: dict[str, int] = {j: u.cpu_ns for j, u in usage.items()}
    other_ns = max(0, node_busy_ns - jobs_busy_ns)
    busy_weights[UNATTRIBUTED] = other_ns
    if other_ns and any(alone_ns.values()):
        own = {j: other_ns * t // full for j, t in alone_ns.items()}
        busy_weights = {j: u.cpu_ns + own.get(j, 0) for j, u in usage.items()}
        busy_weights[UNATTRIBUTED] = other_ns - sum(own.values())
    if sum(busy_weights.values()) == 0:
        busy_weights = {j: lived(u) for j, u in usage.items()}
        if sum(busy_weights.values()) == 0:
            busy_weights = {UNATTRIBUTED: 1}

    for key, part in split_uj(dynamic_uj, busy_weights).items():
        shares[key] = shares.get(key, 0) + part
    unattributed_uj = shares.pop(UNATTRIBUTED, 0)
    return shares, unattributed_uj


def _reference_split_static(
    static_uj: int,
    usage: Mapping[str, JobUsage],
    lived: Callable[[JobUsage], int],
    ncpus: int,
    full_ns: int,
) -> tuple[dict[str, int], dict[str, int]]:
    spans = {}
    for job_id, u in usage.items():
        start = 0 if u.alive_ns is None else min(max(0, u.alive_from_ns), full_ns)
        spans[job_id] = (start, min(full_ns, start + lived(u)))
    cuts = sorted({0, full_ns, *(t for span in spans.values() for t in span)})
    stretches = [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]
    energies = split_uj(static_uj, {i: b - a for i, (a, b) in enumerate(stretches)})
    shares: dict[str, int] = {UNATTRIBUTED: 0}
    alone_ns: dict[str, int] = {}
    for i, (a, b) in enumerate(stretches):
        present = [j for j, (lo, hi) in spans.items() if lo <= a and hi >= b]
        if len(present) == 1:
            weights = {present[0]: 1}
            alone_ns[present[0]] = alone_ns.get(present[0], 0) + b - a
        elif present:
            weights = {j: usage[j].cpus for j in present}
            weights[UNATTRIBUTED] = max(0, ncpus - sum(weights.values()))
            if sum(weights.values()) == 0:
                weights = dict.fromkeys(present, 1)
        else:
            weights = {UNATTRIBUTED: 1}
        for key, part in split_uj(energies[i], weights).items():
            shares[key] = shares.get(key, 0) + part
    return shares, alone_ns


SPAN = 1_000_000_000


@st.composite
def usages(draw, whole: bool = False) -> dict[str, JobUsage]:
    """Jobs of an interval; ``whole``: every one there all along (``CpuSplit``'s usual case)."""
    out = {}
    for j in draw(st.lists(st.sampled_from("123456789"), unique=True, max_size=7)):
        alive = None if whole else draw(st.one_of(st.none(), st.integers(0, SPAN)))
        out[j] = JobUsage(
            cpu_ns=draw(st.sampled_from([0, 1, 10**6, 3 * 10**8, draw(st.integers(0, 10**9))])),
            cpus=draw(st.integers(0, 8)),
            alive_ns=alive,
            alive_from_ns=draw(st.integers(0, SPAN)) if alive is not None else 0,
        )
    return out


@settings(max_examples=500, deadline=None)
@given(
    usage=st.one_of(usages(), usages(whole=True)),
    node_busy_ns=st.integers(0, 8 * 10**9),
    ncpus=st.integers(0, 16),
    span_ns=st.sampled_from([0, 1, SPAN, SPAN - 1]),
    sources=st.lists(
        st.tuples(st.integers(0, 10**9), st.integers(0, 2 * 10**9)), min_size=1, max_size=4
    ),
)
def test_cpu_split_is_the_per_source_split_of_before(usage, node_busy_ns, ncpus, span_ns, sources):
    split = CpuSplit(usage, node_busy_ns=node_busy_ns, ncpus=ncpus, span_ns=span_ns)
    for delta_uj, static_uj in sources:
        want = reference_attribute_cpu(
            delta_uj, usage, node_busy_ns=node_busy_ns, ncpus=ncpus, static_uj=static_uj,
            span_ns=span_ns,
        )
        got = split.split(delta_uj, static_uj)
        assert (list(got[0].items()), got[1]) == (list(want[0].items()), want[1])
        assert attribute_cpu(
            delta_uj, usage, node_busy_ns=node_busy_ns, ncpus=ncpus, static_uj=static_uj,
            span_ns=span_ns,
        ) == want


def test_cpu_split_takes_its_shortcut_for_jobs_there_all_along():
    usage = {j: JobUsage(cpu_ns=10**8 * n, cpus=2) for n, j in enumerate("312", 1)}
    split = CpuSplit(usage, node_busy_ns=10**9, ncpus=16, span_ns=SPAN)
    assert split._aligned
    for delta_uj, static_uj in [(10**6 + 7, 3 * 10**5), (5, 9), (0, 0)]:
        want = reference_attribute_cpu(delta_uj, usage, node_busy_ns=10**9, ncpus=16,
                                       static_uj=static_uj, span_ns=SPAN)
        got = split.split(delta_uj, static_uj)
        assert (list(got[0].items()), got[1]) == (list(want[0].items()), want[1])


@settings(max_examples=500, deadline=None)
@given(
    weights=st.dictionaries(
        st.text("abcdef", min_size=1, max_size=3),
        st.one_of(st.integers(0, 3), st.integers(0, 10**12)),
        max_size=12,
    ),
    totals=st.lists(st.integers(0, 10**15), min_size=1, max_size=5),
)
def test_weights_parts_are_split_uj(weights, totals):
    w = _Weights(weights)
    for total in totals:
        if sum(weights.values()) == 0 and total:
            continue  # both refuse: energy would be lost
        assert dict(zip(w.keys, w.parts(total), strict=True)) == split_uj(total, weights)


def test_job_map_reader_reads_only_what_changed(tmp_path, monkeypatch):
    reads: list[str] = []
    read_entry = jobmap._read_entry

    def counting(path):
        reads.append(os.path.basename(path))
        return read_entry(path)

    monkeypatch.setattr(jobmap, "_read_entry", counting)
    (tmp_path / "1").write_text("0,1\nstart=100\n")
    (tmp_path / "2").write_text("\nstart=200\n")
    (tmp_path / ".3.tmp").write_text("2\n")
    old = time.time() - 10  # settled: older than the timestamp granularity
    for name in ("1", "2"):
        os.utime(tmp_path / name, (old, old))
    time.sleep(jobmap._RACY_NS / 1e9)  # their ctime (now) settles too
    reader = JobMapReader(tmp_path)
    want = read_job_map(tmp_path)
    reads.clear()
    assert reader.read() == want
    assert sorted(reads) == ["1", "2"]
    reads.clear()
    assert reader.read() == want
    assert reads == []  # nothing changed: nothing read
    # The epilog's atomic rewrite, an in-place rewrite of the same size, a new and a
    # removed file are all seen at the next scan (the folder changed: it is scanned).
    (tmp_path / ".1.tmp").write_text("0,1\nstart=100\nend=150\n")
    os.replace(tmp_path / ".1.tmp", tmp_path / "1")
    (tmp_path / "2").write_text("\nstart=201\n")  # in place, same size: a new mtime
    (tmp_path / "4").write_text("3\n")
    want = read_job_map(tmp_path)
    reads.clear()
    now = reader.read()
    assert now == want
    assert now["1"].end_ns == 150 * 10**9 and now["2"].start_ns == 201 * 10**9
    assert sorted(reads) == ["1", "2", "4"]
    (tmp_path / "4").unlink()
    assert "4" not in reader.read()


def _settle(path, after_ns=jobmap._RACY_NS):
    """Wait until ``path``'s ctime is older than ``after_ns`` (a condition, not a delay)."""
    ctime_ns = os.stat(path).st_ctime_ns
    while time.time_ns() - ctime_ns <= after_ns:
        time.sleep(0.01)


def test_job_map_reader_skips_the_scan_while_the_folder_is_unchanged(tmp_path, monkeypatch):
    # The hooks rename files into place and remove them: each changes the folder's mtime.
    listings = []
    list_map = jobmap._list_map

    def counting(*args):
        listings.append(1)
        return list_map(*args)

    monkeypatch.setattr(jobmap, "_list_map", counting)
    for name, text in (("1", "0\nstart=100\n"), ("2", "\nstart=200\n")):
        (tmp_path / f".{name}.tmp").write_text(text)
        os.replace(tmp_path / f".{name}.tmp", tmp_path / name)
    reader = JobMapReader(tmp_path)
    assert reader.read() == read_job_map(tmp_path)  # fresh files: not trusted yet
    _settle(tmp_path, jobmap._DIR_SETTLED_NS)  # the folder: whole-second timestamps too
    for name in ("1", "2"):
        _settle(tmp_path / name)
    want = read_job_map(tmp_path)
    listings.clear()
    first = reader.read()
    assert first == want and len(listings) == 1
    first.pop("1")  # the caller's copy: the reader's answer is its own
    assert reader.read() == want and len(listings) == 1  # not listed again
    # The epilog's rewrite (a rename), a job's removal and a new job are each seen at once.
    (tmp_path / ".1.tmp").write_text("0\nstart=100\nend=150\n")
    os.replace(tmp_path / ".1.tmp", tmp_path / "1")
    assert reader.read()["1"].end_ns == 150 * 10**9
    (tmp_path / "2").unlink()
    assert "2" not in reader.read()
    (tmp_path / ".3.tmp").write_text("1\n")
    os.replace(tmp_path / ".3.tmp", tmp_path / "3")
    assert reader.read() == read_job_map(tmp_path) and set(reader.read()) == {"1", "3"}


def test_job_map_reader_does_not_trust_a_file_written_just_before_it_was_read(
        tmp_path, monkeypatch):
    # Timestamps come from a coarse clock: a file rewritten within the same tick could keep
    # its inode, size, mtime and ctime. Such a file is read again until it has settled.
    path = tmp_path / "5"
    path.write_text("0\n")
    reader = JobMapReader(tmp_path)
    # Read 1 ms after the write, whatever the machine's load: with the real clock, a stall
    # of _RACY_NS between the write and the read would make the file look settled.
    written_ns = os.stat(path).st_ctime_ns
    with monkeypatch.context() as m:
        m.setattr(jobmap, "time", type("Clock", (), {
            "time_ns": staticmethod(lambda: written_ns + 1_000_000)}))
        assert reader.read()["5"].gpus == {0}
    assert "5" not in reader._cache
    old = time.time() - 10
    os.utime(path, (old, old))
    time.sleep(jobmap._RACY_NS / 1e9)  # its ctime (set by utime) settles
    assert reader.read()["5"].gpus == {0}
    assert "5" in reader._cache


def test_job_map_reader_without_a_folder(tmp_path):
    assert JobMapReader(None).read() == {}
    assert JobMapReader(tmp_path / "absent").read() == {}
