"""Idempotent changes for ``jobenergy setup``: folders, files, users, commands, one line each.

Every file setup writes carries a marker line, ``# jobenergy-setup: sha256=<hex> ...``: the
SHA-256 of the rest of the file as setup wrote it (first line; second after a ``#!`` line). On
the next run a file is

* ``unchanged``      when it already holds what setup would write (and has its mode, owner);
* ``updated``        when setup wrote it and nobody edited it since (the digest still matches):
                     a new release or other flags;
* ``kept (differs)`` when the admin edited it (the digest differs, or there is no marker):
                     setup never overwrites that without ``--force``;
* ``created``        when it is missing.

With a staging root (``--root DIR``) every path lies under DIR, and neither users,
ownership nor commands (``useradd``, ``systemctl``) are touched: they belong to the host the
tree is installed on (a package's metadata, or setup run there).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from jobenergy.core.errors import JobEnergyError

MARKER = "# jobenergy-setup: sha256={digest}; edits are kept unless --force"
_MARKER_RE = re.compile(r"^# jobenergy-setup: sha256=([0-9a-f]{64})\b")

CHANGED = ("created", "updated", "ran")


class SetupError(JobEnergyError):
    """A role cannot be set up as asked (bad flags, a missing user, not root)."""


@dataclass(frozen=True)
class Change:
    """One line of setup's report."""

    action: str  # created, updated, unchanged, kept (differs), skipped, ran, not built
    what: str
    detail: str = ""

    def line(self) -> str:
        """Return the report line."""
        return f"{self.action:<15} {self.what}" + (f"  {self.detail}" if self.detail else "")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def with_marker(content: str) -> str:
    """Return ``content`` with its marker line (after a ``#!`` line, else first)."""
    line = MARKER.format(digest=_digest(content)) + "\n"
    if content.startswith("#!"):
        first, _, rest = content.partition("\n")
        return f"{first}\n{line}{rest}"
    return line + content


def pristine(text: str) -> bool:
    """Return True when ``text`` is a file setup wrote and nobody edited since."""
    lines = text.splitlines(keepends=True)
    for index in (0, 1):
        if index < len(lines) and (match := _MARKER_RE.match(lines[index])):
            rest = "".join(lines[:index] + lines[index + 1:])
            return match.group(1) == _digest(rest)
    return False


def _owner_ids(owner: str, group: str | None) -> tuple[int, int]:
    """Return (uid, gid); ``group`` None: the owner's primary group."""
    import grp

    try:
        user = pwd.getpwnam(owner)
    except KeyError as err:
        raise SetupError(f"no user {owner!r} on this host") from err
    if group is None:
        return user.pw_uid, user.pw_gid
    try:
        return user.pw_uid, grp.getgrnam(group).gr_gid
    except KeyError as err:
        raise SetupError(f"no group {group!r} on this host") from err


class Installer:
    """Applies changes under ``root`` (``/`` unless staging) and records one line each."""

    def __init__(self, root: Path | None, force: bool = False) -> None:
        self.staging = root is not None
        self.root = (root or Path("/")).resolve()
        self.force = force
        self.changes: list[Change] = []

    def path(self, target: str | Path) -> Path:
        """Return where ``target`` (an absolute path on the host) lies under the root."""
        return self.root / str(target).lstrip("/")

    def _note(self, action: str, what: str | Path, detail: str = "") -> Change:
        change = Change(action, str(what), detail)
        self.changes.append(change)
        return change

    def note(self, action: str, what: str | Path, detail: str = "") -> Change:
        """Record a line that is not a file change (a skipped step, a hint)."""
        return self._note(action, what, detail)

    @property
    def changed(self) -> bool:
        """Return True when anything was created, updated or run."""
        return any(c.action in CHANGED for c in self.changes)

    def _ids(self, owner: str, group: str | None) -> tuple[int, int] | None:
        return None if self.staging else _owner_ids(owner, group)

    def _fix(self, path: Path, mode: int, ids: tuple[int, int] | None) -> list[str]:
        """Give ``path`` its mode and owner; return what had to change."""
        st = path.lstat()
        fixed = []
        if ids is not None and (st.st_uid, st.st_gid) != ids:
            os.chown(path, *ids, follow_symlinks=False)
            fixed.append("owner")
        if st.st_mode & 0o7777 != mode:
            os.chmod(path, mode)
            fixed.append(f"mode, was {st.st_mode & 0o7777:04o}")
        return fixed

    @staticmethod
    def _detail(mode: int, owner: str, group: str | None) -> str:
        return f"({mode:04o} {owner}{':' + group if group else ''})"

    def directory(self, target: str, mode: int, owner: str = "root",
                  group: str | None = None) -> Change:
        """Make a folder (parents as 0755 root) and give it ``mode`` and owner (``group``
        None: the owner's primary group)."""
        ids = self._ids(owner, group)
        path = self.path(target)
        detail = self._detail(mode, owner, group)
        if path.is_symlink() and path.is_dir():
            return self._note("unchanged", target, "(a symlink to a folder: left as it is)")
        if path.exists() and not path.is_dir():
            raise SetupError(f"{target} exists and is not a folder")
        if not path.exists():
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            path.mkdir()
            self._fix(path, mode, ids)
            return self._note("created", target, detail)
        fixed = self._fix(path, mode, ids)
        return self._note("updated" if fixed else "unchanged", target,
                          f"{detail} {', '.join(fixed)}" if fixed else detail)

    def file(self, target: str, content: str, mode: int, owner: str = "root",
             group: str | None = None) -> Change:
        """Write a text file with its marker, unless the admin edited the one there."""
        return self._write(target, with_marker(content).encode(), mode, owner, group,
                           text=True)

    def binary(self, target: str, data: bytes, mode: int, owner: str = "root",
               group: str | None = None) -> Change:
        """Write a built file (no marker: nobody edits it), replacing a different one."""
        return self._write(target, data, mode, owner, group, text=False)

    def _write(self, target: str, data: bytes, mode: int, owner: str, group: str | None,
               text: bool) -> Change:
        ids = self._ids(owner, group)
        path = self.path(target)
        detail = self._detail(mode, owner, group)
        if path.is_symlink():
            if not self.force:
                return self._note("kept (symlink)", target,
                                  "a link the admin made: --force replaces it with a file")
            action = "updated"
        elif not path.exists():
            action = "created"
        elif not path.is_file():
            raise SetupError(f"{target} exists and is not a plain file")
        else:
            try:
                old = path.read_bytes()
            except OSError as err:
                raise SetupError(f"cannot read {target}: {err.strerror}") from err
            if old == data:
                fixed = self._fix(path, mode, ids)
                return self._note("updated" if fixed else "unchanged", target,
                                  f"{detail} {', '.join(fixed)}" if fixed else detail)
            if text and not self.force and not pristine(old.decode(errors="replace")):
                return self._note("kept (differs)", target,
                                  "edited here: --force replaces it with setup's version")
            action = "updated"
        self._replace(path, data, mode, ids)
        return self._note(action, target, detail)

    @staticmethod
    def _replace(path: Path, data: bytes, mode: int, ids: tuple[int, int] | None) -> None:
        """Write ``path`` atomically: a temporary file beside it, then rename."""
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), mode)  # before any byte: never readable by others
                if ids is not None:
                    os.fchown(out.fileno(), *ids)
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def system_user(self, name: str, home: str, comment: str) -> Change:
        """Create an unprivileged system user (and its group) unless it exists."""
        what = f"user {name}"
        try:
            pwd.getpwnam(name)
        except KeyError:
            pass
        else:
            return self._note("unchanged", what)
        argv = ["useradd", "--system", "--user-group", "--home-dir", home, "--no-create-home",
                "--shell", "/usr/sbin/nologin", "--comment", comment, name]
        if self.staging:
            return self._note("skipped", what, f"(staging root: on the host, {' '.join(argv)})")
        self._run(argv)
        return self._note("created", what, "(system user, no login)")

    def command(self, argv: Sequence[str], why: str) -> Change:
        """Run a host command (not when staging, nor without systemd for systemctl)."""
        what = " ".join(argv)
        if self.staging:
            return self._note("skipped", what, "(staging root)")
        if argv[0] == "systemctl" and not Path("/run/systemd/system").is_dir():
            return self._note("skipped", what, "(systemd is not running here)")
        self._run(argv)
        return self._note("ran", what, why)

    @staticmethod
    def _run(argv: Sequence[str]) -> None:
        program = shutil.which(argv[0])
        if program is None:
            raise SetupError(f"{argv[0]} not found: cannot run {' '.join(argv)}")
        out = subprocess.run([program, *argv[1:]], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            reason = (out.stderr or out.stdout).strip().splitlines()
            raise SetupError(f"{' '.join(argv)} failed: {reason[0] if reason else out.returncode}")
