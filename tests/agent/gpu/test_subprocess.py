"""The agent's GPU accounting in a fresh interpreter that finds libnvidia-ml.so.1 the normal
way (``LD_LIBRARY_PATH``, read by the dynamic loader at process start), as on a node.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobenergy.sim.nvml.build import build_libnvml
from jobenergy.sim.nvml.state import STATE_ENV, SimProcess, SimState, write_state

# Samples, waits for a line on stdin (the test evolves the state file meanwhile), samples
# again and prints the attributed sources and where libnvidia-ml.so.1 came from.
AGENT = r"""
import json, sys
import pynvml
from jobenergy.agent.gpu import GpuAccounting
acc = GpuAccounting("auto", sys.argv[1], sys.argv[2], sys.argv[3])
if not acc.available:
    print(json.dumps({"unavailable": acc.unavailable_reason}), flush=True)
    sys.exit(0)
prev = acc.sample(sys.argv[4:])
print("sampled", flush=True)
sys.stdin.readline()
cur = acc.sample(sys.argv[4:])
maps = open("/proc/self/maps").read().split()
lib = sorted({m for m in maps if m.endswith("libnvidia-ml.so.1")})
print(json.dumps({
    "sources": [s.model_dump() for s in acc.attribute(prev, cur)],
    "errors": acc.errors_total, "lib": lib, "driver": pynvml.nvmlSystemGetDriverVersion(),
}), flush=True)
"""


def _run_agent(lib_dir, state_path, node, jobs, evolve=None):
    env = {**os.environ, "LD_LIBRARY_PATH": str(lib_dir), STATE_ENV: str(state_path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(node.procfs), str(node.cgroup), str(node.gpu_map), *jobs],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        if first.startswith("{"):
            return json.loads(first)
        assert first == "sampled\n", first + proc.stderr.read()
        if evolve is not None:
            evolve()
        out, err = proc.communicate("go\n", timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    return json.loads(out)


def test_agent_loads_simulated_library_via_ld_library_path(libnvml, tmp_path, node, h100s):
    state = SimState(devices=h100s[:2])
    state.devices[1].processes = [SimProcess(pid=3100, sm_util=40)]
    state_path = tmp_path / "state.txt"
    write_state(state_path, state)
    node.job_v2("31", [3100])
    node.map_gpus("31", "1")

    def evolve():
        state.devices[0].energy_mj += 2_000
        state.devices[1].energy_mj += 5_000
        write_state(state_path, state)

    result = _run_agent(libnvml.parent, state_path, node, ["31"], evolve)
    assert result["lib"] == [str(libnvml)]
    assert result["driver"] == state.driver_version
    sources = {s["source"]: s for s in result["sources"]}
    assert sources[f"gpu/{h100s[0].uuid}"]["unattributed_uj"] == 2_000_000
    assert sources[f"gpu/{h100s[1].uuid}"]["jobs_uj"] == {"31": 5_000_000}


def test_driver_without_process_utilisation_symbol_splits_evenly(tmp_path, node, h100s, libnvml):
    lib = build_libnvml(tmp_path / "old-driver", omit=["nvmlDeviceGetProcessUtilization"])
    state = SimState(devices=h100s[:1])
    state.devices[0].processes = [SimProcess(pid=1, sm_util=99), SimProcess(pid=2, sm_util=1)]
    state_path = tmp_path / "state.txt"
    write_state(state_path, state)
    node.job_v2("51", [1])
    node.job_v2("52", [2])

    def evolve():
        state.devices[0].energy_mj += 3_000
        write_state(state_path, state)

    result = _run_agent(lib.parent, state_path, node, ["51", "52"], evolve)
    (src,) = result["sources"]
    assert src["jobs_uj"] == {"51": 1_500_000, "52": 1_500_000}
    assert result["errors"] == {"FunctionNotFound": 1}


def test_library_absent_means_sensor_unavailable(tmp_path, node):
    if ctypes.util.find_library("nvidia-ml"):
        pytest.skip("this host has a real libnvidia-ml: cannot observe its absence")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _run_agent(empty, tmp_path / "none.txt", node, [])
    assert "libnvidia-ml.so.1 not found" in result["unavailable"]


def test_sensor_unavailable_raised_directly(tmp_path):
    if ctypes.util.find_library("nvidia-ml"):
        pytest.skip("this host has a real libnvidia-ml: cannot observe its absence")
    code = (
        "from jobenergy.agent.gpu import NvmlSensor\n"
        "from jobenergy.core.errors import SensorUnavailable\n"
        "try:\n    NvmlSensor()\nexcept SensorUnavailable as e:\n    print('unavailable:', e)\n"
    )
    env = {**os.environ, "LD_LIBRARY_PATH": str(Path(tmp_path))}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out.startswith("unavailable: NVML library libnvidia-ml.so.1 not found")
