"""The exception hierarchy, drawn in one place.

    JobEnergyError
    ├── ConfigError            bad settings or a bad file given by an operator
    ├── SensorUnavailable      the hardware/driver is absent (no RAPL zones, no NVML): not an error
    │                          to retry, the sensor is reported off once
    ├── SensorError            the hardware is there but a read failed (unreadable energy_uj,
    │                          GPU lost); other sensors keep being read
    ├── SpoolError             the on-disk spool cannot be written
    └── MungeError             munged refused or could not make/check a credential
                               (core/munge.py)

Vendor errors (OSError, pynvml.NVMLError_*) are translated into these at the boundary
with ``raise ... from err``.
"""

from __future__ import annotations

from typing import Any


class JobEnergyError(Exception):
    """Root of every error raised by jobenergy."""


class ConfigError(JobEnergyError):
    """A setting or operator-supplied file is invalid."""


class SensorUnavailable(JobEnergyError):
    """The energy source is not present on this node."""


class SensorError(JobEnergyError):
    """The energy source is present but could not be read."""


class SpoolError(JobEnergyError):
    """The on-disk spool could not be written or read."""


def settings_error_line(err: Any, limit: int = 5) -> str:
    """Return a pydantic ``ValidationError`` of settings as one line:
    ``key: problem; key: problem`` (an unknown key says so)."""
    parts = []
    for item in err.errors(include_url=False)[:limit]:
        where = ".".join(map(str, item["loc"])) or "value"
        if item["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown setting")
        else:
            parts.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)
