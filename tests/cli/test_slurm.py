"""``jobenergy slurm``: sacct/squeue JSON parsing, AdminComment, sync logic, hook events.

Parsing runs on output captured from the live test cluster (Slurm 22.05.8, see
tests/fixtures/slurm/SOURCE.md) and on a hand-written newer (v0.0.40) layout. Slurm commands
are replaced by a runner answering captured output; the collector by httpx.MockTransport.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobenergy.cli.admin_comment import (
    admin_comment_text,
    format_summary,
    has_summary,
    jobstats_payload,
    merge_admin_comment,
    strip_summary,
)
from jobenergy.cli.slurm import (
    Syncer,
    energy_final,
    flush_outbox,
    job_events,
    merge_spans,
)
from jobenergy.cli.slurmclient import (
    SacctJsonClient,
    SlurmError,
    SlurmJob,
    expand_hostlist,
    filter_jobs,
    parse_jobs_json,
)
from jobenergy.cli.sync_state import load_state, resolve_state_path, save_state
from jobenergy.core.schema import JobEvent

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurm"
REPO = Path(__file__).resolve().parents[2]
SACCT_2205 = FIXTURES / "sacct-22.05-dbv0.0.38.json"
SQUEUE_2205 = FIXTURES / "squeue-22.05-v0.0.38.json"
SACCT_2311 = FIXTURES / "sacct-23.11-v0.0.40-synthetic.json"


def _by_id(jobs: list[SlurmJob]) -> dict[str, SlurmJob]:
    return {j.job_id: j for j in jobs}


def test_sacct_2205_parses_every_kind_of_job() -> None:
    jobs = _by_id(parse_jobs_json(SACCT_2205.read_text()))
    assert sorted(jobs, key=int) == [str(i) for i in range(1, 13)]
    two = jobs["6"]
    assert (two.name, two.user, two.account, two.partition) == ("two", "alice", "proj1", "debug")
    assert two.nodes == ("n2", "n3") and two.nodelist == "n[2-3]"
    assert two.tres_alloc["gres/gpu"] == 2 and two.tres_alloc["cpu"] == 2
    assert two.steps == ("batch", "extern", "0")
    assert two.start == datetime.fromtimestamp(1795435687, UTC) and two.elapsed_s == 1
    # Array tasks: raw ids 9, 10 and 5 (the last task keeps the array's id).
    assert [(jobs[i].array_job_id, jobs[i].array_task_id) for i in ("9", "10", "5")] == [
        ("5", "0"), ("5", "1"), ("5", "2")]
    assert jobs["6"].array_job_id is None and jobs["6"].array_task_id is None
    # Het components are jobs of their own with the leader's id.
    assert [(jobs[i].het_job_id, jobs[i].het_job_offset, jobs[i].nodes) for i in ("11", "12")] == [
        ("11", "0", ("n1",)), ("11", "1", ("n2",))]
    assert jobs["8"].state == "CANCELLED" and jobs["7"].state == "FAILED"
    assert all(j.ended for j in jobs.values())


def test_sacct_2205_json_exit_code_defect_is_corrected_from_text() -> None:
    # 22.05's JSON says return_code 0 for the job that ran `exit 3`.
    assert _by_id(parse_jobs_json(SACCT_2205.read_text()))["7"].exit_code == "0:0"
    answers = {"--json": SACCT_2205.read_text(),
               "-P": (FIXTURES / "sacct-22.05-exitcodes.txt").read_text()}
    calls: list[list[str]] = []

    def runner(argv: Sequence[str]) -> str:
        calls.append(list(argv))
        return next(v for k, v in answers.items() if k in argv)

    jobs = _by_id(SacctJsonClient(runner).jobs(job_ids=["7", "4", "8"]))
    assert set(jobs) == {"7", "4", "8"}  # sacct answered more: filtered
    assert jobs["7"].exit_code == "3:0" and jobs["4"].exit_code == "124:0"
    assert all("-j" in c and "7,4,8" in c for c in calls)


def test_squeue_2205_flat_layout() -> None:
    jobs = _by_id(parse_jobs_json(SQUEUE_2205.read_text()))
    assert jobs["7"].exit_code == "3:0"  # raw wait status 768
    assert jobs["8"].exit_code == "0:15"
    assert jobs["6"].nodes == ("n2", "n3") and jobs["6"].tres_alloc["gres/gpu"] == 2
    assert (jobs["10"].array_job_id, jobs["10"].array_task_id) == ("5", "1")
    assert (jobs["12"].het_job_id, jobs["12"].het_job_offset) == ("11", "1")
    # squeue --json -j N ignores the filter in 22.05: filter client-side.
    assert [j.job_id for j in filter_jobs(jobs.values(), ["6"])] == ["6"]
    assert {j.job_id for j in filter_jobs(jobs.values(), ["5"])} == {"5", "9", "10"}


def test_newer_layout_numbers_and_flag_lists() -> None:
    jobs = _by_id(parse_jobs_json(SACCT_2311.read_text()))
    arr = jobs["53"]
    assert arr.state == "FAILED" and arr.exit_code == "3:0"
    assert (arr.array_job_id, arr.array_task_id) == ("50", "3")
    assert arr.het_job_id is None and arr.het_job_offset is None
    assert arr.nodes == ("gpu01", "gpu02", "cpu7")
    assert arr.steps == ("batch", "0") and arr.tres_alloc == {"cpu": 8, "gres/gpu": 4}
    assert arr.admin_comment == "owner=ml" and arr.comment == "run 7"
    het = jobs["61"]
    assert (het.het_job_id, het.het_job_offset, het.state) == ("60", "1", "RUNNING")
    assert het.end is None and not het.ended


@pytest.mark.parametrize("text", ["not json", '{"jobs": 3}', '{"jobs": [], "errors": ["x"]}',
                                  '{"jobs": [{"name": "no id"}]}'])
def test_bad_json_is_a_slurm_error(text: str) -> None:
    with pytest.raises(SlurmError):
        parse_jobs_json(text)


@pytest.mark.parametrize(("text", "names"), [
    ("n[1-3,5]", ("n1", "n2", "n3", "n5")),
    ("gpu[08-10],login", ("gpu08", "gpu09", "gpu10", "login")),
    ("a,b", ("a", "b")),
    ("rack[1-2]-x", ("rack1-x", "rack2-x")),
    ("None assigned", ()),
    ("", ()),
    ("n[1-2],gpu[1-2]-ib", ("n1", "n2", "gpu1-ib", "gpu2-ib")),
    ("x[1-2]y[3-4]", ("x1y3", "x1y4", "x2y3", "x2y4")),  # two groups, as Slurm allows
    ("n[1-", ("n[1-",)),  # unparsable: kept as one name, not lost
])
def test_expand_hostlist(text: str, names: tuple[str, ...]) -> None:
    assert expand_hostlist(text) == names


def test_admin_comment_summary_keeps_other_content() -> None:
    api_job = {"energy_kwh": 0.412, "by_component": {"cpu": 1, "gpu": 1_404_000_000_000},
               "facility_energy_kwh": 0.4944, "co2e_kg": 0.0271}
    summary = format_summary(api_job)
    assert summary == "energy_kwh=0.412 gpu_kwh=0.39 facility_kwh=0.4944 co2e_kg=0.0271"
    tiny = format_summary({"energy_kwh": 1.234e-6, "by_component": {}})
    assert tiny == "energy_kwh=0.000001234 gpu_kwh=0 facility_kwh=0 co2e_kg=0"
    assert merge_admin_comment(None, summary) == summary
    assert merge_admin_comment("owner=ml ticket 42", summary) == f"owner=ml ticket 42 {summary}"
    old = "owner=ml energy_kwh=0.1 gpu_kwh=0 facility_kwh=0.1 co2e_kg=0.0"
    assert merge_admin_comment(old, summary) == f"owner=ml {summary}"
    assert has_summary(f"x {summary}") and not has_summary("owner=ml")


def _job(**kw: Any) -> SlurmJob:
    end = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    base = dict(job_id="6", cluster="c1", name="two", user="alice", account="proj1",
                partition="debug", state="COMPLETED", exit_code="0:0", nodelist="n[2-3]",
                nodes=("n2", "n3"), start=end - timedelta(seconds=30), end=end,
                array_job_id="5", array_task_id="2")
    base.update(kw)
    return SlurmJob(**base)


def _node_rows(last: dict[str, datetime]) -> list[dict[str, Any]]:
    return [{"cluster": "c1", "node": n, "component": c, "last_at": t.isoformat()}
            for n, t in last.items() for c in ("cpu", "dram")]


def test_energy_final_needs_every_node_past_end() -> None:
    job = _job()
    late = job.end + timedelta(seconds=6)
    assert energy_final(job, _node_rows({"n2": late, "n3": late}), settle_s=5)
    assert not energy_final(job, _node_rows({"n2": late}), settle_s=5)
    assert not energy_final(job, _node_rows({"n2": late, "n3": job.end}), settle_s=5)
    assert not energy_final(_job(end=None), _node_rows({"n2": late, "n3": late}), settle_s=5)


def test_job_events_are_valid_wire_events() -> None:
    events = [JobEvent.model_validate(e) for e in job_events(_job(), "c1")]
    assert [e.event for e in events] == ["start", "end"]
    assert events[1].tags == {"array_job_id": "5", "array_task_id": "2"}
    assert events[1].nodes == ["n2", "n3"] and events[1].exit_code == "0:0"
    assert [e["event"] for e in job_events(_job(start=None), "c1")] == ["end"]


def test_job_events_carry_what_only_sacct_knows() -> None:
    """The sync's events are marked authoritative (collector/events.py) and carry the
    array ids on both events, AllocTRES, who cancelled the job and its steps."""
    job = _job(state="CANCELLED", kill_requid=1000, steps=("batch", "extern", "0"),
               step_names={"batch": "batch", "0": "x" * 300}, tres_alloc={"cpu": 2, "mem": 4096})
    start, end = (JobEvent.model_validate(e) for e in job_events(job, "c1"))
    assert start.source == end.source == "sacct"
    assert start.tags == end.tags == {"array_job_id": "5", "array_task_id": "2"}
    assert start.alloc_tres == end.alloc_tres == "cpu=2,mem=4G"  # built from the JSON
    assert (end.state, end.kill_requid) == ("CANCELLED", 1000)
    assert [(s.id, s.name) for s in end.steps] == [("batch", "batch"), ("extern", None),
                                                    ("0", "x" * 255)]
    text = replace(job, alloc_tres_text="billing=2,cpu=2,mem=4G,node=1")
    assert job_events(text, "c1")[1]["alloc_tres"] == "billing=2,cpu=2,mem=4G,node=1"


def test_slurmdbd_placeholder_name_never_reaches_the_events() -> None:
    """For a second or two after a job ends, 22.05's sacct can print it as
    ``allocation|CANCELLED`` (slurmdbd's record got the end before the name; seen on the
    live cluster with a job whose AdminComment was set while it ran). The sync's events are
    authoritative, so that placeholder must not overwrite the name the hooks reported."""
    data = json.loads(SACCT_2205.read_text())
    first = data["jobs"][0]
    data["jobs"] = [{**first, "name": "allocation"}, {**first, "name": "real-name"}]
    placeholder, named = parse_jobs_json(json.dumps(data))
    assert placeholder.name is None and named.name == "real-name"
    assert all("name" not in e for e in job_events(placeholder, "c1"))
    assert {e["name"] for e in job_events(named, "c1")} == {"real-name"}


#: What ``sacct -n -P -o JobIDRaw,JobID,State,AllocTRES,JobName`` prints (steps included) for
#: jobs of the 22.05 fixture: hand-written after it (not captured); a job name with the
#: delimiter, a line broken by a job name's newline, a pending array remainder.
SACCT_DETAILS = """\
5|5_2|COMPLETED|billing=1,cpu=1,mem=500M,node=1|arr
5.batch|5_2.batch|COMPLETED|cpu=1,mem=500M,node=1|batch
5.extern|5_2.extern|COMPLETED|billing=1,cpu=1,mem=500M,node=1|extern
8|8|CANCELLED by 0|billing=1,cpu=1,mem=500M,node=1|can|cel
8.batch|8.batch|CANCELLED|cpu=1,mem=500M,node=1|batch
12|11+1|COMPLETED|billing=1,cpu=1,gres/gpu:a100=1,mem=1.50G,node=1|het
continued name|x|y|z|w
12.extern|11+1.extern|COMPLETED|billing=1,cpu=1,mem=500M,node=1|extern
12.0|11+1.0|COMPLETED|cpu=1,mem=500M,node=1|true
13|13_[4-9]|PENDING||arr
"""


def test_sacct_details_give_alloc_tres_steps_and_who_cancelled() -> None:
    from jobenergy.cli.slurmclient import parse_sacct_details

    got = parse_sacct_details(SACCT_DETAILS)
    assert got["5"].alloc_tres == "billing=1,cpu=1,mem=500M,node=1"
    assert (got["5"].steps, got["5"].kill_requid) == (("batch", "extern"), None)
    assert (got["8"].kill_requid, got["8"].steps) == (0, ("batch",))
    assert got["12"].alloc_tres == "billing=1,cpu=1,gres/gpu:a100=1,mem=1.50G,node=1"
    assert got["12"].steps == ("extern", "0") and got["12"].step_names["0"] == "true"
    assert "13" not in got  # a pending remainder is no job of its own
    # Another format (the exit codes' text) is no detail at all.
    assert parse_sacct_details((FIXTURES / "sacct-22.05-exitcodes.txt").read_text()) == {}


def test_tres_are_formatted_as_sacct_prints_alloc_tres() -> None:
    from jobenergy.cli.slurmclient import format_tres

    assert format_tres({"node": 1, "mem": 4096, "cpu": 4, "gres/gpu": 1, "billing": 4}) == (
        "billing=4,cpu=4,gres/gpu=1,mem=4G,node=1")
    assert [format_tres({"mem": m}) for m in (500, 1024, 1536, 1000, 2 * 1024**2)] == [
        "mem=500M", "mem=1G", "mem=1.50G", "mem=1000M", "mem=2T"]


def test_sacct_client_reads_the_details_with_the_json() -> None:
    answers = {"--json": SACCT_2205.read_text(), "JobIDRaw,ExitCode": "",
               "JobIDRaw,JobID,State,AllocTRES,JobName": SACCT_DETAILS}

    def runner(argv: Sequence[str]) -> str:
        assert "-X" not in argv or "JobIDRaw,ExitCode" in argv  # the details have steps
        return next(v for k, v in answers.items() if k in argv)

    jobs = _by_id(SacctJsonClient(runner).jobs(job_ids=["5", "8", "12"]))
    assert jobs["5"].alloc_tres == "billing=1,cpu=1,mem=500M,node=1"
    assert jobs["12"].steps == ("extern", "0") and jobs["8"].kill_requid == 0
    # Without the text, the JSON's steps and TRES.
    answers["JobIDRaw,JobID,State,AllocTRES,JobName"] = ""
    jobs = _by_id(SacctJsonClient(runner).jobs(job_ids=["6"]))
    assert jobs["6"].steps == ("batch", "extern", "0")
    assert jobs["6"].step_names == {"batch": "batch", "extern": "extern", "0": "hostname"}
    assert jobs["6"].alloc_tres == "billing=2,cpu=2,gres/gpu=2,mem=1000M,node=2"


class FakeSlurm:
    """SlurmClient double: records AdminComment writes and keeps them, as slurmdbd does.

    A write goes through :class:`SacctJsonClient` with a recording runner, so the ids and
    argv checks are the real ones; ``jobid=`` is then applied as sacctmgr applies it: a bare
    array id changes every task, a bare het id every component.
    """

    def __init__(self, jobs: list[SlurmJob]) -> None:
        self._jobs = list(jobs)
        self.comments: dict[str, str] = {}
        self.windows: list[tuple[datetime | None, datetime | None]] = []
        self.fail: SlurmError | None = None
        self._client = SacctJsonClient(self._sacctmgr)

    def jobs(self, *, job_ids: Sequence[str] = (), since: datetime | None = None,
             until: datetime | None = None) -> list[SlurmJob]:
        if not job_ids:
            self.windows.append((since, until))
        return [j for j in self._jobs if _in_window(j, since, until) and (
            not job_ids or j.job_id in job_ids or j.array_job_id in job_ids)]

    def set_admin_comment(self, job_id: str, text: str) -> None:
        if self.fail is not None:
            raise self.fail
        self._client.set_admin_comment(job_id, text)

    def _sacctmgr(self, argv: Sequence[str]) -> str:
        assert list(argv[:4]) == ["sacctmgr", "-i", "modify", "job"] and argv[5] == "set"
        target = argv[4].removeprefix("jobid=")
        text = argv[6].removeprefix("AdminComment=")
        self.comments[target] = text
        self._jobs = [replace(j, admin_comment=text) if target in _sacctmgr_names(j) else j
                      for j in self._jobs]
        return ""


def _sacctmgr_names(job: SlurmJob) -> set[str]:
    """Every ``jobid=`` value that sacctmgr applies to ``job``."""
    names = {job.job_id}
    if job.array_job_id:
        names |= {job.array_job_id, f"{job.array_job_id}_{job.array_task_id}"}
    if job.het_job_id:
        names |= {job.het_job_id, f"{job.het_job_id}+{job.het_job_offset}"}
    return names


def _in_window(job: SlurmJob, since: datetime | None, until: datetime | None) -> bool:
    """sacct -S/-E: the job ran at some time inside the window."""
    if job.start is None or job.end is None:
        return True
    return (since is None or job.end >= since) and (until is None or job.start <= until)


def _collector(last_at: datetime, seen: list[dict[str, Any]]) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/jobs/events":
            seen.append(json.loads(request.content))
            return httpx.Response(200, json={"ok": True})
        if request.url.path == "/api/v1/nodes":
            return httpx.Response(200, json={"nodes": _node_rows({"n2": last_at, "n3": last_at})})
        if request.url.path == "/api/v1/jobs/6":
            return httpx.Response(200, json={"energy_kwh": 0.5, "by_component": {"gpu": 0},
                                             "facility_energy_kwh": 0.6, "co2e_kg": 0.1})
        return httpx.Response(404)

    return httpx.Client(transport=httpx.MockTransport(handler), base_url="http://collector")


def test_sync_posts_events_then_writes_admin_comment_once_final() -> None:
    job = _job(admin_comment="owner=ml")
    slurm = FakeSlurm([job])
    seen: list[dict[str, Any]] = []
    early = _collector(job.end + timedelta(seconds=1), seen)
    report = Syncer(early, slurm, settle_s=5).run_once(job_ids=["6"], since=None)
    assert report.pending == ["6"] and not slurm.comments and report.events_sent == 2
    assert [e["event"] for e in seen] == ["start", "end"]
    late = _collector(job.end + timedelta(seconds=10), seen)
    report = Syncer(late, slurm, settle_s=5).run_once(job_ids=["6"], since=None)
    # Job 6 is task 2 of array 5: addressed as 5_2, never as the whole array.
    assert slurm.comments == {"5_2": "owner=ml energy_kwh=0.5 gpu_kwh=0 facility_kwh=0.6 "
                                      "co2e_kg=0.1"}
    done = FakeSlurm([_job(admin_comment=slurm.comments["5_2"])])
    report = Syncer(late, done, settle_s=5).run_once(job_ids=["6"], since=None)
    assert report.done == ["6"] and not done.comments


def test_events_are_posted_again_from_the_pass_that_finds_the_energy_final() -> None:
    """slurmdbd may not have every step record at the first pass (EpilogSlurmctld runs as
    the job ends): the pass that writes the summary posts sacct's view once more."""
    job = _job()
    seen: list[dict[str, Any]] = []
    syncer = Syncer(_collector(job.end + timedelta(seconds=1), seen), FakeSlurm([job]),
                    settle_s=5)
    assert syncer.run_once(job_ids=["6"], since=None).pending == ["6"]
    assert syncer.run_once(job_ids=["6"], since=None).pending == ["6"]  # nothing new: quiet
    syncer.slurm = FakeSlurm([replace(job, steps=("batch", "extern"))])
    syncer.http = _collector(job.end + timedelta(seconds=10), seen)
    report = syncer.run_once(job_ids=["6"], since=None)
    assert report.comments and report.events_sent == 2
    assert [(e["event"], len(e.get("steps", []))) for e in seen] == [
        ("start", 0), ("end", 0), ("start", 0), ("end", 2)]


def test_flush_outbox_delivers_in_order_and_keeps_on_outage(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"{i}-job.json").write_text(json.dumps({"n": i}))
    got: list[int] = []

    def ok(request: httpx.Request) -> httpx.Response:
        got.append(json.loads(request.content)["n"])
        return httpx.Response(422 if got[-1] == 1 else 200)

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with httpx.Client(transport=httpx.MockTransport(down), base_url="http://c") as http:
        assert flush_outbox(http, tmp_path) == (0, 3)
    with httpx.Client(transport=httpx.MockTransport(ok), base_url="http://c") as http:
        assert flush_outbox(http, tmp_path) == (3, 0)  # a rejected one is logged and dropped
    assert got == [0, 1, 2] and not list(tmp_path.glob("*.json"))


def _need_bash_and_curl() -> None:
    if shutil.which("bash") is None or shutil.which("curl") is None:
        message = "the Slurm hooks need bash and curl: apt-get install curl (make test does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.parametrize("role", ["prolog", "epilog", "prolog_slurmctld", "epilog_slurmctld"])
def test_hook_keeps_a_valid_event_when_collector_is_down(tmp_path: Path, role: str) -> None:
    _need_bash_and_curl()
    conf = tmp_path / "hooks.env"
    conf.write_text(f"JOBENERGY_URL=http://127.0.0.1:9\nJOBENERGY_AUTH=none\n"
                    f"JOBENERGY_OUTBOX={tmp_path}/outbox\n"
                    f"JOBENERGY_GPU_MAP_DIR={tmp_path}/gpus\nJOBENERGY_GPU_MAP_LINGER_S=0\n")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "JOBENERGY_HOOK_CONF": str(conf),
        "SLURM_JOB_ID": "42", "SLURM_CLUSTER_NAME": "c1", "SLURM_JOB_USER": "alice",
        "SLURM_JOB_UID": "1001", "SLURM_JOB_ACCOUNT": "proj1", "SLURM_JOB_PARTITION": "gpu",
        "SLURM_JOB_NAME": 'say "hi"\\ \ttab', "SLURM_JOB_COMMENT": "line1\nline2",
        "SLURM_JOB_NODELIST": "n1", "SLURM_NODELIST": "n1", "SLURMD_NODENAME": "n1",
        "SLURM_JOB_GPUS": "0,1", "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "2",
        "SLURM_JOB_EXIT_CODE2": "3:0",
        "SPANK_ENERGY_MODEL": "llama-7b", "SPANK_ENERGY_PHASE": "training",
        "SPANK_ENERGY_TAGS": 'team=nlp;dataset=c4 "v2"',
    }
    env_b = {k.encode(): v.encode() for k, v in env.items()}
    env_b[b"SLURM_JOB_NAME"] += b" \xff\xfe"  # a user's bytes, not UTF-8
    proc = subprocess.run(["bash", str(REPO / "slurm_plugins" / f"{role}.sh")], env=env_b,
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0 and proc.stdout == ""
    kept = list((tmp_path / "outbox").glob("*.json"))
    assert len(kept) == 1
    event = JobEvent.model_validate_json(kept[0].read_bytes())
    assert (event.job_id, event.user, event.uid, event.name) == ("42", "alice", 1001,
                                                                 'say "hi"\\ \ttab ')
    assert event.comment == "line1\nline2" and event.nodes == ["n1"]
    assert event.tags == {"model": "llama-7b", "phase": "training", "team": "nlp",
                          "dataset": 'c4 "v2"', "array_job_id": "40", "array_task_id": "2"}
    assert event.event == ("start" if role.startswith("prolog") else "end")
    if role == "prolog":
        assert event.gpus == ["n1:0", "n1:1"]
        from jobenergy.agent.jobmap import read_job_map

        entry = read_job_map(tmp_path / "gpus")["42"]  # as the agent reads it
        assert entry.gpus == {0, 1} and entry.end_ns is None
        assert abs(entry.start_ns / 1e9 - event.time.timestamp()) < 5
    if role.startswith("epilog"):
        assert event.exit_code == "3:0"


# -- one AdminComment per array task and het component ---------------------------------------
def test_admin_comment_id_names_one_task_or_component_in_every_layout() -> None:
    old = _by_id(parse_jobs_json(SACCT_2205.read_text()))
    assert [old[i].admin_comment_id for i in ("9", "10", "5", "11", "12", "6")] == [
        "5_0", "5_1", "5_2", "11+0", "11+1", "6"]
    new = _by_id(parse_jobs_json(SACCT_2311.read_text()))
    assert (new["53"].admin_comment_id, new["61"].admin_comment_id) == ("50_3", "60+1")
    # NO_VAL task ids/offsets (newer plugins print them raw) are "unset", not ids.
    no_val = {"job_id": 7, "array": {"job_id": 0, "task_id": 4294967294},
              "het": {"job_id": 0, "job_offset": 4294967294}}
    plain = parse_jobs_json(json.dumps({"jobs": [no_val]}))[0]
    assert (plain.array_task_id, plain.het_job_offset, plain.admin_comment_id) == (
        None, None, "7")
    assert _job(array_task_id=None).admin_comment_id is None  # e.g. a pending "5_[3-9]"


@pytest.mark.parametrize("bad", ["5_[3-4]", "abc", "5 6", "11+", "", "5_1+0"])
def test_sacctmgr_gets_only_single_job_ids(bad: str) -> None:
    calls: list[list[str]] = []
    client = SacctJsonClient(lambda argv: calls.append(list(argv)) or "")
    for good in ("40_2", "11+0", "12"):
        client.set_admin_comment(good, "x y")
    assert [c[4] for c in calls] == ["jobid=40_2", "jobid=11+0", "jobid=12"]
    assert calls[0] == ["sacctmgr", "-i", "modify", "job", "jobid=40_2", "set",
                        "AdminComment=x y"]
    with pytest.raises(SlurmError):
        client.set_admin_comment(bad, "x")


def _api(values: dict[str, dict[str, Any]], last_at: datetime,
         calls: list[str] | None = None) -> httpx.Client:
    """Collector double: every node reported up to ``last_at``; jobs answer ``values``."""
    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if calls is not None:
            calls.append(path)
        if path == "/api/v1/jobs/events":
            return httpx.Response(200, json={"ok": True})
        if path == "/api/v1/nodes":
            nodes = [f"n{i}" for i in range(1, 5)] + ["gpu01", "gpu02", "cpu7"]
            return httpx.Response(200, json={"nodes": _node_rows(dict.fromkeys(nodes, last_at))})
        job_id = path.removeprefix("/api/v1/jobs/")
        if job_id in values:
            return httpx.Response(200, json=values[job_id])
        return httpx.Response(404)

    return httpx.Client(transport=httpx.MockTransport(handler), base_url="http://collector")


def _measured(energy_kwh: float, **kw: Any) -> dict[str, Any]:
    return {"energy_kwh": energy_kwh, "energy_uj": round(energy_kwh * 3.6e12),
            "by_component": {"gpu": 0}, "facility_energy_kwh": energy_kwh * 1.2,
            "co2e_kg": energy_kwh * 0.5, "quality": {"sources": ["package-0"]}, **kw}


def test_each_array_task_and_het_component_gets_its_own_value() -> None:
    fixture = parse_jobs_json(SACCT_2205.read_text())
    jobs = [j for j in fixture if j.job_id in ("9", "10", "5", "11", "12")]
    slurm = FakeSlurm(jobs)
    values = {j.job_id: _measured(0.001 * int(j.job_id)) for j in jobs}
    last = max(j.end for j in jobs) + timedelta(seconds=60)
    report = Syncer(_api(values, last), slurm, cluster="c1", settle_s=5).run_once(
        job_ids=["5", "11", "12"], since=None)
    assert not report.errors and not report.pending
    assert set(slurm.comments) == {"5_0", "5_1", "5_2", "11+0", "11+1"}  # never "5" or "11"
    held = {j.job_id: j.admin_comment for j in slurm.jobs(job_ids=[j.job_id for j in jobs])}
    for job in jobs:
        assert held[job.job_id] == format_summary(values[job.job_id]), job.job_id
    assert len(set(held.values())) == 5


def test_wrong_summaries_are_repaired_and_a_second_pass_writes_nothing() -> None:
    wrong = "energy_kwh=0.000017925 gpu_kwh=0 facility_kwh=0.00002 co2e_kg=0.00001"
    jobs = [_job(job_id=i, array_job_id="40", array_task_id=t, admin_comment=wrong)
            for i, t in (("41", "0"), ("42", "1"), ("40", "2"))]
    values = {"41": _measured(0.0000067), "42": _measured(0.0000093), "40": wrong}
    values["40"] = _measured(0.000017925, facility_energy_kwh=0.00002, co2e_kg=0.00001)
    slurm = FakeSlurm(jobs)
    calls: list[str] = []
    api = _api(values, jobs[0].end + timedelta(seconds=60), calls)
    first = Syncer(api, slurm, settle_s=5).run_once(job_ids=[], since=None)
    assert set(first.comments) == {"41", "42"} and first.done == ["40"]
    assert set(slurm.comments) == {"40_0", "40_1"}
    assert not [c for c in calls if c.endswith("/events")]  # summarised jobs: no events again
    slurm.comments.clear()
    second = Syncer(api, slurm, settle_s=5).run_once(job_ids=[], since=None)
    assert not slurm.comments and sorted(second.done) == ["40", "41", "42"]


def test_unmeasured_jobs_say_so_instead_of_a_confident_zero() -> None:
    none_seen = {"energy_kwh": 0.0, "energy_uj": 0, "by_component": {},
                 "quality": {"sources": []}}
    flagged = {**_measured(0.0), "quality": {"sources": [], "unmeasured": True}}
    partly = {**_measured(0.5), "quality": {"sources": ["gpu0"], "unmeasured": True}}
    assert format_summary(none_seen) == format_summary(flagged) == "energy=unmeasured"
    assert format_summary(partly) == "energy=unmeasured"
    assert format_summary({"energy_kwh": 0, "by_component": {}}).startswith("energy_kwh=0 ")
    assert format_summary({**_measured(0.0), "quality": {"sources": ["package-0"]}}) \
        .startswith("energy_kwh=0 ")
    earlier = "owner=ml energy_kwh=0 gpu_kwh=0 facility_kwh=0 co2e_kg=0"
    slurm = FakeSlurm([_job(admin_comment=earlier)])
    api = _api({"6": none_seen}, _job().end + timedelta(seconds=60))
    Syncer(api, slurm, settle_s=5).run_once(job_ids=["6"], since=None)
    assert slurm.comments == {"5_2": "owner=ml energy=unmeasured"}
    api = _api({"6": _measured(0.25)}, _job().end + timedelta(seconds=60))
    Syncer(api, slurm, settle_s=5).run_once(job_ids=["6"], since=None)
    assert slurm.comments["5_2"] == "owner=ml " + format_summary(_measured(0.25))


# -- other tools' content, byte for byte -------------------------------------------------------
def _jobstats_value(padded: bool) -> tuple[str, bytes]:
    """Return a real-looking ``JS1:`` value (jobstats: base64 of gzipped JSON) and its JSON."""
    for n in range(64):
        stats = {"nodes": {"della-l01g1": {
            "total_memory": 68719476736, "used_memory": 4204134400 + n, "total_time": 3561.2,
            "cpus": 8, "gpu_total_memory": {"0": 85899345920},
            "gpu_used_memory": {"0": 21474836480 + 7 * n}, "gpu_utilization": {"0": 97.3}}},
            "total_time": 3600, "gpus": 1}
        raw = json.dumps(stats, separators=(",", ":")).encode()
        value = base64.b64encode(gzip.compress(raw, mtime=0)).decode()
        if value.endswith("=") == padded and ("+" in value or "/" in value):
            return "JS1:" + value, raw
    raise AssertionError("no such value")  # pragma: no cover


FOREIGN = [
    "",
    "owner=ml ticket 42",
    "  two leading spaces\tand a tab\nsecond line\n",
    "trailing space ",
    "energy_kwh=soon not-ours",
    "a energy_kwh=1 gpu_kwh=2",  # a partial segment is not ours
]


@pytest.mark.parametrize("foreign", FOREIGN + ["js1-padded", "js1-unpadded"])
def test_merge_touches_only_our_segment(foreign: str) -> None:
    if foreign.startswith("js1-"):
        foreign, _ = _jobstats_value(padded=foreign == "js1-padded")
    one = format_summary(_measured(0.412))
    two = format_summary(_measured(0.000001234))
    merged = merge_admin_comment(foreign, one)
    assert merged == (f"{foreign} {one}" if foreign else one)
    assert strip_summary(merged) == foreign
    assert merge_admin_comment(merged, two) == merge_admin_comment(foreign, two)
    assert merge_admin_comment(merged, one) == merged
    assert has_summary(merged) and not has_summary(foreign)
    # Another tool appended after our segment: only ours (and the space before it) goes.
    assert strip_summary(f"{merged}\nlater note") == f"{foreign}\nlater note"


def test_jobstats_value_survives_and_still_decodes() -> None:
    padded, raw = _jobstats_value(padded=True)
    summary = format_summary(_measured(0.412))
    text, written = admin_comment_text(padded, summary)
    assert written and text == f"{padded} {summary}"
    assert jobstats_payload(text) == raw
    assert gzip.decompress(base64.b64decode(text.split()[0][4:])) == raw
    # Unpadded, jobstats' decoder would read our letters as gzip data: withheld.
    unpadded, raw = _jobstats_value(padded=False)
    assert jobstats_payload(f"{unpadded} {summary}") is None  # what the old merge did
    assert admin_comment_text(unpadded, summary) == (unpadded, False)
    # ... and a summary written there earlier is taken out again: jobstats reads it again.
    repaired, written = admin_comment_text(f"{unpadded} {summary}", summary)
    assert (repaired, written) == (unpadded, False) and jobstats_payload(repaired) == raw


def test_sync_keeps_jobstats_bytes() -> None:
    padded, raw = _jobstats_value(padded=True)
    unpadded, _ = _jobstats_value(padded=False)
    jobs = [_job(job_id="6", admin_comment=padded),
            _job(job_id="7", array_job_id=None, array_task_id=None,
                 admin_comment=f"{unpadded} energy_kwh=0.1 gpu_kwh=0 facility_kwh=0.1 co2e_kg=0")]
    slurm = FakeSlurm(jobs)
    api = _api({"6": _measured(0.3), "7": _measured(0.3)}, jobs[0].end + timedelta(seconds=60))
    report = Syncer(api, slurm, settle_s=5).run_once(job_ids=[], since=None)
    assert slurm.comments == {"5_2": f"{padded} {format_summary(_measured(0.3))}",
                              "7": unpadded}
    assert report.withheld == ["7"]
    assert jobstats_payload(slurm.comments["5_2"]) == raw


class LowercasingSlurm(FakeSlurm):
    """sacctmgr as seen on 22.05: it stores AdminComment in lower case."""

    lowercases_admin_comment = True

    def _sacctmgr(self, argv: Sequence[str]) -> str:
        key, _, value = argv[6].partition("=")
        return super()._sacctmgr([*argv[:6], f"{key}={value.lower()}"])


def test_summary_never_writes_nan_or_negatives_and_quoted_content_is_left_alone() -> None:
    bad = {**_measured(0.1), "energy_kwh": float("nan"), "co2e_kg": -1.0}
    assert "nan" not in format_summary(bad) and "-" not in format_summary(bad)
    assert has_summary(format_summary(bad))  # recognised again at the next pass
    jobs = [_job(job_id="9", array_job_id=None, array_task_id=None,
                 admin_comment="note from 'ops'")]
    slurm = LowercasingSlurm(jobs)
    api = _api({"9": _measured(0.1)}, jobs[0].end + timedelta(seconds=60))
    report = Syncer(api, slurm, settle_s=5).run_once(job_ids=[], since=None)
    assert slurm.comments == {} and report.withheld == ["9"]


def test_het_component_without_offset_has_no_id_of_its_own() -> None:
    job = _job(job_id="12", array_job_id=None, array_task_id=None, het_job_id="11")
    assert job.admin_comment_id is None
    assert _job(job_id="12", array_job_id=None, array_task_id=None, het_job_id="11",
                het_job_offset="1").admin_comment_id == "11+1"


def test_undecodable_sacct_output_does_not_stop_a_sync(tmp_path: Path) -> None:
    from jobenergy.cli.slurmclient import run_command

    script = tmp_path / "sacct"
    script.write_bytes(b"#!/bin/sh\nprintf 'name=\\377\\376ok'\n")
    script.chmod(0o755)
    assert run_command([str(script)]).endswith("ok")


def test_sync_never_lowercases_other_tools_content() -> None:
    padded, raw = _jobstats_value(padded=True)
    jobs = [_job(job_id="6", admin_comment=padded),
            _job(job_id="7", array_job_id=None, array_task_id=None, admin_comment="note x"),
            _job(job_id="8", array_job_id=None, array_task_id=None,
                 admin_comment="energy_kwh=9 gpu_kwh=9 facility_kwh=9 co2e_kg=9")]
    slurm = LowercasingSlurm(jobs)
    values = {"6": _measured(0.3), "7": _measured(0.2), "8": _measured(0.1)}
    api = _api(values, jobs[0].end + timedelta(seconds=60))
    report = Syncer(api, slurm, settle_s=5).run_once(job_ids=[], since=None)
    assert "5_2" not in slurm.comments and "6" in report.withheld  # JS1 left byte for byte
    assert slurm.comments == {"7": f"note x {format_summary(values['7'])}",
                              "8": format_summary(values["8"])}  # lower case: written


# -- factor changes reach AdminComment --------------------------------------------------------
T_OLD = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)


def _factor_api(values: dict[str, dict[str, Any]], changes: list[dict[str, Any]],
                calls: list[str]) -> httpx.Client:
    plain = _api(values, datetime(2030, 1, 1, tzinfo=UTC))

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        calls.append(f"{path}?{request.url.query.decode()}")
        if path == "/api/v1/clusters":
            revision = max([c["revision"] for c in changes], default=0)
            return httpx.Response(200, json=[{"cluster": "c1", "factors_revision": revision},
                                             {"cluster": "other", "factors_revision": 0}])
        if path == "/api/v1/clusters/c1/factor-changes":
            after = int(request.url.params["after"])
            newer = [c for c in changes if c["revision"] > after]
            return httpx.Response(200, json={"cluster": "c1", "changes": [
                {**c, "start": c["start"].isoformat(), "end": c["end"].isoformat()}
                for c in newer]})
        return plain.get(path, params=request.url.params)

    return httpx.Client(transport=httpx.MockTransport(handler), base_url="http://collector")


def test_factor_changes_rewrite_the_jobs_of_their_span() -> None:
    old = format_summary(_measured(1.0))
    span_job = _job(job_id="70", array_job_id=None, array_task_id=None, admin_comment=old,
                    start=T_OLD, end=T_OLD + timedelta(minutes=30))
    later = _job(job_id="71", array_job_id=None, array_task_id=None, admin_comment=old,
                 start=T_OLD + timedelta(days=30), end=T_OLD + timedelta(days=30, hours=1))
    slurm = FakeSlurm([span_job, later])
    changes = [{"revision": 4, "start": T_OLD, "end": T_OLD + timedelta(hours=1)},
               {"revision": 9, "start": T_OLD, "end": T_OLD + timedelta(hours=2)}]
    values = {"70": _measured(1.0, facility_energy_kwh=1.5), "71": _measured(1.0)}
    calls: list[str] = []
    syncer = Syncer(_factor_api(values, changes, calls), slurm, settle_s=5)
    report, handled = syncer.follow_factor_changes({"c1": 0})
    assert handled == {"c1": 9} and not report.errors
    assert slurm.windows == [(T_OLD, T_OLD + timedelta(hours=2))]  # merged spans, one sacct
    assert slurm.comments == {"70": format_summary(values["70"])}  # 71 is outside the span
    assert not [c for c in calls if "/events" in c]
    # Nothing new: no sacct at all; a newer change is followed from the stored revision.
    slurm.windows.clear()
    assert syncer.follow_factor_changes(handled) == (report.__class__(), handled)
    assert not slurm.windows
    changes.append({"revision": 12, "start": T_OLD + timedelta(days=30),
                    "end": T_OLD + timedelta(days=30, hours=1)})
    values["71"] = _measured(1.0, co2e_kg=0.9)
    report, handled = syncer.follow_factor_changes(handled)
    assert handled == {"c1": 12} and set(report.comments) == {"71"}
    assert any("after=9" in c for c in calls)


def test_factor_changes_are_followed_again_after_an_error() -> None:
    job = _job(job_id="70", array_job_id=None, array_task_id=None,
               admin_comment=format_summary(_measured(1.0)), start=T_OLD,
               end=T_OLD + timedelta(minutes=30))
    slurm = FakeSlurm([job])
    slurm.fail = SlurmError("sacctmgr: slurmdbd down")
    changes = [{"revision": 3, "start": T_OLD, "end": T_OLD + timedelta(hours=1)}]
    api = _factor_api({"70": _measured(1.0, co2e_kg=2.0)}, changes, [])
    report, handled = Syncer(api, slurm, settle_s=5).follow_factor_changes({"c1": 1})
    assert handled == {"c1": 1} and report.errors
    slurm.fail = None
    report, handled = Syncer(api, slurm, settle_s=5).follow_factor_changes(handled)
    assert handled == {"c1": 3} and set(report.comments) == {"70"}


def test_merge_spans() -> None:
    t = T_OLD
    h = timedelta(hours=1)
    assert merge_spans([(t + 3 * h, t + 4 * h), (t, t + h), (t + h, t + 2 * h)]) == [
        (t, t + 2 * h), (t + 3 * h, t + 4 * h)]
    assert merge_spans([]) == []


def test_sync_state_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.json"
    assert load_state(path) == {}
    save_state(path, {"c1": 9, "c2": 1})
    assert load_state(path) == {"c1": 9, "c2": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left
    path.write_text("{not json")
    assert load_state(path) == {}
    assert resolve_state_path(path) == path
    unwritable = tmp_path / "missing" / "state.json"
    with caplog.at_level("WARNING"):
        assert resolve_state_path(None, default=unwritable) is None
    assert "not writable" in caplog.text
    assert resolve_state_path(None, default=path) == path
    with pytest.raises(OSError):
        save_state(unwritable, {"c1": 1})


# -- processes that stop when asked ------------------------------------------------------------
def _blocked_signals(pid: int) -> int | None:
    """Return a process's blocked-signal mask from /proc (None where there is no /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("SigBlk:")), 16)


def test_sync_started_with_blocked_signals_stops_on_sigterm(tmp_path: Path) -> None:
    """slurmctld starts EpilogSlurmctld (and so the sync) with these signals blocked."""
    held = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    (outbox / "1-job.json").write_text('{"n": 1}')
    with socket.create_server(("127.0.0.1", 0)) as collector:  # accepts, never answers
        collector.settimeout(60)
        port = collector.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobenergy.cli.slurm", "sync", "--url",
             f"http://127.0.0.1:{port}", "--jobs", "1", "--wait", "300", "--poll", "1",
             "--outbox", str(outbox)],
            env={**os.environ, "PATH": str(tmp_path / "no-slurm-here")},
            preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, held),  # noqa: PLW1509
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            conn, _ = collector.accept()  # the sync now waits for an answer (10 s timeout)
            with conn:
                mask = _blocked_signals(proc.pid)
                assert mask is None or not any(mask & (1 << (s - 1)) for s in held)
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=5) == -signal.SIGTERM
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stderr is not None
            proc.stderr.close()
    assert (outbox / "1-job.json").exists()  # undelivered: still kept


# -- the hook says when the sync cannot run ----------------------------------------------------
def _run_hook(tmp_path: Path, wrapper: str, sync_cmd: str,
              sync_from: str = "epilog_slurmctld", extra: str = ""
              ) -> tuple[subprocess.CompletedProcess, Path]:
    """Run a hook wrapper with JOBENERGY_SYNC_CMD; return the process and the syslog file."""
    conf = tmp_path / "hooks.env"
    conf.write_text(f"JOBENERGY_URL=http://127.0.0.1:9\nJOBENERGY_AUTH=none\n{extra}"
                    f"JOBENERGY_OUTBOX={tmp_path}/outbox\n"
                    f"JOBENERGY_GPU_MAP_DIR={tmp_path}/gpus\nJOBENERGY_GPU_MAP_LINGER_S=0\n"
                    f"JOBENERGY_SYNC_CMD={shlex.quote(sync_cmd)}\n"
                    f"JOBENERGY_SYNC_FROM={sync_from}\n")
    syslog = tmp_path / "syslog"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "JOBENERGY_HOOK_CONF": str(conf),
        "SLURM_JOB_ID": "42", "SLURM_CLUSTER_NAME": "c1", "SLURM_JOB_NODELIST": "n1",
        "SLURM_NODELIST": "n1", "SLURMD_NODENAME": "n1",
        # syslog stand-in: bash imports this exported function into the hook (PATH is reset).
        "BASH_FUNC_logger%%": f'() {{ printf "%s\\n" "$*" >> {shlex.quote(str(syslog))}; }}',
    }
    proc = subprocess.run(["bash", str(REPO / "slurm_plugins" / wrapper)], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    return proc, syslog


def test_the_sync_gets_the_hooks_transport_and_credential_settings(tmp_path: Path) -> None:
    """JOBENERGY_SYNC_CMD talks to the same collector: it runs with the hook's CA file,
    insecure switch, token file and MUNGE socket in its environment."""
    _need_bash_and_curl()
    seen = tmp_path / "sync-env"
    extra = (f"JOBENERGY_CA_FILE={tmp_path}/ca.pem\nJOBENERGY_TOKEN_FILE={tmp_path}/t\n"
             f"JOBENERGY_MUNGE_SOCKET={tmp_path}/m.sock\nJOBENERGY_ALLOW_INSECURE=1\n")
    proc, _syslog = _run_hook(tmp_path, "epilog_slurmctld.sh",
                              f"env > {seen}.tmp && mv {seen}.tmp {seen}", extra=extra)
    assert proc.returncode == 0, proc.stderr
    deadline = time.monotonic() + 30
    while not seen.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    env = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
    assert env["JOBENERGY_CA_FILE"] == f"{tmp_path}/ca.pem"
    assert env["JOBENERGY_TOKEN_FILE"] == f"{tmp_path}/t"
    assert env["JOBENERGY_MUNGE_SOCKET"] == f"{tmp_path}/m.sock"
    assert env["JOBENERGY_ALLOW_INSECURE"] == "1"


@pytest.mark.parametrize("program", ["missing", "not-executable"])
def test_epilog_slurmctld_fails_loudly_when_the_sync_cannot_run(tmp_path: Path,
                                                                program: str) -> None:
    _need_bash_and_curl()
    path = tmp_path / "opt" / "jobenergy"
    if program == "not-executable":
        path.parent.mkdir()
        path.write_text("#!/bin/sh\ntouch ran\n")
        path.chmod(0o644)
    cmd = f'{path} slurm sync --jobs "$SLURM_JOB_ID" --wait 60'
    proc, syslog = _run_hook(tmp_path, "epilog_slurmctld.sh", cmd)
    assert proc.returncode == 78 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "JOBENERGY_SYNC_CMD cannot run" in lines[0] and str(path) in lines[0]
    assert f"epilog_slurmctld job_id=42 JOBENERGY_SYNC_CMD cannot run: '{path}'" in (
        syslog.read_text())
    assert len(list((tmp_path / "outbox").glob("*.json"))) == 1  # the end event is kept


def test_node_epilog_logs_but_never_fails_when_the_sync_cannot_run(tmp_path: Path) -> None:
    _need_bash_and_curl()
    proc, syslog = _run_hook(tmp_path, "epilog.sh", "/nonexistent/jobenergy slurm sync",
                             sync_from="epilog")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")  # no drained node
    assert "JOBENERGY_SYNC_CMD cannot run: '/nonexistent/jobenergy'" in syslog.read_text()


@pytest.mark.parametrize("how", ["path", "env-prefix-and-quotes"])
def test_runnable_sync_command_starts_in_the_background(tmp_path: Path, how: str) -> None:
    _need_bash_and_curl()
    program = tmp_path / "bin" / "jobenergy"
    program.parent.mkdir()
    marker = tmp_path / "ran"
    program.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$*" > {marker}.tmp && mv {marker}.tmp {marker}\n')
    program.chmod(0o755)
    cmd = f'{program} slurm sync --jobs "$SLURM_JOB_ID"'
    if how == "env-prefix-and-quotes":
        cmd = f'JOBENERGY_URL=http://x "{program}" slurm sync --jobs "$SLURM_JOB_ID"'
    proc, syslog = _run_hook(tmp_path, "epilog_slurmctld.sh", cmd)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    for _ in range(400):  # detached: poll for it, bounded (20 s)
        if marker.exists():
            break
        time.sleep(0.05)
    assert marker.read_text() == "slurm sync --jobs 42\n"
    assert not syslog.exists() or "cannot run" not in syslog.read_text()


def test_periodic_follow_remembers_the_revision_in_the_state_file(tmp_path: Path) -> None:
    from jobenergy.cli.slurm import _follow_factor_changes

    job = _job(job_id="70", array_job_id=None, array_task_id=None,
               admin_comment=format_summary(_measured(1.0)), start=T_OLD,
               end=T_OLD + timedelta(minutes=30))
    slurm = FakeSlurm([job])
    changes = [{"revision": 5, "start": T_OLD, "end": T_OLD + timedelta(hours=1)}]
    syncer = Syncer(_factor_api({"70": _measured(1.0, co2e_kg=3.0)}, changes, []), slurm,
                    settle_s=5)
    state = tmp_path / "state.json"
    _follow_factor_changes(syncer, state)
    assert load_state(state) == {"c1": 5} and set(slurm.comments) == {"70"}
    slurm.windows.clear()
    _follow_factor_changes(syncer, state)
    assert not slurm.windows  # revision 5 was handled: no sacct


def test_hook_files_have_safe_modes_whatever_the_umask(tmp_path: Path) -> None:
    """Outbox 0700 with events 0600 (job names, comments, tags); the job map root's 0700 with
    files 0600 (the agent trusts them: nobody else may write them, nobody else needs them).
    Run with umask 000, the worst a site may set, over a map folder an older install made
    0755."""
    _need_bash_and_curl()
    import stat

    conf = tmp_path / "hooks.env"
    conf.write_text(f"JOBENERGY_URL=http://127.0.0.1:9\nJOBENERGY_AUTH=none\n"
                    f"JOBENERGY_OUTBOX={tmp_path}/outbox\n"
                    f"JOBENERGY_GPU_MAP_DIR={tmp_path}/gpus\nJOBENERGY_GPU_MAP_LINGER_S=30\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "JOBENERGY_HOOK_CONF": str(conf),
           "SLURM_JOB_ID": "42", "SLURMD_NODENAME": "n1", "SLURM_JOB_GPUS": "0",
           "SLURM_JOB_NAME": "secret-project", "SLURM_JOB_NODELIST": "n1"}
    (tmp_path / "gpus").mkdir(mode=0o755)
    for role in ("prolog", "epilog"):
        script = REPO / "slurm_plugins" / f"{role}.sh"
        subprocess.run(["bash", "-c", 'umask 000 && exec bash "$0"', str(script)], env=env,
                       capture_output=True, timeout=30, check=True)
        modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
                 for p in tmp_path.rglob("*") if p != conf}
        assert modes["gpus"] == 0o700 and modes["gpus/42"] == 0o600, modes
        assert modes["outbox"] == 0o700, modes
        events = {k: v for k, v in modes.items() if k.startswith("outbox/")}
        assert events and set(events.values()) == {0o600}, modes
    assert "end=" in (tmp_path / "gpus" / "42").read_text()
