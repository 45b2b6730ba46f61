"""The systemd units in deploy/systemd: rated "OK" or better by ``systemd-analyze security``,
accepted by ``systemd-analyze verify``, and sandboxed the way their comments say.

``systemd-analyze security --offline=yes`` (systemd 252+) rates a unit file without loading it;
"OK" is an exposure below 5.0 on its 0-10 scale.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
SERVICES = sorted(p.name for p in UNITS.glob("*.service"))
TIMERS = sorted(p.name for p in UNITS.glob("*.timer"))
GOOD = ("PERFECT", "SAFE", "OK")
SHIPPED_BIN = "/opt/jobenergy/bin/jobenergy"


def _analyze(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("systemd-analyze") is None:
        message = "systemd-analyze not found: apt-get install systemd (scripts/system-deps.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def _service(name: str) -> dict[str, list[str]]:
    """Return the [Service] settings of a unit: key -> every value given (in order)."""
    values: dict[str, list[str]] = {}
    section = None
    for line in (UNITS / name).read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_every_unit_is_checked():
    assert SERVICES == ["jobenergy-agent.service", "jobenergy-budget-state.service",
                        "jobenergy-db-maintain.service", "jobenergy-server.service",
                        "jobenergy-slurm-sync.service"]
    assert TIMERS == ["jobenergy-budget-state.timer", "jobenergy-db-maintain.timer",
                      "jobenergy-slurm-sync.timer"]


@pytest.mark.parametrize("unit", SERVICES)
def test_security_rating_is_ok_or_better(unit):
    out = _analyze("security", "--offline=yes", str(UNITS / unit))
    match = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", out.stdout)
    assert match, out.stdout + out.stderr
    assert match.group(2) in GOOD and float(match.group(1)) < 5.0, match.group(0)


@pytest.mark.parametrize("unit", SERVICES + TIMERS)
def test_unit_verifies(unit, tmp_path):
    # As `jobenergy setup` installs them: the jobenergy command of this environment.
    program = Path(sys.executable).with_name("jobenergy")
    if not program.exists():
        message = f"no {program}: pip install -e . (the units run the jobenergy command)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    for name in SERVICES + TIMERS:
        text = (UNITS / name).read_text().replace(SHIPPED_BIN, str(program))
        (tmp_path / name).write_text(text)
    out = _analyze("verify", str(tmp_path / unit))
    assert (out.returncode, out.stdout + out.stderr) == (0, "")


@pytest.mark.parametrize("unit", SERVICES)
def test_service_logs_under_its_name_and_keeps_no_privilege_it_needs_not(unit):
    service = _service(unit)
    assert service["SyslogIdentifier"] == [unit.removesuffix(".service")]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["MemoryDenyWriteExecute"] == ["yes"]
    assert service["SystemCallFilter"][0] == "@system-service"
    assert service["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    if unit == "jobenergy-agent.service":
        # Root (RAPL), with only what reading other users' /proc/<pid>/environ needs.
        assert service["User"] == ["root"]
        assert service["CapabilityBoundingSet"] == ["CAP_DAC_READ_SEARCH CAP_SYS_PTRACE"]
    else:
        assert service["User"][0] != "root"
        assert service["CapabilityBoundingSet"] == [""]
        assert service["UMask"] == ["0077"]


def test_agent_keeps_the_gpu_devices_and_creates_its_folders():
    service = _service("jobenergy-agent.service")
    # NVML opens /dev/nvidia*: no private /dev, no device allow-list (an implied one from
    # ProtectClock= included, on systemd < 253), so no GPU is hidden from the agent.
    assert service.get("PrivateDevices") == ["no"]
    assert "DeviceAllow" not in service and "DevicePolicy" not in service
    assert "ProtectClock" not in service
    # Starts before any setup step: the unit makes the spool and /run/jobenergy itself.
    assert service["ExecStartPre"] == ["+/bin/mkdir -p -m 0700 /var/spool/jobenergy/agent"]
    assert service["ReadWritePaths"] == ["/var/spool/jobenergy/agent"]
    assert service["RuntimeDirectory"] == ["jobenergy"]


def test_state_folders_are_created_by_the_units():
    assert _service("jobenergy-server.service")["StateDirectory"] == ["jobenergy-server"]
    assert _service("jobenergy-db-maintain.service")["StateDirectory"] == ["jobenergy-server"]
    sync = _service("jobenergy-slurm-sync.service")
    assert sync["StateDirectory"] == ["jobenergy"]
    assert sync["ReadWritePaths"] == ["-/var/spool/jobenergy/outbox"]
    # The budget state goes where job_submit.lua reads it, in the folder the unit makes.
    budget = _service("jobenergy-budget-state.service")
    assert budget["StateDirectory"] == ["jobenergy"]
    assert budget["ExecStart"][0].endswith("--out /var/lib/jobenergy/budget.state")
    lua = (UNITS.parents[1] / "slurm_plugins" / "job_submit.lua").read_text()
    assert 'local STATE_FILE = "/var/lib/jobenergy/budget.state"' in lua


def test_server_is_started_once_healthz_answers():
    service = _service("jobenergy-server.service")
    assert service["Type"] == ["exec"]
    assert service["ExecStartPost"] == [
        f"{SHIPPED_BIN} setup wait-server --config /etc/jobenergy/server.toml --timeout 110"]
    assert int(service["TimeoutStartSec"][0]) > 110
