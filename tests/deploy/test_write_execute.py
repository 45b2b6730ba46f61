"""The services work under ``MemoryDenyWriteExecute=yes``, which their units set.

``mdwe_exec.py`` applies systemd's filter (EPERM for writable executable mappings) to a real
process: the agent's NVML layer loading ``libnvidia-ml.so.1`` through ctypes (the simulated
library, built from C here), libmunge through ctypes, and the whole server (uvicorn, pydantic-
core, SQLAlchemy, psycopg's libpq) answering ``/healthz``. A library that needs W+X memory
(a JIT, text relocations, an executable stack) fails under the filter exactly as under systemd.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MDWE = Path(__file__).with_name("mdwe_exec.py")


def _under_filter(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(MDWE), sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, **(env or {})})


def test_filter_refuses_writable_executable_memory():
    code = ("import mmap\n"
            "try:\n    mmap.mmap(-1, 4096, prot=7)\nexcept PermissionError:\n"
            "    print('refused')\nelse:\n    print('allowed')\n")
    assert _under_filter(code).stdout == "refused\n"
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True)
    assert plain.stdout == "allowed\n"  # so the refusal above is the filter's


def test_agent_reads_nvml_and_loads_libmunge_under_the_filter(tmp_path):
    from jobenergy.sim.nvml.build import BuildError, build_libnvml, find_compiler
    from jobenergy.sim.nvml.state import STATE_ENV, SimDevice, SimState, write_state

    if find_compiler() is None:
        message = "no C compiler: cannot build the simulated libnvidia-ml.so.1"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    try:
        lib = build_libnvml(tmp_path / "nvml")
    except BuildError as err:
        pytest.fail(str(err))
    state = tmp_path / "state.txt"
    write_state(state, SimState(devices=[
        SimDevice(index=0, uuid="GPU-00000000-0000-0000-0000-0000000000a0", minor=0,
                  energy_mj=1_234),
        SimDevice(index=1, uuid="GPU-00000000-0000-0000-0000-0000000000a1", minor=1,
                  energy_mj=5_678),
    ]))
    code = (
        "import json, ctypes.util\n"
        "import jobenergy.agent.daemon\n"  # everything the agent process imports
        "from jobenergy.agent.gpu import NvmlSensor\n"
        "from jobenergy.core import munge\n"
        "sensor = NvmlSensor()\n"
        "energy = {s.uuid: s.energy_uj for s in sensor.read()}\n"
        "sensor.close()\n"
        "lib = ctypes.util.find_library('munge')\n"
        "if lib:\n    ctypes.CDLL(lib)\n"
        "print(json.dumps({'energy': energy, 'libmunge': bool(lib)}))\n"
    )
    out = _under_filter(code, {"LD_LIBRARY_PATH": str(lib.parent), STATE_ENV: str(state)})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["energy"] == {"GPU-00000000-0000-0000-0000-0000000000a0": 1_234_000,
                                "GPU-00000000-0000-0000-0000-0000000000a1": 5_678_000}
    if not result["libmunge"] and os.environ.get("CI") == "true":
        pytest.fail("libmunge.so.2 not found: apt-get install munge (scripts/system-deps.sh)")


def test_server_serves_under_the_filter(tmp_path):
    from jobenergy.cli.setup_ready import wait_healthy
    from jobenergy.core.errors import ConfigError
    from jobenergy.sim.processes import free_port, stop

    port = free_port()
    config = tmp_path / "server.toml"
    config.write_text(f'[server]\nhost = "127.0.0.1"\nport = {port}\nauth = ["none"]\n')
    code = ("import psycopg, sys\n"
            "assert psycopg.pq.__impl__ in ('binary', 'c'), psycopg.pq.__impl__\n"
            "from jobenergy.cli.main import main\n"
            "sys.argv = ['jobenergy', 'server', '--config', sys.argv[1]]\n"
            "main()\n")
    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, str(MDWE), sys.executable, "-c", code, str(config)],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "JOBENERGY_SERVER_DB_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"})
    try:
        try:
            assert wait_healthy(config, 90) == f"http://127.0.0.1:{port}/healthz"
        except ConfigError:
            pytest.fail(f"server under the filter: {(tmp_path / 'server.log').read_text()}")
        assert server.poll() is None
    finally:
        stop(server)
