"""The Slurm hook authenticates every post (MUNGE by default, or a hooks token), keeps the
events the collector refuses for their credentials, and keeps credentials out of argv.

Real ``jobenergy server`` processes: one with ``--auth munge`` on the suite's private munged,
one with ``--auth token``. The hook (``slurm_plugins/jobenergy-hook.sh``) runs as root, as
slurmd/slurmctld run it, or as ``nobody`` (``runuser``) for a normal user. Where what curl
is given matters (argv, the signed request target), ``JOBENERGY_CURL`` points at a fake curl
that records its argv, its stdin and every process's command line, then fails like an
unreachable collector.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from jobenergy.core import munge
from jobenergy.core.request_auth import BearerAuth, MungeAuth, munge_payload
from jobenergy.core.schema import JobEvent
from jobenergy.sim.processes import free_port, start_server, stop

REPO = Path(__file__).resolve().parents[2]
HOOK = REPO / "slurm_plugins" / "jobenergy-hook.sh"
CLUSTER = "c1"
EVENTS = "/api/v1/jobs/events"
NOBODY = 65534


def _unavailable(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    if shutil.which("bash") is None or shutil.which("curl") is None:
        _unavailable("the Slurm hooks need bash and curl: apt-get install curl (make test does)")
    if shutil.which("munge") is None:
        _unavailable("the hook signs with the munge command: apt-get install munge")


def _need_root() -> None:
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        _unavailable("needs root and runuser: the hooks run as root (CI runs as root)")


def _cli(*args: str, db_url: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "jobenergy.cli.main", *args],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "JOBENERGY_SERVER_DB_URL": db_url})
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc.stdout.strip()


@dataclass
class Server:
    url: str
    db_url: str
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _server(tmp: Path, template: Path, auth: str, *extra: str) -> Iterator[Server]:
    db = tmp / "jobenergy.db"
    shutil.copyfile(template, db)
    db_url = f"sqlite:///{db}"
    port = free_port()
    log = tmp / "server.log"
    proc = start_server(db_url, port, log, *extra, auth=auth)
    try:
        yield Server(f"http://127.0.0.1:{port}", db_url, log)
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def munge_server(tmp_path_factory: pytest.TempPathFactory, _sqlite_template: Path,
                 munge_socket: str) -> Iterator[Server]:
    """A server that takes MUNGE credentials from the suite's private munged only."""
    yield from _server(tmp_path_factory.mktemp("munge-server"), _sqlite_template, "munge",
                       "--munge-socket", munge_socket)


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory,
                 _sqlite_template: Path) -> Iterator[Server]:
    """A server that takes static tokens only."""
    yield from _server(tmp_path_factory.mktemp("token-server"), _sqlite_template, "token")


@pytest.fixture
def work() -> Iterator[Path]:
    """A folder ``nobody`` can reach (pytest's tmp_path is root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="jobenergy-hook-auth-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Hook:
    """Runs the hook with a settings file, an outbox and a syslog stand-in under ``root``."""

    def __init__(self, root: Path, munge_socket: str) -> None:
        self.root = root
        self.outbox = root / "outbox"
        self.syslog = root / "syslog"
        self.syslog.touch()
        self.syslog.chmod(0o666)  # the hook may run as nobody
        self.settings = {"JOBENERGY_CLUSTER": CLUSTER, "JOBENERGY_OUTBOX": str(self.outbox),
                         "JOBENERGY_GPU_MAP_DIR": str(root / "gpus"),
                         "JOBENERGY_MUNGE_SOCKET": munge_socket,
                         "JOBENERGY_CURL_TIMEOUT_S": "10"}

    def run(self, role: str, job: str, as_user: str | None = None,
            **settings: str) -> subprocess.CompletedProcess[str]:
        conf = self.root / "hooks.env"
        conf.write_text("".join(f"{k}={shlex.quote(v)}\n"
                                for k, v in {**self.settings, **settings}.items()))
        conf.chmod(0o644)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "JOBENERGY_HOOK_CONF": str(conf),
            "SLURM_JOB_ID": job, "SLURM_JOB_USER": "alice", "SLURM_JOB_UID": "1001",
            "SLURM_JOB_ACCOUNT": "proj1", "SLURM_JOB_NAME": "train",
            "SLURM_JOB_NODELIST": "n1", "SLURM_JOB_EXIT_CODE2": "0:0",
            # syslog stand-in: bash imports this exported function into the hook.
            "BASH_FUNC_logger%%": f'() {{ printf "%s\\n" "$*" >> '
                                  f'{shlex.quote(str(self.syslog))}; }}',
        }
        argv = ["bash", str(HOOK), role]
        if as_user is not None:
            argv = ["runuser", "-u", as_user, "--", *argv]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60,
                              check=False)
        # Whatever happened, the hook never fails the job and prints nothing.
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), proc
        return proc

    def kept(self) -> list[Path]:
        return sorted(self.outbox.glob("*.json"))

    def log(self) -> str:
        return self.syslog.read_text()


@pytest.fixture
def hook(work: Path, munge_socket: str) -> Hook:
    return Hook(work, munge_socket)


def _job(server: Server, auth: httpx.Auth, job: str) -> httpx.Response:
    with httpx.Client(base_url=server.url, auth=auth, timeout=10) as api:
        return api.get(f"/api/v1/jobs/{job}", params={"cluster": CLUSTER})


def _token(server: Server, role: str = "hooks", cluster: str = CLUSTER) -> str:
    token = _cli("auth", "token", "--cluster", cluster, "--role", role, db_url=server.db_url)
    assert token.startswith("jet_")
    return token


def _token_file(root: Path, token: str, mode: int = 0o600) -> Path:
    path = root / f"hooks-{secrets.token_hex(4)}.token"
    path.write_text(f"\n  {token}  \nsecond line ignored\n")  # first non-blank line, trimmed
    path.chmod(mode)
    return path


# -- MUNGE -------------------------------------------------------------------------------------
def test_controller_hooks_as_root_deliver_start_and_end(hook: Hook, munge_server: Server,
                                                        munge_socket: str) -> None:
    _need_root()
    url = munge_server.url
    hook.run("prolog_slurmctld", "101", JOBENERGY_URL=url)
    assert not hook.kept(), hook.log()
    hook.run("epilog_slurmctld", "101", JOBENERGY_URL=url + "/")
    assert not hook.kept(), hook.log()
    resp = _job(munge_server, MungeAuth(munge_socket), "101")
    assert resp.status_code == 200, (resp.text, munge_server.log_tail())
    job = resp.json()
    assert (job["user"], job["account"], job["name"]) == ("alice", "proj1", "train")
    assert job["start"] is not None and job["end"] is not None
    assert hook.log() == ""  # nothing went wrong


def test_kept_events_are_resent_each_with_a_fresh_credential(hook: Hook, munge_server: Server,
                                                             munge_socket: str) -> None:
    """The start event waits in the outbox while the collector is down; the end event's run
    delivers it too, signed then (a credential from the first try would be past munged's TTL
    after a real outage)."""
    _need_root()
    hook.run("prolog_slurmctld", "102", JOBENERGY_URL=f"http://127.0.0.1:{free_port()}")
    assert len(hook.kept()) == 1 and "collector unreachable" in hook.log()
    hook.run("epilog_slurmctld", "102", JOBENERGY_URL=munge_server.url)
    assert not hook.kept(), hook.log()
    job = _job(munge_server, MungeAuth(munge_socket), "102").json()
    assert job["start"] is not None and job["end"] is not None


def test_a_normal_user_is_refused_403_and_the_event_is_kept(hook: Hook, munge_server: Server,
                                                            munge_socket: str) -> None:
    _need_root()
    hook.outbox.mkdir(mode=0o700)
    os.chown(hook.outbox, NOBODY, NOBODY)
    hook.run("prolog_slurmctld", "103", as_user="nobody", JOBENERGY_URL=munge_server.url)
    kept = hook.kept()
    assert len(kept) == 1, hook.log()
    assert JobEvent.model_validate_json(kept[0].read_bytes()).job_id == "103"
    log = hook.log()
    assert "http=403" in log and "may not post job events" in log, log
    assert log.count("\n") == 1  # logged once, with the server's reason
    assert not list(hook.outbox.glob(".response.*"))  # the hook's temporary file is gone
    resp = _job(munge_server, MungeAuth(munge_socket), "103")
    assert resp.status_code == 404, resp.text  # nothing was created


def test_credential_from_another_munge_realm_is_401_and_kept(hook: Hook, munge_server: Server,
                                                             make_munged) -> None:
    _need_root()
    other = make_munged()
    hook.run("prolog_slurmctld", "104", JOBENERGY_URL=munge_server.url,
             JOBENERGY_MUNGE_SOCKET=other.socket_path)
    assert len(hook.kept()) == 1
    assert "http=401" in hook.log() and "MUNGE credential refused" in hook.log(), hook.log()


def test_munged_unreachable_keeps_the_event(hook: Hook, munge_server: Server,
                                            work: Path) -> None:
    hook.run("prolog_slurmctld", "105", JOBENERGY_URL=munge_server.url,
             JOBENERGY_MUNGE_SOCKET=str(work / "no-such.socket"))
    assert len(hook.kept()) == 1
    assert "no MUNGE credential from" in hook.log(), hook.log()


# -- tokens ------------------------------------------------------------------------------------
def test_hooks_token_in_a_0600_file_is_delivered(hook: Hook, token_server: Server,
                                                 work: Path) -> None:
    token = _token(token_server)
    hook.run("prolog_slurmctld", "201", JOBENERGY_URL=token_server.url,
             JOBENERGY_TOKEN_FILE=str(_token_file(work, token)))
    assert not hook.kept(), hook.log()
    resp = _job(token_server, BearerAuth(_token(token_server, "admin")), "201")
    assert resp.status_code == 200 and resp.json()["start"] is not None, resp.text
    assert token not in hook.log()


def test_token_file_others_can_read_is_refused_here(hook: Hook, token_server: Server,
                                                    work: Path) -> None:
    token = _token(token_server)
    path = _token_file(work, token, mode=0o644)
    hook.run("prolog_slurmctld", "202", JOBENERGY_URL=token_server.url,
             JOBENERGY_TOKEN_FILE=str(path))
    assert len(hook.kept()) == 1
    assert f"token file {path} is readable by others (mode 0644)" in hook.log(), hook.log()
    assert _job(token_server, BearerAuth(_token(token_server, "admin")), "202"
                ).status_code == 404


@pytest.mark.parametrize("which", ["revoked", "unknown"])
def test_revoked_or_unknown_token_is_401_and_kept(hook: Hook, token_server: Server, work: Path,
                                                  which: str) -> None:
    if which == "revoked":
        token = _token(token_server, cluster="gone")  # its own cluster: revoke only it
        _cli("auth", "token", "--cluster", "gone", "--role", "hooks", "--revoke",
             db_url=token_server.db_url)
    else:
        token = "jet_" + secrets.token_urlsafe(32)
    job = "203" if which == "revoked" else "204"
    hook.run("prolog_slurmctld", job, JOBENERGY_URL=token_server.url,
             JOBENERGY_TOKEN_FILE=str(_token_file(work, token)))
    assert len(hook.kept()) == 1
    log = hook.log()
    assert "http=401" in log and "unknown or revoked token" in log and token not in log, log
    assert _job(token_server, BearerAuth(_token(token_server, "admin")), job
                ).status_code == 404


def test_auth_none_sends_no_credentials(hook: Hook, token_server: Server, work: Path) -> None:
    """JOBENERGY_AUTH=none wins over a token file; the server then asks for credentials."""
    path = _token_file(work, _token(token_server))
    hook.run("prolog_slurmctld", "205", JOBENERGY_URL=token_server.url, JOBENERGY_AUTH="none",
             JOBENERGY_TOKEN_FILE=str(path))
    assert len(hook.kept()) == 1
    assert "http=401" in hook.log() and "authentication required" in hook.log(), hook.log()


# -- what curl is given ------------------------------------------------------------------------
class FakeCurl:
    """A curl that records its argv, stdin and all command lines, then fails (exit 7)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "fake-curl"
        self.argv_file = root / "curl.argv"
        self.stdin_file = root / "curl.stdin"
        self.ps_file = root / "curl.ps"
        q = shlex.quote
        self.path.write_text(
            "#!/bin/bash\n"
            f"printf '%s\\0' \"$@\" > {q(str(self.argv_file))}\n"
            f"cat > {q(str(self.stdin_file))}\n"
            # Every process's command line while "curl" runs (the hook is its parent).
            f"for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < \"$f\"; echo; done "
            f"> {q(str(self.ps_file))} 2>/dev/null\n"
            "exit 7\n")
        self.path.chmod(0o755)

    @property
    def called(self) -> bool:
        return self.argv_file.exists()

    def argv(self) -> list[str]:
        return self.argv_file.read_bytes().decode().split("\0")[:-1]

    def headers(self) -> dict[str, str]:
        lines = self.stdin_file.read_text().splitlines()
        return dict(line.split(": ", 1) for line in lines)


@pytest.fixture
def fake_curl(work: Path) -> FakeCurl:
    return FakeCurl(work)


def _after(argv: list[str], option: str) -> str:
    return argv[argv.index(option) + 1]


def test_token_reaches_curl_on_stdin_never_in_argv(hook: Hook, fake_curl: FakeCurl,
                                                   work: Path) -> None:
    token = "jet_" + secrets.token_urlsafe(32)
    hook.run("prolog_slurmctld", "301", JOBENERGY_URL="http://127.0.0.1:9",
             JOBENERGY_CURL=str(fake_curl.path),
             JOBENERGY_TOKEN_FILE=str(_token_file(work, token)))
    assert fake_curl.called and len(hook.kept()) == 1
    assert fake_curl.headers()["Authorization"] == f"Bearer {token}"
    argv = fake_curl.argv()
    assert _after(argv, "-H") == "@-"
    assert not any(token in arg for arg in argv), argv
    ps = fake_curl.ps_file.read_text()
    assert str(fake_curl.path) in ps  # the snapshot did see the running "curl"
    assert token not in ps
    assert "curl_exit=7" in hook.log() and token not in hook.log()


@pytest.mark.parametrize(("url", "target"), [
    ("http://127.0.0.1:9", EVENTS),
    ("http://localhost:9/", EVENTS),
    ("http://[::1]:9/jobenergy", "/jobenergy" + EVENTS),
    ("http://127.0.0.1:9/a/je~v1/", "/a/je~v1" + EVENTS),
])
def test_munge_credential_signs_the_target_and_body_curl_sends(
        hook: Hook, fake_curl: FakeCurl, munge_socket: str, url: str, target: str) -> None:
    hook.run("epilog_slurmctld", "302", JOBENERGY_URL=url, JOBENERGY_CURL=str(fake_curl.path))
    assert fake_curl.called
    argv = fake_curl.argv()
    assert argv[-1] == url.rstrip("/") + EVENTS
    assert "--path-as-is" in argv  # curl sends the path as given: what was signed
    scheme, _, credential = fake_curl.headers()["Authorization"].partition(" ")
    assert scheme == "MUNGE" and credential.startswith("MUNGE:")
    assert not any(credential in arg for arg in argv), argv
    assert credential not in fake_curl.ps_file.read_text()
    (kept,) = hook.kept()  # the file curl was given (--data-binary @file), moved here
    assert _after(argv, "--data-binary").startswith("@")
    body = kept.read_bytes()
    decoded = munge.decode(credential, socket_path=munge_socket)
    assert decoded.payload == munge_payload("POST", target, body)
    assert decoded.uid == os.geteuid()


def test_each_post_gets_a_fresh_credential(hook: Hook, fake_curl: FakeCurl) -> None:
    hook.run("prolog_slurmctld", "303", JOBENERGY_URL="http://127.0.0.1:9",
             JOBENERGY_CURL=str(fake_curl.path))
    first = fake_curl.headers()["Authorization"]
    hook.run("prolog_slurmctld", "303", JOBENERGY_URL="http://127.0.0.1:9",
             JOBENERGY_CURL=str(fake_curl.path))
    assert fake_curl.headers()["Authorization"] != first


def test_plain_http_off_loopback_is_refused_unless_allowed(hook: Hook,
                                                           fake_curl: FakeCurl) -> None:
    url = "http://192.0.2.10:8080"  # TEST-NET-1
    hook.run("prolog_slurmctld", "304", JOBENERGY_URL=url, JOBENERGY_CURL=str(fake_curl.path),
             JOBENERGY_AUTH="none")
    assert not fake_curl.called  # refused before curl
    assert len(hook.kept()) == 1
    assert "refusing plain HTTP to 192.0.2.10" in hook.log(), hook.log()
    hook.run("prolog_slurmctld", "304", JOBENERGY_URL=url, JOBENERGY_CURL=str(fake_curl.path),
             JOBENERGY_AUTH="none", JOBENERGY_ALLOW_INSECURE="1")
    assert fake_curl.called and fake_curl.argv()[-1] == url + EVENTS
    assert "Authorization" not in fake_curl.headers()  # JOBENERGY_AUTH=none
    assert len(hook.kept()) == 2


def test_https_uses_the_ca_file(hook: Hook, fake_curl: FakeCurl, work: Path) -> None:
    ca = work / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    hook.run("prolog_slurmctld", "305", JOBENERGY_URL="https://jobenergy.example.org:8443/x/",
             JOBENERGY_CURL=str(fake_curl.path), JOBENERGY_AUTH="none",
             JOBENERGY_CA_FILE=str(ca))
    argv = fake_curl.argv()
    assert _after(argv, "--cacert") == str(ca)
    assert argv[-1] == "https://jobenergy.example.org:8443/x" + EVENTS
    assert _after(argv, "--proto") == "=http,https"


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "http://127.0.0.1:9/a b",
                                 "http://127.0.0.1:9/?q=1", "127.0.0.1:8080"])
def test_unusable_urls_are_refused_before_curl(hook: Hook, fake_curl: FakeCurl,
                                               url: str) -> None:
    hook.run("prolog_slurmctld", "306", JOBENERGY_URL=url, JOBENERGY_CURL=str(fake_curl.path),
             JOBENERGY_AUTH="none")
    assert not fake_curl.called and len(hook.kept()) == 1
    assert "JOBENERGY_URL=" in hook.log(), hook.log()


def test_unknown_auth_mode_is_refused(hook: Hook, fake_curl: FakeCurl) -> None:
    hook.run("prolog_slurmctld", "307", JOBENERGY_URL="http://127.0.0.1:9",
             JOBENERGY_CURL=str(fake_curl.path), JOBENERGY_AUTH="kerberos")
    assert not fake_curl.called and len(hook.kept()) == 1
    assert "JOBENERGY_AUTH=kerberos: use munge, token or none" in hook.log()


def test_outbox_and_events_stay_private(hook: Hook, fake_curl: FakeCurl) -> None:
    hook.run("prolog_slurmctld", "308", JOBENERGY_URL="http://127.0.0.1:9",
             JOBENERGY_CURL=str(fake_curl.path))
    assert stat.S_IMODE(hook.outbox.stat().st_mode) == 0o700
    assert [stat.S_IMODE(p.stat().st_mode) for p in hook.kept()] == [0o600]
    assert [p.name for p in hook.outbox.iterdir()] == [hook.kept()[0].name]  # no leftovers
