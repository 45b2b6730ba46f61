"""Slurm roles from sacctmgr: a slow or failing slurmdbd never holds requests up."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from jobenergy.api.access import SlurmRoles


def _sacctmgr(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A stand-in for sacctmgr printing ``out``; it blocks while ``gate`` exists and fails
    while ``broken`` exists."""
    out, gate, broken = tmp_path / "out", tmp_path / "gate", tmp_path / "broken"
    script = tmp_path / "sacctmgr"
    script.write_text(f"#!/bin/sh\nwhile [ -e {gate} ]; do sleep 0.02; done\n"
                      f"[ -e {broken} ] && exit 1\ncat {out}\n")
    script.chmod(0o755)
    return script, out, gate


def test_a_stale_cache_is_refreshed_without_holding_requests(tmp_path: Path) -> None:
    script, out, gate = _sacctmgr(tmp_path)
    out.write_text("alice|None|proj1\nbob|Operator|\n")
    roles = SlurmRoles(str(script), ttl_s=0)
    assert roles.of("alice") == ("None", frozenset({"proj1"}))  # first read: waited for
    out.write_text("alice|Administrator|proj2\n")
    gate.touch()  # slurmdbd hangs
    t0 = time.monotonic()
    assert roles.of("alice") == ("None", frozenset({"proj1"}))  # the roles last read
    assert roles.of("bob") == ("Operator", frozenset())
    assert time.monotonic() - t0 < 1.0
    gate.unlink()
    deadline = time.monotonic() + 10
    while roles.of("alice") != ("Administrator", frozenset({"proj2"})):
        assert time.monotonic() < deadline, "the background refresh never landed"
        time.sleep(0.02)
    assert roles.of("bob") == ("None", frozenset())


def test_a_failing_sacctmgr_keeps_the_roles_last_read(tmp_path: Path) -> None:
    script, out, _gate = _sacctmgr(tmp_path)
    out.write_text("alice|Operator|\n")
    roles = SlurmRoles(str(script), ttl_s=0)
    assert roles.of("alice")[0] == "Operator"
    (tmp_path / "broken").touch()
    refreshes = [t for t in threading.enumerate() if t.name == "jobenergy-sacctmgr"]
    for _ in range(5):
        assert roles.of("alice")[0] == "Operator"
    for thread in [t for t in threading.enumerate() if t.name == "jobenergy-sacctmgr"]:
        if thread not in refreshes:
            thread.join(10)
    assert roles.of("alice")[0] == "Operator"


def test_without_sacctmgr_nobody_has_slurm_roles(tmp_path: Path) -> None:
    roles = SlurmRoles("", ttl_s=300)
    assert roles.of("root") == ("None", frozenset())
    missing = SlurmRoles(str(tmp_path / "no-such-sacctmgr"), ttl_s=300)
    assert missing.of("alice") == ("None", frozenset())
