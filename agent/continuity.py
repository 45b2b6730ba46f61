"""Energy measured while the agent was not running, kept instead of lost.

RAPL counters keep counting while the agent is stopped (upgrade, crash, restart). At every
seal the agent records the counters of the last sample it sealed; when it starts again in
the same boot (same ``boot_id``: the counters were not reset) the energy between that sample
and its first new one is sent as a *gap* interval, all on the node's ``unattributed``
account: it was measured, but no one watched which jobs ran. After a reboot the counters
restarted and nothing can be recovered.

The record is written before the batch it belongs to: a crash between the two loses that
batch's intervals from the gap instead of counting them twice.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from jobenergy.agent.readings import Reading
from jobenergy.agent.records import SampledInterval, SourceSample
from jobenergy.agent.wire import interval_json
from jobenergy.core.counters import counter_delta
from jobenergy.core.limits import check_time

logger = logging.getLogger(__name__)

#: Above any RAPL zone's power: a gap longer than one counter range at this power may hide
#: several wraps, and is dropped rather than reported wrong.
MAX_PLAUSIBLE_ZONE_POWER_W = 1_000


class CounterRecord:
    """The counters of the last sealed sample, in ``<spool_dir>/counters.json``."""

    def __init__(self, spool_dir: str | Path, boot_id: str) -> None:
        self.path = Path(spool_dir) / "counters.json"
        self.boot_id = boot_id

    def save(self, wall: datetime, readings: dict[str, Reading]) -> None:
        """Record the counters read at ``wall`` (atomically)."""
        data = {
            "boot_id": self.boot_id,
            "wall": wall.isoformat(),
            "readings": [
                [r.component, r.source, r.energy_uj, r.max_range_uj, r.estimated]
                for r in readings.values()
            ],
        }
        tmp = self.path.with_name(".counters.json.tmp")
        # 0600 like the rest of the spool, whatever the umask (agent/spool.py).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(fd, "w") as fh:
            os.fchmod(fd, 0o600)
            fh.write(json.dumps(data))
        os.replace(tmp, self.path)

    def load(self) -> tuple[datetime, dict[str, Reading]] | None:
        """Return the recorded sample if it is from this boot, else None."""
        try:
            data = json.loads(self.path.read_text())
            if data["boot_id"] != self.boot_id:
                logger.info("counters recorded before a reboot, not resumed path=%s", self.path)
                return None
            readings = {row[1]: Reading(*row) for row in data["readings"]}
            return datetime.fromisoformat(data["wall"]), readings
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as err:
            logger.warning(
                "counter record unreadable, gap not resumed path=%s err=%s", self.path, err
            )
            return None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch_us(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def gap_interval(
    before_wall: datetime,
    before: dict[str, Reading],
    now_wall: datetime,
    now: dict[str, Reading],
) -> SampledInterval | None:
    """Return the energy between a recorded sample and a new one, all unattributed.

    Returns:
        A gap interval (never merged with others), checked as the wire ``Interval``; None
        when there is no energy to send or the wire would refuse it.
    """
    if now_wall <= before_wall:
        return None
    duration_s = (now_wall - before_wall).total_seconds()
    sources = []
    for source, reading in now.items():
        old = before.get(source)
        if old is None:
            continue
        if reading.max_range_uj is not None and (
            duration_s * MAX_PLAUSIBLE_ZONE_POWER_W * 1_000_000 >= reading.max_range_uj
        ):
            # The counter may have wrapped more than once: the gap cannot be known.
            logger.warning(
                "agent down too long to resume source=%s down_s=%.0f", source, duration_s
            )
            continue
        delta = counter_delta(old.energy_uj, reading.energy_uj, reading.max_range_uj)
        sources.append(
            SourceSample(
                component=reading.component,
                source=source,
                measured_uj=delta.energy_uj,
                jobs_uj={},
                unattributed_uj=delta.energy_uj,
                estimated=reading.estimated,
                wraps=int(delta.wrapped),
                resets=int(delta.reset),
            )
        )
    if not sources:
        return None
    try:
        start, end = check_time(before_wall), check_time(now_wall)
        interval_json({"start": start, "end": end, "sources": [s.wire() for s in sources],
                       "jobs": [], "phases": []})
    except ValueError as err:  # WireError too: e.g. the clock stepped back across the restart
        logger.warning("gap while the agent was down not sent: %s", err)
        return None
    return SampledInterval(
        start=start, end=end, start_us=_epoch_us(start), end_us=_epoch_us(end),
        sources=sources, gap=True,
    )
