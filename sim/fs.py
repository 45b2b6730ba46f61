"""Atomic file writes for simulated kernel files.

The agent may read a file at any moment; writing through a temporary file and ``os.replace``
means it sees either the old or the new number, never half of one (as with real sysfs).
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path``'s content with ``text`` atomically (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
