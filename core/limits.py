"""The wire contract's limits and time rule, without pydantic (``core/schema.py`` uses them).

The node agent serialises its intervals without building the pydantic models
(``agent/wire.py``) and checks them against these same numbers; the models in
:mod:`jobenergy.core.schema` are the contract the collector validates with, and a property
test holds the two to the same answers and the same bytes (``tests/agent/test_wire.py``).
"""

from __future__ import annotations

from datetime import UTC, datetime

SCHEMA_VERSION = 1

#: Components a source can belong to. ``psys`` (RAPL platform domain) overlaps the package
#: and DRAM domains: it is recorded per node for cross-checks and never attributed to a job.
#: ``bmc`` is the node's wall energy from its BMC (agent/reconcile.py), recorded per node and
#: never attributed either; ``other`` is what the BMC saw beyond cpu + dram + gpu (fans, NICs,
#: disks, power-supply losses), estimated and attributed by the declared policy.
COMPONENTS: tuple[str, ...] = ("cpu", "dram", "gpu", "psys", "bmc", "other")
ATTRIBUTED_COMPONENTS: tuple[str, ...] = ("cpu", "dram", "gpu", "other")
#: Components recorded per node only: a share of them for a job is refused.
NODE_ONLY_COMPONENTS: tuple[str, ...] = ("psys", "bmc")
#: The refusal of a job share of the BMC's own figure (its ``other`` part is what jobs get).
BMC_NOT_ATTRIBUTED = "bmc energy is the node's wall figure and is never attributed to jobs"
#: Phases a job can announce.
PHASES: tuple[str, ...] = ("training", "inference", "other")

#: Upper bound on one source's average power. Anything above is a corrupt reading or a
#: mis-handled counter wrap (one RAPL range is ~262 kJ), not energy.
MAX_SOURCE_POWER_W = 50_000
MAX_INTERVALS_PER_BATCH = 10_000
#: Longest interval accepted: agents sample at most hourly; the collector's overlap check
#: relies on this bound.
MAX_INTERVAL_S = 86_400
MAX_SOURCES_PER_INTERVAL = 256
MAX_JOBS_PER_SOURCE = 4_096
MAX_STEPS_PER_JOB = 256
#: Per job, after merging every event's lists and tags as sets (``collector/events.py``).
MAX_JOB_NODES = 65_536
MAX_JOB_GPUS = 1_024
MAX_JOB_TAGS = 64
#: Steps of a job that the Slurm sync sends (and the collector keeps).
MAX_SLURM_STEPS = 4_096
#: Largest uid: ``uid_t`` is 32 bits.
MAX_UID = 2**32 - 1
#: Counts that are summed into BIGINT totals.
MAX_COUNT = 10**15
#: Largest energy (µJ) and CPU time (µs) in one record.
MAX_ENERGY_UJ = 10**18
#: Counter wraps and resets of one source in one interval.
MAX_WRAPS = 1_000
#: Longest a job can live inside one interval, µs (``MAX_INTERVAL_S``).
MAX_ALIVE_US = MAX_INTERVAL_S * 1_000_000
#: Lengths (characters) of the wire's texts.
MAX_JOB_ID = 64
MAX_NAME = 255
MAX_DEVICE_NAME = 128
MAX_STEP_NAME = 32
MAX_KEY = 64
#: Metrics and tags of one phase record.
MAX_PHASE_ITEMS = 64

#: Times accepted anywhere (wire, query parameters, series): [1970-01-01, 2100-01-01) UTC.
TIME_MIN = datetime(1970, 1, 1, tzinfo=UTC)
TIME_MAX = datetime(2100, 1, 1, tzinfo=UTC)

#: Text may not hold NUL: PostgreSQL refuses it in text and JSON. Rendered by the collector as
#: "must not contain NUL characters" (``collector/routes.py: format_validation_error``).
NO_NUL_PATTERN = r"^[^\x00]*$"
#: A Slurm job id on the wire (numbers, array and het suffixes, SLUIDs).
JOB_ID_PATTERN = r"^[A-Za-z0-9_.+:\-]+$"


def check_time(value: datetime) -> datetime:
    """Return ``value`` in UTC (naive means UTC) when it lies in [1970, 2100).

    Raises:
        ValueError: The time is outside [``TIME_MIN``, ``TIME_MAX``) (or cannot be converted
            to UTC at all, e.g. year 9999 at UTC-14).
    """
    try:
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not TIME_MIN <= utc < TIME_MAX:
        raise ValueError(
            f"{value.isoformat()} is not between {TIME_MIN:%Y-%m-%d} and "
            f"{TIME_MAX:%Y-%m-%d} UTC"
        )
    return utc
