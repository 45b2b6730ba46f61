"""Jobs the Slurm prolog announced on this node (the job map in ``gpu_map_dir``).

The node prolog writes ``<gpu_map_dir>/<job_id>`` (the job's ``SLURM_JOB_GPUS``, possibly
empty) for every job and the epilog removes it a few seconds after the job ends (longer than
one sample interval). A job shorter than one interval may never show a cgroup to any sample,
but its map file is seen: such a job can then claim the CPU time its vanished cgroup left in
the Slurm root cgroup (see :func:`jobenergy.agent.attribution.job_usage`) instead of its
energy falling to the node's unattributed account.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_JOB_NAME_RE = re.compile(r"[A-Za-z0-9_.+:\-]{1,64}")


def announced_jobs(map_dir: str | Path | None) -> frozenset[str]:
    """Return the job ids with a map file now (empty if the folder is absent)."""
    if map_dir is None:
        return frozenset()
    try:
        with os.scandir(map_dir) as entries:
            return frozenset(
                e.name
                for e in entries
                if not e.name.startswith(".")
                and _JOB_NAME_RE.fullmatch(e.name)
                and e.is_file(follow_symlinks=False)
            )
    except OSError:
        return frozenset()
