"""A real IPMI BMC on loopback: Debian's ``ipmi_sim`` with a DCMI power-reading module.

``ipmi_sim`` (package ``openipmi``) speaks IPMI 1.5 LAN and 2.0 RMCP+ (cipher suite 3) over
UDP; it has no DCMI, so :file:`dcmi_power.c` (built here with gcc against
``libopenipmi-dev``'s headers) answers DCMI Get Power Reading with the whole watts of a file
that the scenario writes (:meth:`IpmiSimBmc.set_power_w`). ``ipmitool`` is the client, as on
a real node.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

MODULE_SOURCE = Path(__file__).with_name("dcmi_power.c")
#: What to install where the parts are missing (scripts/system-deps.sh installs them).
NOT_FOUND_MESSAGE = (
    "the IPMI BMC emulator needs Debian's openipmi (ipmi_sim), libopenipmi-dev (its headers), "
    "ipmitool and gcc: sudo apt-get install openipmi libopenipmi-dev ipmitool gcc "
    "(or run scripts/system-deps.sh)")
USER = "admin"
PASSWORD = "bmc-test-secret"


def missing_parts() -> list[str]:
    """Return the parts of the emulator that are not installed."""
    missing = [tool for tool in ("ipmi_sim", "ipmitool", "gcc") if shutil.which(tool) is None]
    if not Path("/usr/include/OpenIPMI/mcserv.h").exists():
        missing.append("libopenipmi-dev")
    return missing


def build_module(out_dir: Path) -> Path:
    """Compile the DCMI module into ``out_dir``; return the shared object's path."""
    out = out_dir / "dcmi_power.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-o", str(out),
                    str(MODULE_SOURCE)], check=True, capture_output=True)
    return out


def free_udp_port() -> int:
    """Return a UDP port free on loopback now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class IpmiSimBmc:
    """``ipmi_sim`` serving one node's wall power on ``127.0.0.1:<port>``.

    Args:
        work_dir: Where the config, module, state and power file go.
        power_w: The first power reading, W.
    """

    def __init__(self, work_dir: Path, power_w: int = 0) -> None:
        self.dir = work_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.power_file = self.dir / "power_w"
        self.port = free_udp_port()
        self.set_power_w(power_w)
        self._proc: subprocess.Popen | None = None

    def set_power_w(self, power_w: int) -> None:
        """Make the BMC's next reading ``power_w`` (whole watts, as DCMI reports)."""
        tmp = self.power_file.with_suffix(".tmp")
        tmp.write_text(f"{int(power_w)}\n")
        os.replace(tmp, self.power_file)

    def start(self, timeout_s: float = 10.0) -> None:
        """Start ipmi_sim and wait until it answers a DCMI power reading."""
        module = build_module(self.dir)
        (self.dir / "state").mkdir(exist_ok=True)
        config = self.dir / "lan.conf"
        config.write_text(f"""name "jobenergy-test-bmc"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {self.port}
    priv_limit admin
    allowed_auths_callback md5
    allowed_auths_user md5
    allowed_auths_operator md5
    allowed_auths_admin md5
    guid a123456789abcdefa123456789abcdef
  endlan
  user 2 true "{USER}" "{PASSWORD}" admin 10 md5
loadlib "{module}" "{self.power_file}"
""")
        commands = self.dir / "bmc.emu"
        commands.write_text("mc_setbmc 0x20\n"
                            "mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\n"
                            "mc_enable 0x20\n")
        log = open(self.dir / "ipmi_sim.log", "wb")  # noqa: SIM115 - lives with the process
        self._proc = subprocess.Popen(
            ["ipmi_sim", "-n", "-c", str(config), "-f", str(commands),
             "-s", str(self.dir / "state")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"ipmi_sim exited: {(self.dir / 'ipmi_sim.log').read_text()}")
            probe = subprocess.run(
                self.ipmitool_argv("lanplus") + ["dcmi", "power", "reading"],
                env={**os.environ, "IPMI_PASSWORD": PASSWORD}, capture_output=True,
                timeout=5, check=False)
            if probe.returncode == 0 and b"Instantaneous" in probe.stdout:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"ipmi_sim did not answer: {probe.stderr[-300:]!r}")

    def ipmitool_argv(self, interface: str = "lanplus") -> list[str]:
        """Return the ipmitool command that reaches this BMC (password: ``-E``)."""
        argv = ["ipmitool", "-I", interface, "-H", "127.0.0.1", "-p", str(self.port),
                "-U", USER, "-E", "-N", "1", "-R", "1"]
        return argv + (["-C", "3"] if interface == "lanplus" else [])

    def stop(self) -> None:
        """Stop ipmi_sim."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
