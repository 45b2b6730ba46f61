"""Start a throwaway munged for tests and benchmarks.

Used by ``tests/conftest.py`` (fixtures ``munge_socket`` and ``make_munged``) and
``bench/munge_bench.py``. Each server runs Debian's ``/usr/sbin/munged`` in the foreground
(``-F``) as a child process, with its own random key, socket, log, pid and seed files in its
own temporary directory, so it never touches the host's munged (``/run/munge``, ``/etc/munge``).

munged's path checks shape the layout: the key must be owned by munged's user and neither
readable nor writable by group or others ("Keyfile is insecure"), and no directory above the
key or socket may be writable by others without the sticky bit. Every directory above the
socket must be searchable by all, or munged refuses to start ("Socket is inaccessible:
execute permissions for all required"); ``tempfile.mkdtemp`` makes 0700 directories, so the
root is opened up to 0755.

Stdlib only: importing this never needs jobenergy or libmunge.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

NOT_FOUND_MESSAGE = (
    "munged not found: apt-get install munge (or run `make test`, which installs it)"
)

#: Size of each server's random key (munged refuses keys under 32 bytes).
KEY_BYTES = 1024


class MungeServerError(RuntimeError):
    """munged could not be set up or started."""


def find_munged() -> Path | None:
    """Return the munged executable (``/usr/sbin/munged`` on Debian), or None."""
    for candidate in ("/usr/sbin/munged", shutil.which("munged")):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def _answers(path: Path) -> bool:
    """Return True when something accepts connections on the Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True


@dataclass
class MungeServer:
    """A private munged with its own key in a temporary directory.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. Two servers made with
    the default ``key`` have different keys: each refuses the other's credentials.

    Attributes:
        munged: the munged executable.
        key: the key; None for :data:`KEY_BYTES` random bytes.
        origin: the address munged puts in its credentials (``--origin``); fixed so that tests
            do not depend on how this host resolves its own name.
        max_ttl_s: munged's ``--max-ttl``.
        threads: munged's ``--num-threads``.
        root: the temporary directory while the server runs.
    """

    munged: Path
    key: bytes | None = None
    origin: str = "127.0.0.1"
    max_ttl_s: int = 3600
    threads: int = 2
    root: Path | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def socket_path(self) -> str:
        """Return the path of munged's socket (for ``-S`` / ``socket_path=``)."""
        assert self.root is not None, "server not started"
        return str(self.root / "socket" / "munge.socket")

    @property
    def pid(self) -> int | None:
        """Return munged's process id while it runs."""
        return self._process.pid if self._process is not None else None

    def log(self) -> str:
        """Return the end of munged's log (what it wrote on stderr and in its log file)."""
        if self.root is None:
            return ""
        parts = []
        for name in ("munged.stderr", "munged.log"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def start(self, timeout_s: float = 30.0) -> MungeServer:
        """Write the key, start munged and wait until its socket accepts connections.

        Args:
            timeout_s: how long munged may take to answer.

        Returns:
            self.

        Raises:
            MungeServerError: munged exited or did not answer in time (its log included).
        """
        # Under /tmp (1777, sticky: munged accepts it), not pytest's 0700 base directory, so
        # that other users (the "credential from nobody" test) can reach the socket.
        self.root = Path(tempfile.mkdtemp(prefix="jobenergy-munge-", dir="/tmp"))
        try:
            self._start(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout_s: float) -> None:
        assert self.root is not None
        os.chmod(self.root, 0o755)
        (self.root / "socket").mkdir(mode=0o755)
        key_path = self.root / "munge.key"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "wb") as key_file:
            key_file.write(self.key if self.key is not None else os.urandom(KEY_BYTES))
        args = [
            str(self.munged), "--foreground",
            f"--socket={self.socket_path}",
            f"--key-file={key_path}",
            f"--log-file={self.root / 'munged.log'}",
            f"--pid-file={self.root / 'munged.pid'}",
            f"--seed-file={self.root / 'munged.seed'}",
            f"--origin={self.origin}",
            f"--max-ttl={self.max_ttl_s}",
            f"--num-threads={self.threads}",
        ]
        # In the foreground munged logs to stderr; keep it in a file to show on failure.
        with open(self.root / "munged.stderr", "wb") as stderr:
            self._process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                start_new_session=True,  # a ^C in the test run must not reach it first
            )
        deadline = time.monotonic() + timeout_s
        while not _answers(Path(self.socket_path)):
            if self._process.poll() is not None:
                raise MungeServerError(
                    f"munged exited with status {self._process.returncode} before its socket "
                    f"answered\n{self.log()}"
                )
            if time.monotonic() > deadline:
                raise MungeServerError(
                    f"munged's socket did not answer within {timeout_s:g} s\n{self.log()}"
                )
            time.sleep(0.01)  # polling interval, not a wait for a guessed duration

    def stop(self) -> None:
        """Stop munged (SIGTERM, then SIGKILL after 10 s) and delete its directory."""
        try:
            if self._process is not None and self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
        finally:
            self._process = None
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None

    def __enter__(self) -> MungeServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
