"""The node epilog turns the agent's record (``<limit_dir>/<job>``) into the job's
``energy_limit_*`` tags, the budget that acted included, and drops users' forgeries of them.

The real hook (``slurm_plugins/jobenergy-hook.sh``) runs with a curl that fails like an
unreachable collector, so the event it would have sent is kept in its outbox, read here.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

HOOK = Path(__file__).resolve().parents[2] / "slurm_plugins" / "jobenergy-hook.sh"


def _epilog(tmp_path: Path, record: str, spank_tags: str = "") -> dict[str, str]:
    if shutil.which("bash") is None:
        pytest.skip("the Slurm hooks need bash")
    limits, outbox = tmp_path / "limits", tmp_path / "outbox"
    limits.mkdir()
    (limits / "77").write_text(record)
    curl = tmp_path / "curl"
    curl.write_text("#!/bin/sh\nexit 7\n")
    curl.chmod(0o755)
    settings = {"JOBENERGY_CLUSTER": "c1", "JOBENERGY_OUTBOX": str(outbox),
                "JOBENERGY_GPU_MAP_DIR": str(tmp_path / "gpus"),
                "JOBENERGY_LIMIT_DIR": str(limits), "JOBENERGY_AUTH": "none",
                "JOBENERGY_URL": "http://127.0.0.1:9", "JOBENERGY_CURL": str(curl)}
    conf = tmp_path / "hooks.env"
    conf.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in settings.items()))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "JOBENERGY_HOOK_CONF": str(conf),
           "SLURM_JOB_ID": "77", "SLURM_JOB_USER": "alice", "SPANK_ENERGY_TAGS": spank_tags,
           "BASH_FUNC_logger%%": "() { :; }"}
    proc = subprocess.run(["bash", str(HOOK), "epilog"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stderr) == (0, ""), proc
    (kept,) = sorted(outbox.glob("*.json"))
    return json.loads(kept.read_text())["tags"]


def test_a_budgets_cancel_is_tagged_with_the_budget(tmp_path):
    tags = _epilog(tmp_path, "energy_uj=9\nbudget_id=12\nwarned_uj=5\ncancelled_uj=9\n",
                   spank_tags="energy_limit_budget_id=99;note=x")
    assert tags == {"note": "x", "energy_limit_warned_uj": "5",
                    "energy_limit_cancelled_uj": "9", "energy_limit_action": "cancelled",
                    "energy_limit_budget_id": "12"}


def test_a_jobs_own_limit_has_no_budget_tag_and_garbage_is_skipped(tmp_path):
    tags = _epilog(tmp_path, "limit_uj=10\nenergy_uj=9\nbudget_id=1;2\nwarned_uj=9\n",
                   spank_tags="energy_limit_action=cancelled")
    assert tags == {"energy_limit_warned_uj": "9", "energy_limit_action": "warned"}


@pytest.mark.parametrize("forged", [
    "energy\x01_limit_cancelled_uj=123",  # a control byte je_str drops
    "energy\xff_limit_action=cancelled",  # invalid UTF-8 it drops
    "ENERGY_LIMIT_action=cancelled",
    "array_job_id=5", "array_task_id=2", "het_job_id=5", "het_job_offset=1",  # Slurm's ids
])
def test_reserved_tag_keys_cannot_be_smuggled_past_the_filter(tmp_path, forged):
    """The hook checks a user's key as it will be sent, not as typed: a key that only becomes
    ``energy_limit_*`` (or one of Slurm's array / het-job id keys) once cleaned is dropped."""
    raw = forged.encode("latin-1").decode("utf-8", "surrogateescape")
    tags = _epilog(tmp_path, "energy_uj=1\n", spank_tags=f"{raw};note=x")
    assert tags == {"note": "x"}
