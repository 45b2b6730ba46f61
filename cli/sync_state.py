"""The periodic Slurm sync's memory: which factor revision it followed last, per cluster.

A small JSON file, ``{"factor_revisions": {"cluster": 12}}``, replaced atomically (a crash
leaves the old or the new one). Losing it is harmless: the next run follows every recorded
factor change again, and rewrites only AdminComments that differ.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_STATE = Path("/var/lib/jobenergy/slurm-sync-state.json")


def resolve_state_path(option: Path | None, default: Path = DEFAULT_STATE) -> Path | None:
    """Return ``--state``, else the default when its folder is writable, else None (warned)."""
    if option is not None:
        return option
    if os.access(default.parent, os.W_OK):
        return default
    logger.warning("%s is not writable: factor changes are not followed into AdminComments "
                   "(give --state FILE)", default.parent)
    return None


def load_state(path: Path) -> dict[str, int]:
    """Return cluster → last followed factor revision ({} when missing or unreadable)."""
    try:
        data = json.loads(path.read_text())
        return {str(k): int(v) for k, v in data["factor_revisions"].items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        logger.warning("ignoring unreadable sync state %s: %s", path, err)
        return {}


def save_state(path: Path, revisions: dict[str, int]) -> None:
    """Replace the state file atomically.

    Raises:
        OSError: The folder is missing or not writable.
    """
    body = json.dumps({"factor_revisions": revisions}, indent=1, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(body)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
