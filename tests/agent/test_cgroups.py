"""Slurm cgroup resolver against treydock/cgroup_exporter's trees and small trees per test."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from jobenergy.agent.cgroupfs import (
    job_id_from_pid,
    job_id_from_proc_cgroup,
    job_of_proc_cgroup,
    job_owner_uid,
    parse_cpu_list,
    parse_usage_usec,
)
from jobenergy.agent.cgroups import SlurmCgroups
from jobenergy.agent.readings import CgroupSnapshot
from jobenergy.core.errors import ConfigError, SensorError

FIXTURE = Path(__file__).parents[1] / "fixtures" / "cgroups" / "treydock-cgroup_exporter"
SLUID = "s0123456789abc"  # "s" + 13 lowercase base32 characters (Slurm >= 26.05)
BOGUS_JOB_NAMES = ["job_abc", "job_", "job_12x", "job_S0123456789ABC", "job_s0123456789ab"]


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def make_v1_job(tmp_path: Path):
    """Factory: make_v1_job("42", usage_ns=..., cpus="0-3") builds a cgroup v1 job."""

    def make(
        job: str,
        usage_ns: int | str = 0,
        cpus: str | None = "0-3",
        uid: int = 1000,
        top: str = "slurm",
        steps: tuple[str, ...] = ("batch", "extern"),
        root_usage_ns: int = 10**12,
    ) -> Path:
        slurm = tmp_path / "cpuacct" / top
        write(slurm / "cpuacct.usage", f"{root_usage_ns}\n")
        job_dir = slurm / f"uid_{uid}" / f"job_{job}"
        write(job_dir / "cpuacct.usage", f"{usage_ns}\n")
        for step in steps:
            write(job_dir / f"step_{step}" / "task_0" / "cpuacct.usage", "0\n")
        if cpus is not None:
            write(tmp_path / "cpuset" / top / f"uid_{uid}" / f"job_{job}" / "cpuset.cpus", cpus)
        return job_dir

    return make


@pytest.fixture
def make_v2_job(tmp_path: Path):
    """Factory: make_v2_job("42", usage_usec=..., cpus="0-3") builds a cgroup v2 job."""
    write(tmp_path / "cgroup.controllers", "cpuset cpu io memory pids\n")

    def make(
        job: str,
        usage_usec: int | str = 0,
        cpus: str | None = "0-3",
        scope: str = "slurmstepd.scope",
        steps: tuple[str, ...] = ("0", "extern"),
        root_usage_usec: int = 10**9,
    ) -> Path:
        scope_dir = tmp_path / "system.slice" / scope
        write(scope_dir / "cpu.stat", f"usage_usec {root_usage_usec}\nuser_usec 1\n")
        job_dir = scope_dir / f"job_{job}"
        write(job_dir / "cpu.stat", f"usage_usec {usage_usec}\nuser_usec 0\nsystem_usec 0\n")
        for step in steps:
            write(job_dir / f"step_{step}" / "user" / "task_0" / "cpu.stat", "usage_usec 0\n")
        if cpus is not None:
            write(job_dir / "cpuset.cpus.effective", cpus)
        return job_dir

    return make


# -- golden fixture: cgroup v1 -------------------------------------------------------------


def test_fixture_v1_jobs() -> None:
    cgroups = SlurmCgroups(FIXTURE)
    snap = cgroups.snapshot()

    assert cgroups.version == 1
    assert snap.version == 1
    assert sorted(snap.jobs) == ["10", "11"]
    job = snap.jobs["11"]
    assert job.job_id == "11"
    assert job.uid == 20821
    assert job.cpu_usage_ns == 33146523011972
    assert job.cpus == frozenset(range(40))  # cpuset.cpus "0-39"
    assert job.steps == ("0", "batch", "extern")
    assert job.path == str(FIXTURE / "cpuacct" / "slurm" / "uid_20821" / "job_11")
    assert snap.jobs["10"].cpu_usage_ns == 7710215
    assert snap.jobs["10"].cpus == frozenset({0, 1})
    assert snap.root_usage_ns == 65297599
    assert snap.other_usage_ns == 0


# -- golden fixture: cgroup v2 (same root holds both; v2 forced) ---------------------------


def test_fixture_v2_jobs() -> None:
    snap = SlurmCgroups(FIXTURE, version=2).snapshot()

    assert snap.version == 2
    assert list(snap.jobs) == ["4"]
    job = snap.jobs["4"]
    assert job.cpu_usage_ns == 126686 * 1000  # usage_usec 126686
    assert job.uid is None
    assert job.cpus == frozenset({0})  # cpuset.cpus.effective "0"
    assert job.steps == ("0", "extern")
    assert snap.root_usage_ns == 503701 * 1000  # the scope's cpu.stat
    assert snap.other_usage_ns == 20081 * 1000  # "system": slurmstepd itself


def test_fixture_proc_cgroup_files() -> None:
    proc = FIXTURE / "proc"
    assert job_id_from_pid(proc, 49276) == "4"
    assert job_id_from_pid(proc, 43310) is None  # slurmstepd's own "system" cgroup
    assert job_id_from_pid(proc, 67998) is None  # a login session
    assert job_id_from_pid(proc, 999999) is None  # exited


# -- /proc/<pid>/cgroup --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "job_id"),
    [
        (
            "12:memory:/slurm/uid_1000/job_42/step_0/task_0\n"
            "4:cpuacct,cpu:/slurm/uid_1000/job_42/step_0/task_0\n"
            "1:name=systemd:/system.slice/slurmd.service\n",
            "42",
        ),
        ("3:freezer:/slurm_n1/uid_0/job_7/step_batch\n", "7"),
        ("0::/system.slice/slurmstepd.scope/job_4/step_0/user/task_0\n", "4"),
        ("0::/system.slice/n2_slurmstepd.scope/job_9/step_extern/slurm\n", "9"),
        (f"0::/system.slice/slurmstepd.scope/job_{SLUID}/step_0/user/task_0\n", SLUID),
        # only the devices controller shows the job: any controller line will do
        ("11:devices:/slurm/uid_5/job_77/step_0\n10:cpuset:/\n", "77"),
    ],
)
def test_job_id_from_proc_cgroup(text: str, job_id: str) -> None:
    assert job_id_from_proc_cgroup(text) == job_id


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0::/system.slice/slurmstepd.scope/system\n",
        "0::/user.slice/user-20821.slice/session-157.scope\n",
        "0::/system.slice/slurmstepd.scope/job_12x/step_0\n",
        "0::/system.slice/slurmstepd.scope/job_/step_0\n",
        "0::/user.slice/job_4/step_0\n",  # not under Slurm's root
        "4:cpuacct:/docker/uid_1/job_4\n",
        "garbage without colons\n",
        # Issue 9: a folder merely named job_N, where a user can make it, is not job N
        "0::/user.slice/user-1000.slice/user@1000.service/slurmstepd.scope/job_99/x\n",
        "0::/user.slice/user-1000.slice/user@1000.service/app.slice/slurmstepd.scope/job_99\n",
        "4:cpuacct:/user/slurm/uid_1000/job_99/step_0\n",
        "0::/system.slice/slurmstepd.scope/job_99\x00/step_0\n",
        # only \n ends a line: \x1c, \x0b, \x0c in a folder name do not make a new one
        "0::/user.slice/user-1000.slice/a\x1c0::/system.slice/slurmstepd.scope/job_99\n",
        "0::/user.slice/user-1000.slice/a\x0b4:cpuacct:/slurm/uid_1/job_99\n",
        # a process in two jobs at once (v1 controllers disagree) is in none
        "4:cpuacct:/slurm/uid_1/job_5/step_0\n3:freezer:/slurm/uid_1/job_6/step_0\n",
    ],
)
def test_job_id_from_proc_cgroup_none(text: str) -> None:
    assert job_id_from_proc_cgroup(text) is None


@pytest.mark.parametrize(
    ("text", "job_id", "uid"),
    [
        ("0::/system.slice/slurmstepd.scope/job_5/step_0/user/task_0/job_99\n", "5", None),
        ("0::/system.slice/slurmstepd.scope/job_5/step_0/user/slurmstepd.scope/job_99\n", "5",
         None),
        ("4:cpuacct:/slurm_n1/uid_1000/job_5/step_0/task_0/slurm/uid_0/job_99\n", "5", 1000),
        ("0::/system.slice/slurmd.service\n4:cpuacct:/slurm/uid_7/job_5/step_0\n", "5", 7),
    ],
)
def test_job_comes_from_the_first_job_folder_under_slurms_root(
    text: str, job_id: str, uid: int | None
) -> None:
    job = job_of_proc_cgroup(text)
    assert job is not None and (job.job_id, job.uid) == (job_id, uid)


def test_a_newline_in_a_cgroup_name_cannot_forge_a_job_line(tmp_path: Path) -> None:
    # The kernel prints cgroup names raw: a folder "a\n0::/system.slice/..." in a subtree
    # delegated to a user (user@.service) adds a line. Every process has one line per
    # hierarchy (as many as the agent's own /proc/self/cgroup): more is forged.
    forged = "0::/user.slice/user-1000.slice/user@1000.service/a\n"
    forged += "0::/system.slice/slurmstepd.scope/job_99/step_0/user/task_0\n"
    assert job_id_from_proc_cgroup(forged, lines=1) is None
    proc = tmp_path / "proc"
    write(proc / "self" / "cgroup", "0::/system.slice/jobenergy-agent.service\n")
    write(proc / "4242" / "cgroup", forged)
    write(proc / "4343" / "cgroup", forged.split("\n", 1)[1])
    assert job_id_from_pid(proc, 4242) is None
    assert job_id_from_pid(proc, 4343) == "99"  # the real line alone is job 99


def test_v2_job_owner_is_the_owner_of_the_steps_user_folder(tmp_path: Path, make_v2_job) -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("chown needs root (CI runs as root)")
        pytest.skip("chown needs root")
    job_dir = make_v2_job("4")
    os.chown(job_dir / "step_0" / "user", 4321, 4321)
    in_task = job_of_proc_cgroup("0::/system.slice/slurmstepd.scope/job_4/step_0/user/task_0\n")
    stepd = job_of_proc_cgroup("0::/system.slice/slurmstepd.scope/job_4/step_0/slurm\n")
    v1 = job_of_proc_cgroup("4:cpuacct:/slurm/uid_1000/job_4/step_0\n")
    assert in_task is not None and stepd is not None and v1 is not None
    assert job_owner_uid(tmp_path, in_task) == 4321
    assert job_owner_uid(tmp_path, stepd) is None  # slurmstepd's own folder says nothing
    assert job_owner_uid(tmp_path, v1) == 1000


def _names(names: list[bytes]) -> list[str]:
    return [os.fsdecode(n) for n in names]


def test_cgroup_names_that_are_not_utf8_never_break_sampling(
    tmp_path: Path, make_v2_job, caplog: pytest.LogCaptureFixture
) -> None:
    job_dir = make_v2_job("4", usage_usec=5)
    scope = job_dir.parent
    for name in _names([b"job_\xff", b"\xfe\nother", b"job_4\xff"]):
        write(scope / name / "cpu.stat", "usage_usec 1\n")
    for name in _names([b"step_\xff", b"\xff"]):
        (job_dir / name).mkdir()
    with caplog.at_level("DEBUG", logger="jobenergy.agent"):
        snap = SlurmCgroups(tmp_path, version=2).snapshot()
    assert list(snap.jobs) == ["4"] and snap.jobs["4"].steps == ("0", "extern")
    assert snap.other_usage_ns == 3_000
    assert any("ignoring non-job" in r.getMessage() for r in caplog.records)
    for record in caplog.records:  # a log handler writing UTF-8 must be able to
        record.getMessage().encode("utf-8")
        assert "\n" not in record.getMessage()


def test_v1_cgroup_names_that_are_not_utf8_never_break_sampling(
    tmp_path: Path, make_v1_job, caplog: pytest.LogCaptureFixture
) -> None:
    job_dir = make_v1_job("7")
    (job_dir.parent / os.fsdecode(b"job_\xff")).mkdir()
    (job_dir.parent.parent / os.fsdecode(b"uid_\xff")).mkdir()
    with caplog.at_level("DEBUG", logger="jobenergy.agent"):
        snap = SlurmCgroups(tmp_path, version=1).snapshot()
    assert list(snap.jobs) == ["7"]
    for record in caplog.records:
        record.getMessage().encode("utf-8")


# -- parsers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("0-3,8,10-11\n", {0, 1, 2, 3, 8, 10, 11}),
        ("5", {5}),
        ("", set()),
        ("\n", set()),
    ],
)
def test_parse_cpu_list(text: str, cpus: set[int]) -> None:
    assert parse_cpu_list(text) == frozenset(cpus)


@pytest.mark.parametrize("text", ["a", "0-", "-3", "3-1", "0,,1", "0-3\n4"])
def test_parse_cpu_list_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cpu_list(text)


def test_parse_usage_usec() -> None:
    assert parse_usage_usec("usage_usec 126686\nuser_usec 49043\n") == 126686
    with pytest.raises(ValueError, match="no usage_usec"):
        parse_usage_usec("user_usec 1\n")
    with pytest.raises(ValueError, match="usage_usec"):
        parse_usage_usec("usage_usec -5\n")


# -- job folder names ----------------------------------------------------------------------


def test_v1_sluid_and_bogus_job_names(tmp_path: Path, make_v1_job) -> None:
    make_v1_job("12", usage_ns=5)
    make_v1_job(SLUID, usage_ns=6)
    for name in BOGUS_JOB_NAMES:
        make_v1_job(name.removeprefix("job_"), usage_ns=999)

    snap = SlurmCgroups(tmp_path).snapshot()

    assert {k: j.cpu_usage_ns for k, j in snap.jobs.items()} == {"12": 5, SLUID: 6}


def test_v2_sluid_and_bogus_job_names(tmp_path: Path, make_v2_job) -> None:
    make_v2_job("12", usage_usec=5)
    make_v2_job(SLUID, usage_usec=6)
    for name in BOGUS_JOB_NAMES:
        make_v2_job(name.removeprefix("job_"), usage_usec=1)

    snap = SlurmCgroups(tmp_path).snapshot()

    assert snap.version == 2
    assert {k: j.cpu_usage_ns for k, j in snap.jobs.items()} == {"12": 5000, SLUID: 6000}
    # not a job, so its CPU time is the scope's "other" time rather than a vanished job's
    assert snap.other_usage_ns == len(BOGUS_JOB_NAMES) * 1000


# -- several slurmd per host ---------------------------------------------------------------


def test_v1_node_picks_its_slurm_folder(tmp_path: Path, make_v1_job) -> None:
    make_v1_job("1", usage_ns=100, top="slurm_n1", root_usage_ns=1000)
    make_v1_job("2", usage_ns=200, top="slurm_n2", root_usage_ns=2000, cpus="4-5")

    snap = SlurmCgroups(tmp_path, node="n2").snapshot()

    assert list(snap.jobs) == ["2"]
    assert snap.jobs["2"].cpus == frozenset({4, 5})  # from cpuset/slurm_n2
    assert snap.root_usage_ns == 2000
    assert list(SlurmCgroups(tmp_path, node="n1").snapshot().jobs) == ["1"]


def test_v1_several_slurm_folders_without_node_is_a_config_error(
    tmp_path: Path, make_v1_job
) -> None:
    make_v1_job("1", top="slurm_n1")
    make_v1_job("2", top="slurm_n2")

    with pytest.raises(ConfigError, match="slurm_n1, slurm_n2.*node name"):
        SlurmCgroups(tmp_path).snapshot()


def test_v1_single_node_folder_used_without_node(tmp_path: Path, make_v1_job) -> None:
    make_v1_job("3", top="slurm_debian1")
    assert list(SlurmCgroups(tmp_path).snapshot().jobs) == ["3"]


def test_v1_node_falls_back_to_plain_slurm(tmp_path: Path, make_v1_job) -> None:
    make_v1_job("5")
    assert list(SlurmCgroups(tmp_path, node="n9").snapshot().jobs) == ["5"]


def test_v2_node_scope(tmp_path: Path, make_v2_job) -> None:
    make_v2_job("1", usage_usec=1, scope="n1_slurmstepd.scope", root_usage_usec=10)
    make_v2_job("2", usage_usec=2, scope="n2_slurmstepd.scope", root_usage_usec=20)

    snap = SlurmCgroups(tmp_path, node="n1").snapshot()

    assert list(snap.jobs) == ["1"]
    assert snap.root_usage_ns == 10_000
    with pytest.raises(ConfigError, match="n1_slurmstepd.scope, n2_slurmstepd.scope"):
        SlurmCgroups(tmp_path).snapshot()


# -- absent roots, races -------------------------------------------------------------------


def test_missing_cgroup_root_is_an_empty_snapshot(tmp_path: Path) -> None:
    assert SlurmCgroups(tmp_path / "nope").snapshot() == CgroupSnapshot(version=2)


def test_no_slurm_folder_yet_is_an_empty_snapshot(tmp_path: Path) -> None:
    (tmp_path / "cpuacct").mkdir()
    snap = SlurmCgroups(tmp_path).snapshot()
    assert snap == CgroupSnapshot(version=1, jobs={}, root_usage_ns=None)


def test_slurm_root_appearing_later_is_found(tmp_path: Path, make_v1_job) -> None:
    (tmp_path / "cpuacct").mkdir()
    cgroups = SlurmCgroups(tmp_path)
    assert cgroups.snapshot().jobs == {}

    make_v1_job("8")
    assert list(cgroups.snapshot().jobs) == ["8"]


def test_slurm_root_removed_after_use_is_an_empty_snapshot(tmp_path: Path, make_v1_job) -> None:
    make_v1_job("8")
    cgroups = SlurmCgroups(tmp_path)
    assert list(cgroups.snapshot().jobs) == ["8"]
    shutil.rmtree(tmp_path / "cpuacct" / "slurm")

    assert cgroups.snapshot() == CgroupSnapshot(version=1)


def test_v1_job_gone_between_listing_and_reading_is_skipped(tmp_path: Path, make_v1_job) -> None:
    make_v1_job("1", usage_ns=10)
    gone = make_v1_job("2", usage_ns=20)
    (gone / "cpuacct.usage").unlink()  # listed, then removed before its usage was read
    dangling = tmp_path / "cpuacct" / "slurm" / "uid_1000" / "job_3"
    dangling.symlink_to(tmp_path / "removed")  # listed, then the folder itself is gone

    snap = SlurmCgroups(tmp_path).snapshot()

    assert list(snap.jobs) == ["1"]


def test_v2_job_gone_between_listing_and_reading_is_skipped(tmp_path: Path, make_v2_job) -> None:
    make_v2_job("1", usage_usec=10)
    gone = make_v2_job("2", usage_usec=20)
    (gone / "cpu.stat").unlink()

    assert list(SlurmCgroups(tmp_path).snapshot().jobs) == ["1"]


def test_v1_job_without_cpuset_has_no_cpus(tmp_path: Path, make_v1_job) -> None:
    make_v1_job("1", cpus=None)  # ConstrainCores=no: no job folder under cpuset
    assert SlurmCgroups(tmp_path).snapshot().jobs["1"].cpus == frozenset()


def test_v2_cpuset_falls_back_to_cpuset_cpus(tmp_path: Path, make_v2_job) -> None:
    job = make_v2_job("1", cpus=None)
    write(job / "cpuset.cpus", "2-3\n")
    assert SlurmCgroups(tmp_path).snapshot().jobs["1"].cpus == frozenset({2, 3})


def test_new_cgroup_cpuset_is_not_frozen_before_slurm_writes_it(
    tmp_path: Path, make_v2_job
) -> None:
    job = make_v2_job("1", cpus="0-63")  # a fresh v2 cgroup shows its parent's CPUs
    cgroups = SlurmCgroups(tmp_path)
    assert len(cgroups.snapshot().jobs["1"].cpus) == 64

    write(job / "cpuset.cpus.effective", "4-7\n")
    assert cgroups.snapshot().jobs["1"].cpus == frozenset({4, 5, 6, 7})
    assert cgroups.snapshot().jobs["1"].cpus == frozenset({4, 5, 6, 7})


def test_requeued_job_gets_its_new_cpuset(tmp_path: Path, make_v1_job) -> None:
    make_v1_job("1", cpus="0-1")
    cgroups = SlurmCgroups(tmp_path)
    for _ in range(3):
        assert cgroups.snapshot().jobs["1"].cpus == frozenset({0, 1})
    shutil.rmtree(tmp_path / "cpuacct" / "slurm" / "uid_1000" / "job_1")
    assert cgroups.snapshot().jobs == {}

    make_v1_job("1", cpus="6-7")
    assert cgroups.snapshot().jobs["1"].cpus == frozenset({6, 7})


def test_jobs_created_and_removed_concurrently_never_fail_a_snapshot(
    tmp_path: Path, make_v1_job
) -> None:
    make_v1_job("1", usage_ns=1)
    uid_dirs = {c: tmp_path / c / "slurm" / "uid_1000" for c in ("cpuacct", "cpuset")}
    staging = tmp_path / "staging"
    stop = threading.Event()
    errors: list[BaseException] = []

    def create(j: int) -> None:
        # Built aside and renamed in: like the kernel, a reader never sees a half-written file.
        for controller, name, text in (
            ("cpuset", "cpuset.cpus", "0"),
            ("cpuacct", "cpuacct.usage", f"{j}"),
        ):
            write(staging / f"job_{j}" / name, text)
            write(staging / f"job_{j}" / "step_0" / "task_0" / name, text)
            os.rename(staging / f"job_{j}", uid_dirs[controller] / f"job_{j}")

    def churn() -> None:
        try:
            while not stop.is_set():
                for j in range(2, 6):
                    create(j)
                for j in range(2, 6):
                    for uid_dir in uid_dirs.values():
                        shutil.rmtree(uid_dir / f"job_{j}")
        except BaseException as err:  # reported by the assertion below
            errors.append(err)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        cgroups = SlurmCgroups(tmp_path)
        seen: set[str] = set()
        for _ in range(300):
            snap = cgroups.snapshot()
            assert snap.jobs["1"].cpu_usage_ns == 1
            for job_id, job in snap.jobs.items():
                assert job.cpu_usage_ns == int(job_id)
            seen.update(snap.jobs)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert len(seen) > 1  # the churning jobs were seen at least once


# -- failures ------------------------------------------------------------------------------


def test_garbage_usage_raises_naming_the_file(tmp_path: Path, make_v1_job) -> None:
    make_v1_job("1", usage_ns="12abc")
    with pytest.raises(SensorError, match=r"garbage in .*job_1/cpuacct.usage"):
        SlurmCgroups(tmp_path).snapshot()


def test_garbage_cpuset_raises_naming_the_file(tmp_path: Path, make_v2_job) -> None:
    make_v2_job("1", cpus="zero")
    with pytest.raises(SensorError, match=r"garbage in .*job_1/cpuset.cpus.effective"):
        SlurmCgroups(tmp_path).snapshot()


def test_bad_version_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="version"):
        SlurmCgroups(tmp_path, version=3)


# -- per-step CPU time ----------------------------------------------------------------------


def test_fixture_v1_step_usage() -> None:
    job = SlurmCgroups(FIXTURE).snapshot().jobs["11"]
    steps = FIXTURE / "cpuacct" / "slurm" / "uid_20821" / "job_11"
    assert job.step_usage_ns == {
        name: int((steps / f"step_{name}" / "cpuacct.usage").read_text()) for name in job.steps
    }
    assert job.step_usage_ns == {"0": 33145604864551, "batch": 838305177, "extern": 0}


def test_fixture_v2_step_usage() -> None:
    job = SlurmCgroups(FIXTURE, version=2).snapshot().jobs["4"]
    assert job.step_usage_ns == {"0": 131721 * 1000, "extern": 6775 * 1000}  # usage_usec


def test_step_usage_read_every_snapshot_and_vanished_step_skipped(make_v1_job) -> None:
    job_dir = make_v1_job("42", usage_ns=5000, steps=("0", "batch", "extern"))
    for step, ns in (("0", 3000), ("batch", 1500), ("extern", 0)):
        write(job_dir / f"step_{step}" / "cpuacct.usage", f"{ns}\n")
    cgroups = SlurmCgroups(job_dir.parents[2].parent)
    assert cgroups.snapshot().jobs["42"].step_usage_ns == {"0": 3000, "batch": 1500, "extern": 0}

    write(job_dir / "step_0" / "cpuacct.usage", "4000\n")  # names cached, usage read again
    assert cgroups.snapshot().jobs["42"].step_usage_ns["0"] == 4000

    shutil.rmtree(job_dir / "step_0")  # the step ended: skipped, not an error
    snap = cgroups.snapshot().jobs["42"]
    assert snap.step_usage_ns == {"batch": 1500, "extern": 0}
    assert cgroups.snapshot().jobs["42"].steps == ("batch", "extern")  # listed again


def test_v2_step_usage_vanished_step_skipped(make_v2_job) -> None:
    job_dir = make_v2_job("42", usage_usec=10, steps=("0", "extern"))
    write(job_dir / "step_0" / "cpu.stat", "usage_usec 7\nuser_usec 7\n")
    write(job_dir / "step_extern" / "cpu.stat", "usage_usec 0\n")
    cgroups = SlurmCgroups(job_dir.parents[2], version=2)
    assert cgroups.snapshot().jobs["42"].step_usage_ns == {"0": 7000, "extern": 0}
    shutil.rmtree(job_dir / "step_0")
    assert cgroups.snapshot().jobs["42"].step_usage_ns == {"extern": 0}


def test_only_slurm_step_folders_are_read_and_at_most_max_steps(tmp_path: Path,
                                                                make_v1_job) -> None:
    # A job can make folders inside a cgroup delegated to it: names Slurm never makes are
    # ignored, and however many it makes, a snapshot reads at most MAX_STEPS of them.
    from jobenergy.agent.cgroupfs import MAX_STEPS

    job_dir = make_v1_job("7", steps=("batch", "extern", "0", "3+1"))
    for name in ("step_../../x", "step_evil", "step_", "stepX_1"):
        (job_dir / name.replace("/", "_")).mkdir()
    for i in range(10, 10 + 3 * MAX_STEPS):
        write(job_dir / f"step_{i}" / "cpuacct.usage", "1\n")
    steps = SlurmCgroups(tmp_path).snapshot().jobs["7"].steps
    assert len(steps) == MAX_STEPS
    assert set(steps) <= {"batch", "extern", "0", "3+1"} | {str(i) for i in range(10, 400)}
    assert not any("evil" in s or s == "" for s in steps)
