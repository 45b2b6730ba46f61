"""Fixtures: the real pynvml over the simulated libnvidia-ml.so.1, and a node's proc/cgroup tree.

The library is compiled once per session with the system C compiler. In-process tests load it
by absolute path first; pynvml's own ``CDLL("libnvidia-ml.so.1")`` then resolves to it by
soname (nothing in the code under test is patched). ``test_subprocess.py`` loads it through
``LD_LIBRARY_PATH`` in a fresh interpreter, the way a node does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from jobenergy.sim.nvml.build import BuildError, build_libnvml, find_compiler, preload
from jobenergy.sim.nvml.state import STATE_ENV, SimDevice, SimState, devices_from_nvidia_smi_xml
from jobenergy.sim.nvml.state import write_state as _write_state

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "nvidia-smi"


def _need_compiler() -> None:
    if find_compiler() is None:
        message = "no C compiler: cannot build the simulated libnvidia-ml.so.1"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def libnvml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the simulated NVML; return the path of its libnvidia-ml.so.1."""
    _need_compiler()
    try:
        return build_libnvml(tmp_path_factory.mktemp("nvml"))
    except BuildError as err:
        pytest.fail(str(err))


@pytest.fixture(scope="session")
def nvml_loaded(libnvml: Path) -> Path:
    """Make this process's pynvml use the simulated library."""
    import pynvml

    preload(libnvml)
    if pynvml.nvmlLib is not None:
        pytest.fail("pynvml loaded another libnvidia-ml.so.1 before the simulated one")
    return libnvml


@pytest.fixture
def h100s() -> list[SimDevice]:
    """Return the 8 H100s of the captured DGX node (tests/fixtures/nvidia-smi/qx-h100.xml)."""
    return devices_from_nvidia_smi_xml(FIXTURES / "qx-h100.xml")


@pytest.fixture
def t4() -> SimDevice:
    """Return the captured Tesla T4 (tests/fixtures/nvidia-smi/qx-t4.xml)."""
    return devices_from_nvidia_smi_xml(FIXTURES / "qx-t4.xml")[0]


@dataclass
class SimNvml:
    """The state file the simulated library reads in this test."""

    path: Path
    state: SimState

    def write(self) -> None:
        """Publish ``state`` to the library."""
        _write_state(self.path, self.state)


@pytest.fixture
def sim(nvml_loaded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimNvml:
    """Return an empty simulated machine; tests add devices and call ``write()``."""
    path = tmp_path / "nvml-state.txt"
    monkeypatch.setenv(STATE_ENV, str(path))
    sim = SimNvml(path, SimState())
    sim.write()
    return sim


@dataclass
class Node:
    """A node's procfs, cgroup and prolog map trees, built in a temp dir."""

    procfs: Path
    cgroup: Path
    gpu_map: Path

    def _proc(self, pid: int, cgroup_text: str, environ: dict[str, str] | None) -> None:
        d = self.procfs / str(pid)
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup").write_text(cgroup_text)
        env = {"PATH": "/usr/bin", **(environ or {})}
        (d / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))

    def job_v2(self, job_id: str, pids: list[int], environ: dict[str, str] | None = None) -> None:
        """Add a v2 job: ``system.slice/slurmstepd.scope/job_J/step_0/user/task_0``."""
        rel = f"system.slice/slurmstepd.scope/job_{job_id}/step_0/user/task_0"
        (self.cgroup / rel).mkdir(parents=True, exist_ok=True)
        (self.cgroup / rel / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
        for pid in pids:
            self._proc(pid, f"0::/{rel}\n", environ)

    def job_v1(self, job_id: str, pids: list[int], uid: int, gpu_minors: list[int]) -> None:
        """Add a job under cgroup v1 with a devices controller allowing ``gpu_minors``."""
        job = f"slurm/uid_{uid}/job_{job_id}"
        devices = self.cgroup / "devices" / job
        devices.mkdir(parents=True, exist_ok=True)
        lines = ["c 1:3 rwm", "c 195:255 rwm", "c 195:254 rwm"]
        lines += [f"c 195:{m} rwm" for m in gpu_minors]
        (devices / "devices.list").write_text("\n".join(lines) + "\n")
        task = self.cgroup / "cpuacct" / job / "step_0" / "task_0"
        task.mkdir(parents=True, exist_ok=True)
        (task / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
        for pid in pids:
            text = (
                f"11:devices:/{job}/step_0\n4:cpu,cpuacct:/{job}/step_0/task_0\n"
                f"1:name=systemd:/system.slice/slurmd.service\n"
            )
            self._proc(pid, text, {"CUDA_VISIBLE_DEVICES": "0"})

    def outside_process(self, pid: int) -> None:
        """Add a process outside any job (a login session)."""
        self._proc(pid, "0::/user.slice/user-20821.slice/session-157.scope\n", None)

    def map_gpus(self, job_id: str, gpus: str) -> None:
        """Write the prolog's map file for ``job_id``."""
        (self.gpu_map / job_id).write_text(gpus + "\n")

    def unmap(self, job_id: str) -> None:
        """Remove the map file, as the epilog does."""
        (self.gpu_map / job_id).unlink()

    def end_job_v2(self, job_id: str) -> None:
        """Remove a v2 job's cgroup folders (the job ended)."""
        import shutil

        shutil.rmtree(self.cgroup / "system.slice/slurmstepd.scope" / f"job_{job_id}")


@pytest.fixture
def node(tmp_path: Path) -> Node:
    """Return an empty node tree."""
    n = Node(tmp_path / "proc", tmp_path / "cgroup", tmp_path / "gpu-map")
    for d in (n.procfs, n.cgroup, n.gpu_map):
        d.mkdir()
    return n


@pytest.fixture
def make_accounting(node: Node) -> Iterator:
    """Return a factory of GpuAccounting over ``node``; closes them at teardown."""
    from jobenergy.agent.gpu import GpuAccounting

    made: list[GpuAccounting] = []

    def make(mode: str = "auto", static_power_w: float | None = None) -> GpuAccounting:
        acc = GpuAccounting(mode, node.procfs, node.cgroup, node.gpu_map, node=None,
                            static_power_w=static_power_w)
        made.append(acc)
        return acc

    yield make
    for acc in made:
        acc.close()
