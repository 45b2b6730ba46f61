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
