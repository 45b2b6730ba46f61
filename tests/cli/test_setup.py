"""``jobenergy setup``: the install steps of deploy/INSTALL.md, run as written into staging roots.

The commands come out of INSTALL.md's blocks marked ``<!-- install-step: HOST -->``, so the page
and the program cannot drift apart. Each host's tree is then checked: files and modes, the
configs loaded by the settings classes the services use, the hooks, the SPANK plugin built
against the real ``slurm/spank.h``, the units accepted by ``systemd-analyze verify`` and rated
"OK" by ``systemd-analyze security``; a second run changes nothing.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "deploy" / "INSTALL.md"
URL = "https://jobenergy.example.org:8443"
HOSTS = ("collector", "compute", "controller", "login")
GOOD = ("PERFECT", "SAFE", "OK")


def _need(found: object, message: str) -> None:
    if not found:
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _jobenergy() -> list[str]:
    script = Path(sys.executable).with_name("jobenergy")
    return [str(script)] if script.exists() else [sys.executable, "-m", "jobenergy.cli.main"]


def install_steps() -> dict[str, list[tuple[dict[str, str], list[str]]]]:
    """Return INSTALL.md's setup commands per host: (environment, argv after ``jobenergy``)."""
    text = INSTALL.read_text()
    steps: dict[str, list[tuple[dict[str, str], list[str]]]] = {}
    for host, block in re.findall(r"<!-- install-step: (\w+) -->\n```sh\n(.*?)\n```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line)
            if not words:
                continue
            env = {}
            while "=" in words[0] and not words[0].startswith("/"):
                name, _, value = words.pop(0).partition("=")
                env[name] = value
            assert words[0].endswith("/jobenergy") and words[1] == "setup", line
            steps.setdefault(host, []).append((env, words[1:]))
    return steps


def run_setup(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``jobenergy ARGS`` as a node would."""
    return subprocess.run([*_jobenergy(), *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, **(env or {})}, check=False)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def _bash_env(env_file: Path, name: str) -> str:
    out = subprocess.run(["bash", "-c", f'set -eu; . "$1"; printf %s "${{{name}:-}}"', "_",
                          str(env_file)], capture_output=True, text=True, check=True)
    return out.stdout


def _check_server(root: Path) -> None:
    from jobenergy.collector.settings import ServerSettings

    etc = root / "etc/jobenergy"
    assert _mode(etc / "server.env") == 0o600
    assert _mode(etc / "server.toml") == 0o640
    assert _mode(etc / "tls") == 0o750
    assert _mode(root / "var/lib/jobenergy-server") == 0o700
    db_url = _bash_env(etc / "server.env", "JOBENERGY_SERVER_DB_URL")
    assert db_url.startswith("postgresql+psycopg://jobenergy:")
    settings = ServerSettings.load(etc / "server.toml", db_url=db_url)
    assert (settings.host, settings.port, settings.tls) == ("0.0.0.0", 8443, True)
    assert settings.auth == ("munge", "token") and settings.admins == ("hpcadmin",)
    assert settings.slurm_user == "slurm" and settings.munge_cluster == "mycluster"


def _check_agent(root: Path) -> None:
    from jobenergy.agent.settings import AgentSettings

    config = root / "etc/jobenergy/agent.toml"
    assert _mode(config) == 0o600
    settings = AgentSettings.load(config)
    assert settings.collector_url == URL and settings.cluster == "mycluster"
    assert settings.node == socket.gethostname().split(".")[0]
    assert settings.ca_file == Path("/etc/jobenergy/ca.pem") and settings.auth == "munge"
    assert _mode(root / "var/spool/jobenergy/agent") == 0o700


def _check_hooks(root: Path, sync: bool) -> None:
    env = root / "etc/jobenergy/slurm-hooks.env"
    assert _mode(env) == 0o644
    assert _bash_env(env, "JOBENERGY_URL") == URL
    assert _bash_env(env, "JOBENERGY_CLUSTER") == "mycluster"
    assert _bash_env(env, "JOBENERGY_CA_FILE") == "/etc/jobenergy/ca.pem"
    assert ("slurm sync" in _bash_env(env, "JOBENERGY_SYNC_CMD")) is sync
    for name in ("jobenergy-hook.sh", "prolog.sh", "epilog.sh", "prolog_slurmctld.sh",
                 "epilog_slurmctld.sh"):
        hook = root / "etc/slurm/jobenergy" / name
        assert _mode(hook) == 0o755
        assert hook.read_text().startswith("#!/bin/bash\n# jobenergy-setup: sha256=")
        subprocess.run(["bash", "-n", str(hook)], check=True)
    assert _mode(root / "var/spool/jobenergy/outbox") == 0o700
    # The budget submit script, where slurmctld looks for it; the marker line setup adds
    # first is a '#' line, which Lua's loadfile skips.
    submit = root / "etc/slurm/job_submit.lua"
    assert _mode(submit) == 0o644
    assert submit.read_text().startswith("# jobenergy-setup: sha256=")
    if shutil.which("lua5.1"):
        out = subprocess.run(["lua5.1", "-e", "slurm = {SUCCESS = 0}", "-e",
                              f"assert(loadfile('{submit}'))()", "-e",
                              "assert(type(slurm_job_submit) == 'function')"],
                             capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stderr
    plugin = root / "usr/local/lib/slurm/spank_jobenergy.so"
    assert plugin.read_bytes()[:4] == b"\x7fELF" and b"slurm_spank_init" in plugin.read_bytes()
    stack = (root / "etc/slurm/plugstack.conf.d/jobenergy.conf").read_text()
    assert "\noptional /usr/local/lib/slurm/spank_jobenergy.so\n" in stack
    assert "include /etc/slurm/plugstack.conf.d/*.conf" in (
        root / "etc/slurm/plugstack.conf").read_text()
    assert _bash_env(root / "etc/jobenergy/sync.env", "JOBENERGY_URL") == URL


def _check_login(root: Path) -> None:
    from jobenergy.cli.client_config import ClientConfig

    config = root / "etc/jobenergy/jobenergy.toml"
    assert _mode(config) == 0o644
    values = ClientConfig.model_validate(tomllib.loads(config.read_text()))
    assert (values.url, values.cluster, values.ca_file) == (
        URL, "mycluster", Path("/etc/jobenergy/ca.pem"))


def _check_units(root: Path) -> None:
    units = sorted((root / "etc/systemd/system").iterdir())
    assert units
    for unit in units:
        text = unit.read_text()
        assert "/opt/jobenergy/bin" not in text  # this installation's paths
        out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                             text=True, check=False)
        assert (out.returncode, out.stdout + out.stderr) == (0, ""), unit.name
        if unit.suffix == ".service":
            out = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                                 capture_output=True, text=True, check=False)
            verdict = out.stdout.strip().splitlines()[-1]
            assert verdict.split()[-2] in GOOD, verdict


def test_install_md_has_a_step_per_host():
    steps = install_steps()
    assert tuple(steps) == HOSTS
    roles = {host: [argv[1] for _, argv in cmds] for host, cmds in steps.items()}
    assert roles == {"collector": ["server"], "compute": ["agent", "slurm-hooks"],
                     "controller": ["slurm-hooks"], "login": ["slurm-hooks", "login"]}


@pytest.mark.parametrize("host", HOSTS)
def test_install_step_stages_the_host_and_is_idempotent(host, tmp_path):
    _need(shutil.which("systemd-analyze"), "systemd-analyze not found: apt-get install systemd")
    _need(Path("/usr/include/slurm/spank.h").is_file(),
          "slurm/spank.h not found: apt-get install libslurm-dev (scripts/system-deps.sh)")
    _need(shutil.which("cc") or shutil.which("gcc"), "no C compiler: apt-get install gcc")
    commands = install_steps()[host]
    for env, argv in commands:
        out = run_setup([*argv, "--root", str(tmp_path)], env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "created" in out.stdout and "nothing to change" not in out.stdout
        assert "Traceback" not in out.stderr
    roles = [argv[1] for _, argv in commands]
    if "server" in roles:
        _check_server(tmp_path)
        assert "skipped         user jobenergy" in run_setup(
            [*commands[0][1], "--root", str(tmp_path)], commands[0][0]).stdout
    if "agent" in roles:
        _check_agent(tmp_path)
    if "slurm-hooks" in roles:
        _check_hooks(tmp_path, sync=host == "controller")
    if "login" in roles:
        _check_login(tmp_path)
    _check_units(tmp_path)
    for env, argv in commands:  # again: nothing to do
        out = run_setup([*argv, "--root", str(tmp_path)], env)
        assert out.returncode == 0, out.stderr
        assert "nothing to change" in out.stdout.splitlines(), out.stdout
        assert not re.search(r"^(created|updated|ran) ", out.stdout, re.M), out.stdout


LOGIN = ["setup", "login", "--url", URL, "--cluster", "mycluster"]


def test_edited_config_is_kept_unless_force(tmp_path):
    config = tmp_path / "etc/jobenergy/jobenergy.toml"
    assert run_setup([*LOGIN, "--root", str(tmp_path)]).returncode == 0
    edited = config.read_text() + 'munge_socket = "/run/munge/other.socket"\n'
    config.write_text(edited)
    again = run_setup([*LOGIN, "--cluster", "other", "--root", str(tmp_path)])
    assert again.returncode == 0
    assert re.search(r"^kept \(differs\) +/etc/jobenergy/jobenergy.toml  edited here", again.stdout,
                     re.M), again.stdout
    assert "nothing to change" in again.stdout and config.read_text() == edited
    forced = run_setup([*LOGIN, "--cluster", "other", "--force", "--root", str(tmp_path)])
    assert re.search(r"^updated +/etc/jobenergy/jobenergy.toml", forced.stdout, re.M)
    assert 'cluster = "other"' in config.read_text() and "other.socket" not in config.read_text()


def test_own_file_is_updated_for_new_flags_and_its_mode_restored(tmp_path):
    config = tmp_path / "etc/jobenergy/jobenergy.toml"
    run_setup([*LOGIN, "--root", str(tmp_path)])
    out = run_setup([*LOGIN, "--ca-file", "/etc/jobenergy/ca.pem", "--root", str(tmp_path)])
    assert re.search(r"^updated +/etc/jobenergy/jobenergy.toml", out.stdout, re.M), out.stdout
    assert 'ca_file = "/etc/jobenergy/ca.pem"' in config.read_text()
    config.chmod(0o666)
    out = run_setup([*LOGIN, "--ca-file", "/etc/jobenergy/ca.pem", "--root", str(tmp_path)])
    assert re.search(r"^updated .*mode, was 0666", out.stdout, re.M), out.stdout
    assert _mode(config) == 0o644


@pytest.mark.parametrize("args, says", [
    (["agent", "--url", URL, "--cluster", "c", "--node", "no such node"], "node"),
    (["agent", "--url", URL, "--cluster", "c", "--auth", "token"], "token_file"),
    (["agent", "--url", "http://10.0.0.1:8080", "--cluster", "c"], "plain HTTP"),
    (["login", "--url", "ftp://x", "--cluster", "c"], "not an http"),
    (["server", "--listen", "nonsense"], "HOST:PORT"),
    (["server", "--listen", "0.0.0.0:8080"], "plain HTTP on 0.0.0.0"),
    (["server", "--tls-cert", "/x.crt"], "go together"),
    (["server", "--db-url", "not a url"], "not a database URL"),
    (["server", "--db-url", "sqlite:////x'y.db"], "quote"),
    (["server", "--pue", "0.5"], "pue"),
    (["server", "--auth", "kerberos"], "kerberos"),
    (["slurm-hooks", "--url", URL, "--auth", "kerberos"], "kerberos"),
    # A flag that would add a line to a unit, a config or the hooks' environment, or a
    # command to the hooks' `bash -c` sync (the reviewer's repro: a backquoted --url).
    (["slurm-hooks", "--url", URL + "/`touch\t/tmp/PWNED`", "--sync"], "--url"),
    (["slurm-hooks", "--url", URL + "/x|id", "--sync"], "--url"),
    (["slurm-hooks", "--url", URL + "/$(id)>x", "--sync"], "--url"),
    (["agent", "--url", "https://u:p@c.example", "--cluster", "c"], "--url"),
    (["slurm-hooks", "--url", URL, "--slurm-user", "slurm\nExecStartPre=/tmp/x"],
     "--slurm-user"),
    (["server", "--slurm-user", "slurm bin"], "--slurm-user"),
    (["agent", "--url", URL, "--cluster", "c", "--bin-dir", "/opt/je\nExecStartPre=/tmp/x"],
     "--bin-dir"),
    (["server", "--bin-dir", "opt/jobenergy/bin"], "--bin-dir"),
    (["slurm-hooks", "--url", URL, "--sync", "--bin-dir", "/opt/a`id>x`"], "--bin-dir"),
    (["slurm-hooks", "--url", URL, "--plugin-dir", "/usr/lib\nrequired /tmp/evil.so"],
     "--plugin-dir"),
    (["slurm-hooks", "--url", URL, "--cluster", "c1\rJOBENERGY_AUTH=none"],
     "control character"),
])
def test_bad_flags_get_one_line_and_change_nothing(args, says, tmp_path):
    out = run_setup(["setup", *args, "--root", str(tmp_path / "root")])
    assert out.returncode == 2, out.stdout + out.stderr
    assert len(out.stderr.splitlines()) == 1 and out.stderr.startswith("jobenergy setup: ")
    assert says in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "root").exists()


def test_the_sync_command_passes_each_value_as_one_word(tmp_path):
    """The hook runs JOBENERGY_SYNC_CMD with `bash -c` (slurm_plugins/jobenergy-hook.sh):
    sourced and run so, it calls the program with exactly these arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "jobenergy"
    program.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path / "argv"}\n')
    program.chmod(0o755)
    url = "https://c.example:8443/je%20x"
    out = run_setup(["setup", "slurm-hooks", "--url", url, "--sync", "--no-spank",
                     "--bin-dir", str(bin_dir), "--root", str(tmp_path / "root")])
    assert out.returncode == 0, out.stdout + out.stderr
    env = tmp_path / "root/etc/jobenergy/slurm-hooks.env"
    subprocess.run(["bash", "-c", '. "$1"; SLURM_JOB_ID=42 bash -c "$JOBENERGY_SYNC_CMD"',
                    "_", str(env)], check=True, timeout=30)
    assert (tmp_path / "argv").read_text().splitlines() == [
        "slurm", "sync", "--url", url, "--jobs", "42", "--wait", "300"]


@pytest.mark.parametrize("value", ["a\tb", "a\rb", "a\x1bb", "a\x85b", "a'b", "a\nB=c"])
def test_env_files_take_no_control_characters_nor_quotes(value):
    from jobenergy.cli.setup_configs import env_line
    from jobenergy.cli.setup_files import SetupError

    with pytest.raises(SetupError, match="quote or a control character"):
        env_line("JOBENERGY_CLUSTER", value)
    assert env_line("JOBENERGY_CLUSTER", "c1 & $x #y") == "JOBENERGY_CLUSTER='c1 & $x #y'\n"


def test_missing_spank_headers_are_named_and_the_rest_installed(tmp_path):
    hooks = ["setup", "slurm-hooks", "--url", URL, "--root", str(tmp_path / "r")]
    out = run_setup([*hooks, "--slurm-include", str(tmp_path / "nothing")])
    assert out.returncode == 1
    assert re.search(r"^not built +/usr/local/lib/slurm/spank_jobenergy.so", out.stdout, re.M)
    assert "libslurm-dev" in out.stderr and len(out.stderr.splitlines()) == 1
    assert (tmp_path / "r/etc/slurm/jobenergy/prolog.sh").exists()
    assert not (tmp_path / "r/etc/slurm/plugstack.conf.d/jobenergy.conf").exists()
    out = run_setup([*hooks, "--no-spank"])
    assert out.returncode == 0 and "nothing to change" in out.stdout
    assert re.search(r"^skipped +/usr/local/lib/slurm/spank_jobenergy.so", out.stdout, re.M)


def test_wait_server_waits_for_the_tls_server_to_answer(tmp_path):
    from jobenergy.sim.processes import free_port, stop

    _need(shutil.which("openssl"), "openssl not found: apt-get install openssl")
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    # A name that is not the address asked: the probe checks the certificate, not the name.
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=jobenergy.example.org", "-keyout", str(key), "-out", str(cert)],
                   capture_output=True, check=True)
    port = free_port()
    config = tmp_path / "server.toml"
    config.write_text(f'[server]\nhost = "127.0.0.1"\nport = {port}\nauth = ["none"]\n'
                      f'tls_cert = "{cert}"\ntls_key = "{key}"\n')
    out = run_setup(["setup", "wait-server", "--config", str(config), "--timeout", "0"])
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1
    assert "not ready after 0 s" in out.stderr
    # As the unit does: the server starts (migrating the schema), wait-server returns once
    # /healthz answers.
    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen(
            [*_jobenergy(), "server", "--config", str(config), "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "JOBENERGY_SERVER_DB_URL": f"sqlite:///{tmp_path / 'db.sqlite'}"})
    try:
        out = run_setup(["setup", "wait-server", "--config", str(config), "--timeout", "90"])
        assert out.returncode == 0, out.stderr + (tmp_path / "server.log").read_text()
        assert out.stdout == f"server ready: https://127.0.0.1:{port}/healthz\n"
    finally:
        stop(server)


def test_setup_agent_configures_the_bmc(tmp_path: Path) -> None:
    """`--bmc ipmi|redfish` writes the agent's BMC keys (checked by AgentSettings: a BMC
    without its URL, or an unknown kind, fails setup in one line, before anything is written);
    without it the config has no BMC key at all."""
    from jobenergy.agent.settings import AgentSettings

    base = ["setup", "agent", "--url", URL, "--cluster", "mycluster", "--node", "n1"]
    proc = run_setup([*base, "--bmc", "ipmi", "--bmc-url", "lanplus://10.0.0.5",
                      "--bmc-credentials-file", "/etc/jobenergy/bmc.cred",
                      "--root", str(tmp_path / "a")])
    assert proc.returncode == 0, proc.stderr
    settings = AgentSettings.load(tmp_path / "a/etc/jobenergy/agent.toml")
    assert (settings.bmc, settings.bmc_url) == ("ipmi", "lanplus://10.0.0.5")
    assert settings.bmc_credentials_file == Path("/etc/jobenergy/bmc.cred")
    for extra, word in ((["--bmc", "redfish"], "bmc_url"), (["--bmc", "psu"], "bmc")):
        proc = run_setup([*base, *extra, "--root", str(tmp_path / "b")])
        assert proc.returncode == 2 and word in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1 and not (tmp_path / "b/etc").exists()
    proc = run_setup([*base, "--root", str(tmp_path / "c")])
    assert proc.returncode == 0 and "bmc" not in (
        tmp_path / "c/etc/jobenergy/agent.toml").read_text()
