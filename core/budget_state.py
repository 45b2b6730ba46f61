"""The budget state file slurmctld's ``job_submit.lua`` reads: format and atomic write.

slurmctld must never wait on HTTP while it holds its job locks, so the Lua script reads a
local file that ``jobenergy budget write-state`` (a timer on the controller) or the server
itself (``budget_state_file``) keeps current. Lua 5.1 without libraries parses it, so it is
lines of whitespace-separated tokens::

    # jobenergy budget state v1
    generated <unix seconds>
    budget <scope> <account|-> <user|-> <policy> <unit> <used> <limit> <resets_at|-> <id> <period>
    uid <uid> <user>

- ``scope``: ``user``, ``account`` or ``account_user``; ``policy``: ``warn`` or ``deny`` (at
  submission); ``unit``: ``kWh`` (facility energy) or ``kgCO2e``; ``period``: ``day``,
  ``week``, ``month`` or ``range``.
- ``used`` and ``limit`` are decimals with 6 places in ``unit``: ``used`` rounded down,
  ``limit`` up, so the script's ``used >= limit`` never refuses a job the server counts as
  under budget. (Lua 5.1 numbers are doubles: µJ beyond 2^53, 2.5 MWh, would lose digits.)
- ``resets_at``: unix seconds when the period resets; for a ``range``, when it ends.
- ``uid`` lines map the uids of users named in budgets to their names (from this host's
  user database), for a submission whose ``job_desc.user_name`` is unset.
- Only budgets whose period is under way are written; anything else is ignored by readers,
  so later versions may add lines or trailing tokens.

Names are written only when they are one token of printable ASCII (Slurm's user and account
names are); a budget or user that is not is left out and reported, so no name can add a line
or shift a token.
"""

from __future__ import annotations

import os
import pwd
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from jobenergy.core.errors import ConfigError

HEADER = "# jobenergy budget state v1"
#: One token of printable ASCII: no space, tab, newline or other control character.
_TOKEN = re.compile(r"[!-~]{1,64}")
_MICRO = 1_000_000


def is_token(name: str) -> bool:
    """Return True when ``name`` can be written as one token (and is not the ``-`` of none)."""
    return name != "-" and _TOKEN.fullmatch(name) is not None


@dataclass(frozen=True)
class StateEntry:
    """One budget as the submit script needs it; ``used``/``limit`` in µJ or µg CO2e."""

    id: int
    scope: str
    account: str
    user: str
    policy: str
    unit: str  # "kwh" | "kg_co2e"
    period: str
    used: int
    limit: int
    resets_at: int | None


def _decimal(inner: int, unit: str, *, up: bool) -> str:
    """Return ``inner`` µJ (kWh) or µg (kg) as a 6-place decimal, rounded down or up."""
    per_unit = 3_600_000_000_000 if unit == "kwh" else 1_000_000_000
    micros, rest = divmod(inner * _MICRO, per_unit)
    if up and rest:
        micros += 1
    whole, frac = divmod(micros, _MICRO)
    return f"{whole}.{frac:06d}"


def render(entries: Iterable[StateEntry], generated_s: int, uids: Mapping[str, int]
           ) -> tuple[str, list[str]]:
    """Return the file's text and the problems (entries and users left out, and why)."""
    lines = [HEADER, f"generated {int(generated_s)}"]
    problems = []
    for e in entries:
        names = [n for n in (e.account, e.user) if n]
        bad = [n for n in names if not is_token(n)]
        if bad or e.policy not in ("warn", "deny") or e.unit not in ("kwh", "kg_co2e"):
            problems.append(f"budget {e.id} left out: name {bad[0]!r} is not one printable "
                            "token" if bad else f"budget {e.id} left out: bad policy or unit")
            continue
        unit = "kWh" if e.unit == "kwh" else "kgCO2e"
        resets = "-" if e.resets_at is None else str(int(e.resets_at))
        lines.append(" ".join([
            "budget", e.scope, e.account or "-", e.user or "-", e.policy, unit,
            _decimal(e.used, e.unit, up=False), _decimal(e.limit, e.unit, up=True), resets,
            str(int(e.id)), e.period]))
    for user, uid in sorted(uids.items()):
        if is_token(user) and isinstance(uid, int) and uid >= 0:
            lines.append(f"uid {uid} {user}")
        else:
            problems.append(f"user {user!r} left out of the uid lines")
    return "\n".join(lines) + "\n", problems


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` at once, mode 0644: readers see the old or the new file.

    The temporary file is created next to it with ``O_EXCL`` (``mkstemp``), so nothing at a
    guessable name is followed; ``os.replace`` replaces a link at ``path`` itself, never the
    file it points to.

    Raises:
        ConfigError: The folder is missing or not writable.
    """
    folder = path.parent
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise ConfigError(f"cannot write the budget state in {folder}: "
                          f"{err.strerror or err}") from err
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(text)
            out.flush()
            os.fchmod(out.fileno(), 0o644)  # slurmctld (SlurmUser) reads it; umask aside
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise ConfigError(f"cannot write the budget state {path}: {err.strerror or err}") \
            from err


def local_uids(users: Iterable[str]) -> dict[str, int]:
    """Return the uid of each user this host's user database knows (others are left out)."""
    uids = {}
    for user in users:
        if not is_token(user):
            continue
        try:
            uids[user] = pwd.getpwnam(user).pw_uid
        except KeyError:
            pass
    return uids


def write_state(path: Path, entries: list[StateEntry], generated_s: int) -> list[str]:
    """Render ``entries`` with this host's uids of their users and write them at ``path``.

    Returns:
        The problems (entries or users left out), to be logged.

    Raises:
        ConfigError: The file cannot be written.
    """
    text, problems = render(entries, generated_s, local_uids(e.user for e in entries if e.user))
    write_atomic(path, text)
    return problems
