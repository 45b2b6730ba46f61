"""Cgroup files kept open between samples (``agent/cgroupfs.py``: KeptFiles), on the kernel's
own cgroupfs: a kept file read again shows the value now, a removed cgroup is never read
through a kept file, not even when a folder of the same name is made again, and the resolver
keeps files only on cgroupfs (the simulated node's plain files are opened at every read).

The cgroups are real: folders made under this machine's cgroup v1 ``cpuacct`` mount (or the
cgroup2 one), a child process moved in to use CPU time. That needs root and a writable
cgroupfs; in CI a machine without them fails, naming what is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from jobenergy.agent.cgroupfs import LIVE_FILESYSTEMS, KeptFiles, mount_type, read_bytes, usage_v1
from jobenergy.agent.cgroups import STEPS_EVERY, SlurmCgroups

ROOT = Path("/sys/fs/cgroup")
NOT_FOUND = ("a writable cgroup v1 cpuacct or cgroup2 mount under /sys/fs/cgroup (run the "
             "tests as root on a host with cgroupfs mounted)")


@dataclass
class Hierarchy:
    mount: Path  # the controller's mount point
    usage_file: str  # cpuacct.usage (v1) or cpu.stat (v2)
    procs_file: str  # where a pid is written to move it in


def _hierarchies() -> list[Hierarchy]:
    found = []
    for mount, usage, procs in ((ROOT / "cpuacct", "cpuacct.usage", "tasks"),
                                (ROOT / "unified", "cpu.stat", "cgroup.procs"),
                                (ROOT, "cpu.stat", "cgroup.procs")):
        kind = mount_type(str(mount)) if mount.is_dir() else None
        if kind in LIVE_FILESYSTEMS and os.access(mount, os.W_OK) and (mount / procs).exists():
            found.append(Hierarchy(mount, usage, procs))
    return found


HIERARCHIES = _hierarchies()


@pytest.fixture(params=HIERARCHIES or [None],
                ids=[h.usage_file for h in HIERARCHIES] or ["none"])
def hierarchy(request: pytest.FixtureRequest) -> Hierarchy:
    """Each cgroupfs hierarchy of this machine (v1 cpuacct and cgroup2 on a hybrid host)."""
    if request.param is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"missing {NOT_FOUND}")
        pytest.skip(f"needs {NOT_FOUND}")
    return request.param


def _remove(path: Path) -> None:
    """Remove a cgroup tree (cgroupfs folders go with rmdir, deepest first)."""
    if not path.exists():
        return
    for folder in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        folder.rmdir()
    path.rmdir()


@pytest.fixture
def cgroup_dir(hierarchy: Hierarchy) -> Iterator[Path]:
    top = hierarchy.mount / f"jobenergy-test-{os.getpid()}"
    _remove(top)
    top.mkdir()
    try:
        yield top
    finally:
        _remove(top)


def burn_in(hierarchy: Hierarchy, cgroup: Path, loops: int = 2_000_000) -> None:
    """Run a child that uses CPU time inside ``cgroup``, and wait until it has exited."""
    child = subprocess.Popen(
        [sys.executable, "-c", f"import sys; sys.stdin.read(1); sum(range({loops}))"],
        stdin=subprocess.PIPE,
    )
    try:
        (cgroup / hierarchy.procs_file).write_text(f"{child.pid}\n")
        assert child.stdin is not None
        child.stdin.write(b"g")
        child.stdin.close()
    finally:
        assert child.wait(timeout=60) == 0


def _dev(path: Path) -> str:
    dev = os.stat(path).st_dev
    return f"{os.major(dev)}:{os.minor(dev)}"


def test_mount_type_is_the_filesystem_serving_the_path(tmp_path: Path) -> None:
    """By the path's own device, not by mount-point names: a filesystem mounted over a
    cgroup mount point (or a path whose name a cgroup mount point prefixes) is what it is."""
    mountinfo = tmp_path / "mountinfo"
    here = _dev(tmp_path)
    mountinfo.write_text(
        "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
        f"30 25 0:9999 / {tmp_path} rw shared:9 - cgroup cgroup rw,cpuacct\n"
        f"31 30 {here} / {tmp_path}/over\\040it rw - tmpfs tmpfs rw\n"
        "garbage line without a separator\n"
    )
    assert mount_type(str(tmp_path), str(mountinfo)) == "tmpfs"
    mountinfo.write_text(f"31 30 {here} / /elsewhere rw - cgroup2 cgroup2 rw\n")
    assert mount_type(str(tmp_path), str(mountinfo)) == "cgroup2"
    assert mount_type(str(tmp_path), str(tmp_path / "absent")) is None
    assert mount_type(str(tmp_path / "absent"), str(mountinfo)) is None
    assert mount_type(str(tmp_path)) not in LIVE_FILESYSTEMS  # the real one: a plain folder


def test_a_kept_file_shows_the_value_now(hierarchy: Hierarchy, cgroup_dir: Path) -> None:
    step = cgroup_dir / "step_batch"
    step.mkdir()
    files = KeptFiles()
    path = str(step / hierarchy.usage_file)
    before = files.read(path)
    assert len(files) == 1 and before == read_bytes(path)
    burn_in(hierarchy, step)
    after = files.read(path)  # the same open file, read again at offset 0
    assert len(files) == 1
    assert after == read_bytes(path) and after != before
    if hierarchy.usage_file == "cpuacct.usage":
        assert usage_v1(str(step), files.read) == int(after) > int(before)


def test_a_removed_cgroup_is_never_read_through_a_kept_file(
    hierarchy: Hierarchy, cgroup_dir: Path
) -> None:
    step = cgroup_dir / "step_0"
    step.mkdir()
    path = str(step / hierarchy.usage_file)
    files = KeptFiles()
    burn_in(hierarchy, step)
    used = files.read(path)
    step.rmdir()
    with pytest.raises(FileNotFoundError):
        files.read(path)  # the kept file fails (ENODEV); the path is looked up: gone
    assert len(files) == 0
    files.read(str(cgroup_dir / hierarchy.usage_file))  # keep one more, to see it re-kept
    step.mkdir()  # a folder of the same name again (a requeued job's)
    fresh = files.read(path)
    assert fresh == read_bytes(path) and fresh != used
    assert len(files) == 2


def test_the_limit_and_sweep(hierarchy: Hierarchy, cgroup_dir: Path) -> None:
    paths = []
    for name in ("job_1", "job_2", "job_3"):
        (cgroup_dir / name).mkdir()
        paths.append(str(cgroup_dir / name / hierarchy.usage_file))
    files = KeptFiles(limit=2)
    assert [files.read(p) for p in paths] == [read_bytes(p) for p in paths]
    assert len(files) == 2  # the third read as read_bytes does, not kept
    files.sweep()
    assert len(files) == 2  # both read since
    files.read(paths[1])
    files.sweep()
    assert len(files) == 1  # job_1 not read since the last sweep: closed
    assert files.read(paths[0]) == read_bytes(paths[0])  # and kept again when read
    files.close()
    assert len(files) == 0


@pytest.fixture
def v1_slurm_root() -> Iterator[tuple[Hierarchy, str, Path]]:
    """A Slurm v1 root of its own on this machine's cpuacct mount: (hierarchy, node name,
    ``cpuacct/slurm_<node>``), removed afterwards."""
    hierarchies = [h for h in HIERARCHIES if h.usage_file == "cpuacct.usage"]
    if not hierarchies:
        if os.environ.get("CI") == "true":
            pytest.fail("missing a writable cgroup v1 cpuacct mount at /sys/fs/cgroup/cpuacct "
                        "(the recipe's hybrid layout, as the live Slurm tests use)")
        pytest.skip("needs a writable cgroup v1 cpuacct mount")
    node = f"jetest{os.getpid()}"
    slurm = ROOT / "cpuacct" / f"slurm_{node}"
    _remove(slurm)
    try:
        yield hierarchies[0], node, slurm
    finally:
        _remove(slurm)


def test_the_resolver_keeps_files_only_on_cgroupfs(
    tmp_path: Path, v1_slurm_root: tuple[Hierarchy, str, Path]
) -> None:
    """The resolver over real v1 job folders keeps their files and closes them when the job
    folder goes; over plain files (the simulated node) it keeps none."""
    hierarchy, node, slurm = v1_slurm_root
    job = slurm / "uid_0" / "job_7"
    (job / "step_batch").mkdir(parents=True)
    burn_in(hierarchy, job / "step_batch")
    cgroups = SlurmCgroups(ROOT, node=node, version=1)
    snap = cgroups.snapshot()
    assert set(snap.jobs) == {"7"}
    assert snap.jobs["7"].cpu_usage_ns == int(read_bytes(str(job / "cpuacct.usage")))
    assert snap.jobs["7"].step_usage_ns == {
        "batch": int(read_bytes(str(job / "step_batch" / "cpuacct.usage")))}
    assert snap.jobs["7"].cpu_usage_ns > 0
    assert cgroups._files is not None and len(cgroups._files) == 3  # root, job, step
    (job / "step_batch").rmdir()
    job.rmdir()
    assert cgroups.snapshot().jobs == {}
    assert len(cgroups._files) == 1  # the root's only
    cgroups.close()
    assert len(cgroups._files) == 0

    plain = tmp_path / "cpuacct" / "slurm" / "uid_0" / "job_8"
    plain.mkdir(parents=True)
    (plain.parent.parent / "cpuacct.usage").write_text("5\n")
    (plain / "cpuacct.usage").write_text("5\n")
    cgroups = SlurmCgroups(tmp_path, version=1)
    assert cgroups.snapshot().jobs["8"].cpu_usage_ns == 5
    assert cgroups._files is None
    shutil.rmtree(tmp_path / "cpuacct")


def test_an_ended_step_no_longer_listed_is_not_kept_open(
    v1_slurm_root: tuple[Hierarchy, str, Path],
) -> None:
    """A step that ends just before its job's steps are listed again is never read again:
    its kept file is closed all the same (an ``srun`` loop in a long job would otherwise hold
    one descriptor per step until the job ends)."""
    _, node, slurm = v1_slurm_root
    job = slurm / "uid_0" / "job_5"
    (job / "step_batch").mkdir(parents=True)
    (job / "step_0").mkdir()
    cgroups = SlurmCgroups(ROOT, node=node, version=1)
    for _ in range(STEPS_EVERY):  # the first lists the steps, the next STEPS_EVERY - 1 not
        assert set(cgroups.snapshot().jobs["5"].steps) == {"batch", "0"}
    (job / "step_0").rmdir()  # ended: the next snapshot lists the steps again
    for _ in range(2 * STEPS_EVERY):
        assert set(cgroups.snapshot().jobs["5"].steps) == {"batch"}
    assert cgroups._files is not None
    assert len(cgroups._files) == 3  # the root's, the job's and step_batch's
