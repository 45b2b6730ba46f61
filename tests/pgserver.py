"""Start a throwaway PostgreSQL server for tests and benchmarks.

Used by ``tests/conftest.py`` (fixture ``pg_url``) and ``bench/*.py``. It runs Debian's server
binaries (``/usr/lib/postgresql/<version>/bin``) on 127.0.0.1 with a free port, the Unix socket
in its own temporary directory, and durability off (``fsync=off``): the data is disposable.
PostgreSQL refuses to run as root, so as root the data directory is given to the ``postgres``
system user and every server command runs through ``runuser -u postgres --``.

A streaming replica of such a server (:meth:`PgServer.start_replica`) is taken with
``pg_basebackup -R`` and started on its own port; :meth:`PgServer.wait_for_replay` waits until
it has replayed everything the primary had written.

Stdlib only: importing this never needs SQLAlchemy or a driver (queries go through ``psql``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from jobenergy.sim.processes import free_port  # one port helper (never repeats a recent one)

NOT_FOUND_MESSAGE = (
    "PostgreSQL server not found: apt-get install postgresql (or run `make test`, which "
    "installs it)"
)


class PgServerError(RuntimeError):
    """The PostgreSQL server could not be set up or started."""


def find_pg_bin() -> Path | None:
    """Return the newest ``/usr/lib/postgresql/*/bin`` holding initdb and pg_ctl, or None."""
    candidates = []
    for bindir in glob.glob("/usr/lib/postgresql/*/bin"):
        path = Path(bindir)
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            try:
                version = float(path.parent.name)
            except ValueError:
                version = 0.0
            candidates.append((version, path))
    if candidates:
        return max(candidates)[1]
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    return None


@dataclass
class PgServer:
    """A private PostgreSQL cluster in a temporary directory.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. With ``primary``, the
    cluster is a streaming replica of that (running) server instead of a new one.
    """

    bindir: Path
    port: int = field(default_factory=free_port)
    user: str = "postgres"
    root: Path | None = None
    primary: PgServer | None = None
    _as_postgres: bool = False

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if self._as_postgres else list(args)

    def _run(self, *args: str) -> None:
        result = subprocess.run(self._cmd(*args), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            log = ""
            if self.root is not None and (self.root / "server.log").exists():
                log = (self.root / "server.log").read_text(errors="replace")[-4000:]
            raise PgServerError(
                f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}\n{log}"
            )

    @property
    def data_dir(self) -> Path:
        """Return the cluster's data directory."""
        assert self.root is not None
        return self.root / "data"

    def start(self) -> PgServer:
        """Run initdb (or, for a replica, pg_basebackup) and start the server; return self."""
        self.root = Path(tempfile.mkdtemp(prefix="jobenergy-pg-"))
        if os.geteuid() == 0:
            self._as_postgres = True
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        if self.primary is None:
            # initdb's pg_hba.conf trusts replication connections from 127.0.0.1 too.
            self._run(
                str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", self.user,
                "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync",
            )
        else:
            # -R: standby.signal and primary_conninfo, so it starts as a streaming replica;
            # the primary's postgresql.conf comes along (the port and socket are options).
            self._run(
                str(self.bindir / "pg_basebackup"), "-h", "127.0.0.1",
                "-p", str(self.primary.port), "-U", self.primary.user, "-D", str(self.data_dir),
                "-R", "-X", "stream", "-c", "fast", "--no-sync",
            )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-o", options,
            "-l", str(self.root / "server.log"), "-w", "-t", "60", "start",
        )
        return self

    def start_replica(self) -> PgServer:
        """Start a streaming replica of this (running) server on another port; return it.

        The replica is read-only (hot standby) and follows every database of this server,
        those created later included. Stop it (:meth:`stop`) before this one.
        """
        return PgServer(self.bindir, user=self.user, primary=self).start()

    def query(self, sql: str, database: str = "postgres") -> str:
        """Run one SQL statement with ``psql`` and return its unaligned output, stripped."""
        args = (str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                "-U", self.user, "-d", database, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                "-c", sql)
        result = subprocess.run(self._cmd(*args), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise PgServerError(f"psql {sql!r} failed ({result.returncode}): "
                                f"{result.stderr.strip()}")
        return result.stdout.strip()

    def wait_for_replay(self, timeout_s: float = 60.0) -> None:
        """Wait until this replica has replayed all WAL its primary had written when called.

        Polls ``pg_last_wal_replay_lsn()`` here against the primary's
        ``pg_current_wal_insert_lsn()`` (read once, at the call). Not ``pg_current_wal_lsn()``:
        that is the *write* position, and with ``synchronous_commit=off`` (as these servers run)
        a commit the client has already seen can still sit in WAL buffers past it, so the replica
        "caught up" without it (a flaky CI failure).

        Raises:
            PgServerError: Not a replica, not in recovery, or not caught up in time.
        """
        if self.primary is None:
            raise PgServerError("wait_for_replay: this server is not a replica")
        target = self.primary.query("SELECT pg_current_wal_insert_lsn()")
        deadline = time.monotonic() + timeout_s
        state = ""
        while True:
            state = self.query(
                f"SELECT pg_is_in_recovery(), "
                f"coalesce(pg_last_wal_replay_lsn() >= '{target}'::pg_lsn, false), "
                "pg_last_wal_replay_lsn()")
            in_recovery, caught_up, _lsn = state.split("|")
            if in_recovery != "t":
                raise PgServerError("the replica is not in recovery (not a standby)")
            if caught_up == "t":
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        raise PgServerError(f"the replica did not replay up to {target} within {timeout_s}s "
                            f"(recovery, caught up, replayed: {state})")

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        """Return the SQLAlchemy URL of ``database`` on this server."""
        return f"{driver}://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its SQLAlchemy URL."""
        self._run(
            str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
            "-U", self.user, name,
        )
        return self.url(name)

    def stop(self) -> None:
        """Stop the server and delete its directory."""
        if self.root is None:
            return
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate",
                      "-w", "stop")
        except PgServerError:
            pass  # already stopped: still remove the directory
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
