"""CPU package, DRAM and platform energy from Intel/AMD RAPL via the Linux powercap framework.

Reads ``<sysfs_root>/class/powercap/<zone>/energy_uj`` (cumulative, µJ) and
``max_energy_range_uj`` (the value after which ``energy_uj`` wraps to 0, µJ), as described in
the kernel's Documentation/power/powercap/powercap.rst.

Zone layout (folder names under ``class/powercap``; the kernel also nests sub-zones inside
their parent folder):

* ``intel-rapl`` is the control type (``enabled``), not a zone: ignored.
* ``<vendor>-rapl:<idx>`` (``intel-rapl:0``, AMD kernels use the same driver) is a top-level
  zone. Its ``name`` file says what it measures: ``package-N`` (or ``package-N-die-M`` on
  multi-die parts) is a CPU package, ``psys`` is the platform domain (it overlaps the packages
  and DRAM, so it is recorded, never attributed). ``<idx>`` need not be decimal nor equal ``N``:
  the source name comes from the ``name`` file.
* ``<vendor>-rapl:<idx>:<sub>`` is a sub-zone. ``dram`` is memory energy, reported as
  ``package-N/dram``. ``core`` and ``uncore`` are parts of the package and are never returned:
  adding them to the package would count the same energy twice.
* ``intel-rapl-mmio:<idx>`` exposes the same package counter through MMIO on recent Intel
  client parts; one source is kept per name, preferring the MSR interface.

Since CVE-2020-8694 (kernel commit 949dd0104c49) ``energy_uj`` is mode 0400, readable by root
only: an unreadable counter raises :class:`SensorError`, never a silent zero.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from jobenergy.agent.readings import Reading
from jobenergy.core.errors import SensorError, SensorUnavailable

logger = logging.getLogger(__name__)

# "intel-rapl:0", "intel-rapl:0:1", "intel-rapl-mmio:0", "amd-rapl:a" (idx may be non-decimal).
_ZONE_RE = re.compile(
    r"^(?P<kind>[a-z][a-z0-9_]*-rapl(?P<mmio>-mmio)?):(?P<idx>[0-9A-Za-z]+)(?::(?P<sub>[0-9A-Za-z]+))?$"
)
_PACKAGE_RE = re.compile(r"^package-\d+(?:-die-\d+)?$")
_PART_OF_PACKAGE = frozenset({"core", "uncore"})
_COMPONENT_ORDER = {"cpu": 0, "dram": 1, "psys": 2}
_MAX_FILE_BYTES = 64  # a u64 in decimal plus newline fits many times over


@dataclass(frozen=True, slots=True)
class RaplZone:
    """One discovered RAPL counter.

    Attributes:
        component: "cpu", "dram" or "psys".
        source: Stable source name, e.g. "package-0", "package-0/dram", "psys".
        folder: Zone folder name under ``class/powercap``, e.g. "intel-rapl:0:1".
        energy_path: Path of the zone's ``energy_uj`` file.
        max_range_uj: The zone's ``max_energy_range_uj``, µJ.
        mmio: The zone comes from the ``intel-rapl-mmio`` interface.
    """

    component: str
    source: str
    folder: str
    energy_path: str
    max_range_uj: int
    mmio: bool = False


def parse_uj(raw: bytes) -> int:
    """Parse the content of a powercap counter file (decimal µJ, newline-terminated).

    Args:
        raw: Bytes read from ``energy_uj`` or ``max_energy_range_uj``.

    Returns:
        The counter value, µJ (>= 0).

    Raises:
        ValueError: If the content is not a non-negative decimal integer.
    """
    text = raw.strip()
    if not text or not text.isdigit():
        raise ValueError(f"expected a non-negative decimal integer, got {raw[:32]!r}")
    return int(text)


def _describe(err: OSError) -> str:
    """Return why a powercap file could not be read, with the operator's fix where known."""
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied: run the agent as root (CVE-2020-8694 made energy_uj root-only)"
    if err.errno == errno.ENOENT:
        return "no such file"
    return err.strerror or str(err)


def _read_file(path: str) -> bytes:
    """Read a small sysfs attribute with one open and one read (sysfs returns it whole)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, _MAX_FILE_BYTES)
    finally:
        os.close(fd)


def _read_text(path: str) -> str:
    """Read a small text attribute during discovery, translating OSError to SensorError."""
    try:
        return _read_file(path).decode("ascii", "replace").strip()
    except OSError as err:
        raise SensorError(f"RAPL: cannot read {path}: {_describe(err)}") from err


def _read_uj(path: str) -> int:
    """Read and parse a powercap counter file, µJ."""
    try:
        raw = _read_file(path)
    except OSError as err:
        raise SensorError(f"RAPL: cannot read {path}: {_describe(err)}") from err
    try:
        return parse_uj(raw)
    except ValueError as err:
        raise SensorError(f"RAPL: garbage in {path}: {err}") from err


class RaplSensor:
    """CPU package, DRAM and psys energy counters of this node (RAPL over powercap).

    Zones are discovered once at construction; call :meth:`rescan` after CPU hotplug or a
    driver reload. :meth:`read` then costs one ``open``/``read`` per zone.

    Args:
        sysfs_root: Mount point of sysfs, normally ``/sys`` (node_exporter's ``--path.sysfs``).

    Raises:
        SensorUnavailable: No powercap folder or no RAPL zone on this node.
        SensorError: A zone's ``name`` or ``max_energy_range_uj`` cannot be read or parsed.
    """

    name = "rapl"

    def __init__(self, sysfs_root: str | Path) -> None:
        self._powercap = os.path.join(os.fspath(sysfs_root), "class", "powercap")
        self._zones: tuple[RaplZone, ...] = ()
        self.rescan()

    @property
    def zones(self) -> tuple[RaplZone, ...]:
        """Return the zones found by the last discovery, in reading order."""
        return self._zones

    def rescan(self) -> None:
        """Discover the RAPL zones again (after hotplug or a driver reload).

        Raises:
            SensorUnavailable: No powercap folder or no RAPL zone.
            SensorError: A zone's ``name`` or ``max_energy_range_uj`` cannot be read or parsed.
        """
        folders = self._zone_folders()
        names = {folder: _read_text(os.path.join(path, "name")) for folder, path in folders.items()}
        chosen: dict[str, RaplZone] = {}
        for folder in sorted(folders):
            zone = _classify(folder, folders[folder], names)
            if zone is None:
                continue
            kept = chosen.get(zone.source)
            if kept is None or (kept.mmio and not zone.mmio):
                chosen[zone.source] = zone
            elif kept.mmio == zone.mmio:
                logger.warning(
                    "RAPL zones %s and %s both report source=%s; keeping %s",
                    kept.folder,
                    zone.folder,
                    zone.source,
                    kept.folder,
                )
        if not chosen:
            raise SensorUnavailable(
                f"RAPL: no package, dram or psys zone under {self._powercap} (found "
                f"{sorted(folders) or 'no zone folders'}); is the intel_rapl_msr module loaded?"
            )
        self._zones = tuple(sorted(chosen.values(), key=_zone_order))
        logger.debug("RAPL zones sensor=rapl sources=%s", ",".join(z.source for z in self._zones))

    def read(self) -> list[Reading]:
        """Return every zone's cumulative counter now.

        Returns:
            One :class:`Reading` per zone: ``energy_uj`` (µJ, cumulative, wraps at
            ``max_range_uj``).

        Raises:
            SensorError: A zone's ``energy_uj`` cannot be read (not root since
                CVE-2020-8694, the zone vanished) or holds garbage. The message names the file.
        """
        readings, errors = self.read_partial()
        if errors:
            raise errors[0]
        return readings

    def read_partial(self) -> tuple[list[Reading], list[SensorError]]:
        """Return the readable zones' counters and one error per zone that failed.

        The agent uses this so one broken zone does not stop the accounting of the others
        (a failed zone's energy stays in its counter and is counted once it reads again).
        """
        readings: list[Reading] = []
        errors: list[SensorError] = []
        for zone in self._zones:
            try:
                energy_uj = _read_uj(zone.energy_path)
            except SensorError as err:
                if not os.path.isdir(os.path.dirname(zone.energy_path)):
                    vanished = SensorError(
                        f"RAPL zone {zone.folder} ({zone.source}) vanished after discovery; "
                        "rescan() to pick up the current zones"
                    )
                    vanished.__cause__ = err.__cause__
                    vanished.vanished = True  # type: ignore[attr-defined]
                    errors.append(vanished)
                else:
                    errors.append(err)
                continue
            readings.append(Reading(zone.component, zone.source, energy_uj, zone.max_range_uj))
        return readings, errors

    def _zone_folders(self) -> dict[str, str]:
        """Return RAPL zone folder name → path, top-level and nested sub-zones."""
        try:
            with os.scandir(self._powercap) as it:
                top = {e.name: e.path for e in it if _ZONE_RE.match(e.name) and e.is_dir()}
        except (FileNotFoundError, NotADirectoryError) as err:
            raise SensorUnavailable(
                f"RAPL: no powercap folder {self._powercap} (no RAPL support in this kernel "
                "or sysfs not mounted there)"
            ) from err
        except OSError as err:
            raise SensorError(f"RAPL: cannot list {self._powercap}: {_describe(err)}") from err
        found = dict(top)
        # class/powercap links every zone on current kernels; older ones only nest sub-zones.
        for path in top.values():
            try:
                with os.scandir(path) as it:
                    for e in it:
                        if e.name not in found and _ZONE_RE.match(e.name) and e.is_dir():
                            found[e.name] = e.path
            except OSError as err:
                logger.debug("RAPL: cannot list zone folder path=%s err=%s", path, err)
        return found


def _classify(folder: str, path: str, names: dict[str, str]) -> RaplZone | None:
    """Return the zone for a folder, or None if it is not reported (core, uncore, other)."""
    m = _ZONE_RE.match(folder)
    if m is None:
        return None
    name = names[folder]
    mmio = m["mmio"] is not None
    if m["sub"] is None:
        if _PACKAGE_RE.match(name):
            component, source = "cpu", name
        elif name == "psys":
            component, source = "psys", "psys"
        else:
            logger.debug("RAPL: ignoring zone folder=%s name=%s", folder, name)
            return None
    else:
        parent_name = names.get(f"{m['kind']}:{m['idx']}", "")
        if name in _PART_OF_PACKAGE:
            return None  # inside the package counter already: counting it would double
        if name != "dram" or not _PACKAGE_RE.match(parent_name):
            logger.debug(
                "RAPL: ignoring sub-zone folder=%s name=%s parent=%s", folder, name, parent_name
            )
            return None
        component, source = "dram", f"{parent_name}/dram"
    max_path = os.path.join(path, "max_energy_range_uj")
    return RaplZone(
        component=component,
        source=source,
        folder=folder,
        energy_path=os.path.join(path, "energy_uj"),
        max_range_uj=_read_uj(max_path),
        mmio=mmio,
    )


def _zone_order(zone: RaplZone) -> tuple[int, list[int | str]]:
    """Sort packages numerically (package-2 before package-10), then dram, then psys."""
    key: list[int | str] = [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", zone.source)]
    return _COMPONENT_ORDER[zone.component], key
