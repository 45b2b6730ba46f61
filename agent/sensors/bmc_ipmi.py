"""The node's wall power from an IPMI BMC: DCMI Get Power Reading through ``ipmitool``.

DCMI 1.5 §6.6.1 (NetFn 0x2C, command 0x02, group 0xDC) returns the instantaneous power in
whole watts; there is no energy counter, so the caller integrates it (estimated). ``ipmitool
dcmi power reading`` prints it as ``Instantaneous power reading: <W> Watts``.

The password reaches ipmitool in its environment (``-E`` reads ``IPMI_PASSWORD``), never on
its command line, where any user of the node could read it from ``/proc``. Each call is bounded
by a timeout and ipmitool's own retry settings, so a dead BMC costs the poller thread at most
``timeout_s``, never the 1 Hz sampler.
"""

from __future__ import annotations

import os
import re
import subprocess

from jobenergy.agent.sensors.bmc import BmcError, BmcReading, checked_watts

_READING = re.compile(rb"Instantaneous power reading:\s*(\S+)\s*Watts")
_STATE = re.compile(rb"Power reading state is:\s*(\w+)")
#: Largest output kept (ipmitool prints a dozen lines).
_MAX_OUTPUT_BYTES = 64 * 1024


class IpmiDcmiBmc:
    """A BMC spoken to with ``ipmitool`` over LAN (``lanplus``/``lan``) or in-band (``open``).

    Args:
        interface: ``lanplus`` (IPMI 2.0 RMCP+), ``lan`` (IPMI 1.5) or ``open`` (the local
            ``/dev/ipmi0`` driver: host and credentials unused).
        host: The BMC's address (LAN interfaces).
        port: Its UDP port (623 by default).
        user: Account name.
        password: Its password (passed through the environment).
        cipher_suite: RMCP+ cipher suite id (``lanplus``; 17 is ipmitool's default, 3 the
            one older BMCs and ``ipmi_sim`` offer).
        timeout_s: Bound on one ipmitool call.
        ipmitool: The program to run.
    """

    name = "ipmi"

    def __init__(
        self, *, interface: str = "lanplus", host: str | None = None, port: int = 623,
        user: str | None = None, password: str | None = None, cipher_suite: int = 17,
        timeout_s: float = 2.0, ipmitool: str = "ipmitool",
    ) -> None:
        if interface not in ("lanplus", "lan", "open"):
            raise ValueError(f"IPMI interface {interface!r}: use lanplus, lan or open")
        if interface != "open" and not host:
            raise ValueError(f"IPMI interface {interface} needs the BMC's host")
        self._timeout_s = timeout_s
        # ipmitool's own timeout (-N, whole seconds) and retries (-R) keep it inside ours.
        argv = [ipmitool, "-I", interface, "-N", str(max(1, int(timeout_s // 2))), "-R", "1"]
        if interface != "open":
            argv += ["-H", str(host), "-p", str(int(port))]
            if user is not None:
                argv += ["-U", user]
            if password is not None:
                argv.append("-E")
            if interface == "lanplus":
                argv += ["-C", str(int(cipher_suite))]
        self._argv = [*argv, "dcmi", "power", "reading"]
        self._env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
        if password is not None:
            self._env["IPMI_PASSWORD"] = password

    @property
    def argv(self) -> list[str]:
        """The command run (no secret in it)."""
        return list(self._argv)

    def read(self) -> BmcReading:
        """Return the BMC's instantaneous power.

        Raises:
            BmcError: ipmitool is missing, timed out, failed, or printed no valid reading.
        """
        try:
            done = subprocess.run(  # noqa: S603 - fixed argv, no shell
                self._argv, env=self._env, stdin=subprocess.DEVNULL, capture_output=True,
                timeout=self._timeout_s, check=False,
            )
        except subprocess.TimeoutExpired as err:
            raise BmcError(
                f"ipmitool dcmi power reading: no answer in {self._timeout_s} s") from err
        except OSError as err:
            raise BmcError(f"cannot run {self._argv[0]}: {err.strerror or err}") from err
        out = done.stdout[:_MAX_OUTPUT_BYTES]
        if done.returncode != 0:
            why = done.stderr[:_MAX_OUTPUT_BYTES].decode(errors="replace").strip().splitlines()
            raise BmcError(f"ipmitool dcmi power reading failed (exit {done.returncode}): "
                           f"{why[-1][:200] if why else 'no message'}")
        return parse_dcmi_power(out)


def parse_dcmi_power(out: bytes) -> BmcReading:
    """Return the reading printed by ``ipmitool dcmi power reading``.

    Raises:
        BmcError: No instantaneous reading, a reading that is not a whole number of watts in
            range, or power measurement deactivated on the BMC (its figure is then stale).
    """
    state = _STATE.search(out)
    if state is not None and state.group(1) != b"activated":
        raise BmcError("DCMI power reading is deactivated on the BMC")
    found = _READING.search(out)
    if found is None:
        raise BmcError("ipmitool printed no instantaneous power reading")
    text = found.group(1)
    if not text.isdigit() or len(text) > 12:
        raise BmcError(f"DCMI power reading {text[:20]!r} is not a whole number of watts")
    return BmcReading(checked_watts(int(text), "DCMI instantaneous power reading"))
