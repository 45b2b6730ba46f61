"""``jobenergy setup agent|server|slurm-hooks|login``: install one role on this host.

Each role writes its configuration from the flags (checked with the settings class that will
read it), its folders, its systemd units and, for the Slurm hosts, the hooks and the SPANK
plugin; the server role also creates the unprivileged ``jobenergy`` user. Running it again
changes nothing ("nothing to change"), updates what it wrote before, and keeps what the admin
edited ("kept (differs)"; ``--force`` replaces it). One line per file, folder, user or
command: created, updated, unchanged, kept (differs), skipped. ``--root DIR`` stages
everything under DIR (packaging, tests) and runs no ``useradd``/``systemctl``.
Enabling the services stays a separate, visible step (deploy/INSTALL.md).
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import sysconfig
from importlib.resources import files
from pathlib import Path
from typing import Annotated

import typer

from jobenergy.cli import setup_configs as configs
from jobenergy.cli.setup_files import Installer, SetupError
from jobenergy.cli.setup_spank import SPANK_SO, build_spank
from jobenergy.core.errors import JobEnergyError

app = typer.Typer(
    no_args_is_help=True,
    help="Install one role on this host: config, folders, users, systemd units, Slurm hooks.",
)

ETC = "/etc/jobenergy"
SPOOL = "/var/spool/jobenergy"
SERVER_STATE = "/var/lib/jobenergy-server"
SHIPPED_BIN = "/opt/jobenergy/bin/jobenergy"  # the path in deploy/systemd/*.service
HOOKS = ("jobenergy-hook.sh", "prolog.sh", "epilog.sh", "prolog_slurmctld.sh",
         "epilog_slurmctld.sh")

RootOpt = Annotated[Path | None, typer.Option(
    "--root", help="Stage every file under this folder (no useradd, chown or systemctl)")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Replace files edited since setup wrote them")]
BinOpt = Annotated[Path | None, typer.Option(
    "--bin-dir", help="Folder of the jobenergy command the units run (default: this one's)")]
UrlOpt = Annotated[str, typer.Option("--url", help="The collector: https://host:port")]
CaOpt = Annotated[str | None, typer.Option(
    "--ca-file", help="CA bundle that signed the collector's certificate")]
InsecureOpt = Annotated[bool, typer.Option(
    "--allow-insecure", help="Allow plain http:// to a host other than loopback")]


def _bin_dir(option: Path | None) -> Path:
    """Return the folder of the jobenergy the units run, checked: it goes into ExecStart= and
    the hooks' sync command, where a line break or a space would add or split a command."""
    if option is not None:
        chosen = option
    elif (argv0 := Path(sys.argv[0])).name == "jobenergy" and argv0.exists():
        chosen = argv0.absolute().parent
    else:
        chosen = Path(sysconfig.get_path("scripts"))
    return configs.check_path(chosen, "--bin-dir")


def _installer(root: Path | None, force: bool) -> Installer:
    if root is None and os.geteuid() != 0:
        raise SetupError("run as root (or give --root DIR to stage the files)")
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
        typer.echo(f"staging under {root.resolve()} (no users, owners or systemctl)")
    return Installer(root, force)


def _units(inst: Installer, names: tuple[str, ...], bin_dir: Path,
           replace: dict[str, str] | None = None) -> None:
    """Install systemd units with this installation's paths; reload systemd if one changed."""
    before = len(inst.changes)
    for name in names:
        text = (files("jobenergy.deploy") / "systemd" / name).read_text()
        text = text.replace(SHIPPED_BIN, str(bin_dir / "jobenergy"))
        for old, new in (replace or {}).items():
            text = text.replace(old, new)
        inst.file(f"/etc/systemd/system/{name}", text, 0o644)
    if any(c.action in ("created", "updated") for c in inst.changes[before:]):
        inst.command(["systemctl", "daemon-reload"], "(units changed)")


def _finish(inst: Installer, next_steps: list[str], problem: str | None = None) -> None:
    for change in inst.changes:
        typer.echo(change.line())
    if not inst.changed:
        typer.echo("nothing to change")
    for step in next_steps:
        typer.echo(f"next: {step}")
    if problem:
        typer.echo(f"jobenergy setup: {problem}", err=True)
        raise typer.Exit(1)


def _fail(err: JobEnergyError | OSError, inst: Installer | None) -> typer.Exit:
    """Report what was done before the error, then the error in one line; exit 2."""
    for change in inst.changes if inst is not None else ():
        typer.echo(change.line())
    if isinstance(err, OSError):
        message = f"cannot change {err.filename or 'a file'}: {err.strerror or err}"
    else:
        message = str(err)
    typer.echo(f"jobenergy setup: {message}", err=True)
    return typer.Exit(2)


@app.command()
def agent(
    url: UrlOpt,
    cluster: Annotated[str, typer.Option(help="Cluster name (Slurm's ClusterName)")],
    node: Annotated[str | None, typer.Option(
        help="Slurm NodeName of this host (default: its short hostname)")] = None,
    auth: Annotated[str, typer.Option(help="munge (default) or token")] = "munge",
    token_file: Annotated[str | None, typer.Option(
        help="0600 file from `jobenergy auth token --node ...` (with --auth token)")] = None,
    ca_file: CaOpt = None,
    allow_insecure: InsecureOpt = False,
    metrics_addr: Annotated[str, typer.Option(help="Address of the agent's /metrics")] = "0.0.0.0",
    metrics_port: Annotated[int, typer.Option(help="Port of /metrics (0: off)")] = 9815,
    bmc: Annotated[str, typer.Option(
        help="The node's wall power: off, ipmi or redfish (README: BMC reconciliation)")] = "off",
    bmc_url: Annotated[str | None, typer.Option(
        help="lanplus://host[:port], lan://host, open:// (in-band) or https://host")] = None,
    bmc_credentials_file: Annotated[str | None, typer.Option(
        help="0600 file of one line user:password (never on the command line)")] = None,
    bmc_ca_file: Annotated[str | None, typer.Option(
        help="CA bundle of an https:// BMC")] = None,
    root: RootOpt = None, force: ForceOpt = False, bin_dir: BinOpt = None,
) -> None:
    """Compute node: /etc/jobenergy/agent.toml (0600), the spool, jobenergy-agent.service."""
    inst = None
    try:
        bins = _bin_dir(bin_dir)
        if auth not in ("munge", "token"):
            raise SetupError(f"--auth {auth}: use munge or token")
        text = configs.agent_toml({
            "collector_url": configs.check_url(url, allow_insecure),
            "cluster": cluster,
            "node": node or socket.gethostname().split(".")[0],
            "auth": auth,
            "token_file": token_file,
            "ca_file": ca_file,
            "allow_insecure": allow_insecure or None,
            "metrics_addr": metrics_addr if metrics_port else None,
            "metrics_port": metrics_port or None,
            **({"bmc": bmc, "bmc_url": bmc_url, "bmc_credentials_file": bmc_credentials_file,
                "bmc_ca_file": bmc_ca_file} if bmc != "off" else {}),
        })
        inst = _installer(root, force)
        inst.directory(ETC, 0o755)
        inst.file(f"{ETC}/agent.toml", text, 0o600)
        inst.directory(SPOOL, 0o755)
        inst.directory(f"{SPOOL}/agent", 0o700)
        _units(inst, ("jobenergy-agent.service",), bins)
    except (JobEnergyError, OSError) as err:
        raise _fail(err, inst) from err
    _finish(inst, ["systemctl enable --now jobenergy-agent"])


def _listen(value: str | None, tls: bool) -> tuple[str, int]:
    if value is None:
        return ("0.0.0.0", 8443) if tls else ("127.0.0.1", 8080)
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise SetupError(f"--listen {value!r}: use HOST:PORT (0.0.0.0:8443, [::]:8443)")
    return host.strip("[]"), int(port)


@app.command()
def server(
    db_url: Annotated[str, typer.Option(
        "--db-url", envvar="JOBENERGY_SERVER_DB_URL", show_default=False,
        help="postgresql+psycopg://user:password@host/db (better from $JOBENERGY_SERVER_DB_URL:"
             " argv is world-readable); default: SQLite in /var/lib/jobenergy-server")] = (
        f"sqlite:///{SERVER_STATE}/jobenergy.db"),
    listen: Annotated[str | None, typer.Option(
        help="HOST:PORT (default 0.0.0.0:8443 with TLS, else 127.0.0.1:8080)")] = None,
    tls_cert: Annotated[str | None, typer.Option(help="PEM certificate chain")] = None,
    tls_key: Annotated[str | None, typer.Option(help="PEM private key of --tls-cert")] = None,
    auth: Annotated[str, typer.Option(help="munge,jwt,token (any of them)")] = "munge",
    jwt_key: Annotated[str | None, typer.Option(help="Slurm's jwt_hs256.key (auth jwt)")] = None,
    admins: Annotated[str | None, typer.Option(help="Admin user names, comma-separated")] = None,
    admin_group: Annotated[str | None, typer.Option(help="Unix group of admins")] = None,
    slurm_user: Annotated[str, typer.Option(help="slurm.conf's SlurmUser")] = "slurm",
    munge_cluster: Annotated[str | None, typer.Option(
        help="The cluster whose munge.key this host holds: MUNGE agents and hooks post for "
             "it only")] = None,
    pue: Annotated[float | None, typer.Option(help="Default PUE (>= 1)")] = None,
    carbon_intensity: Annotated[float | None, typer.Option(
        help="Default grid intensity, g CO2e/kWh")] = None,
    allow_insecure: Annotated[bool, typer.Option(
        "--allow-insecure", help="Plain HTTP on an address other than loopback")] = False,
    root: RootOpt = None, force: ForceOpt = False, bin_dir: BinOpt = None,
) -> None:
    """Collector host: jobenergy user, server.toml, server.env, state folder, units.

    server.toml is 0640 root:jobenergy; server.env (0600, root) holds the database URL; the
    units are jobenergy-server and jobenergy-db-maintain (service and timer).
    """
    from jobenergy.core.request_auth import is_loopback

    inst = None
    try:
        if (tls_cert is None) != (tls_key is None):
            raise SetupError("--tls-cert and --tls-key go together")
        host, port = _listen(listen, tls_cert is not None)
        if tls_cert is None and not is_loopback(host) and not allow_insecure:
            raise SetupError(f"plain HTTP on {host}: give --tls-cert/--tls-key, listen on a "
                             "loopback address behind a TLS proxy, or --allow-insecure")
        configs.check_user(slurm_user, "--slurm-user")
        bins = _bin_dir(bin_dir)
        env_text = configs.server_env(db_url)
        text = configs.server_toml({
            "host": host, "port": port,
            "auth": [w.strip() for w in auth.split(",") if w.strip()],
            "jwt_key": jwt_key,
            "admins": [a.strip() for a in admins.split(",") if a.strip()] if admins else None,
            "admin_group": admin_group, "slurm_user": slurm_user,
            "munge_cluster": munge_cluster,
            "pue": pue, "carbon_intensity_g_per_kwh": carbon_intensity,
            "tls_cert": tls_cert, "tls_key": tls_key,
            "allow_insecure": allow_insecure or None,
        }, db_url)
        inst = _installer(root, force)
        inst.system_user("jobenergy", SERVER_STATE, "jobenergy collector")
        inst.directory(ETC, 0o755)
        inst.directory(f"{ETC}/tls", 0o750, "root", "jobenergy")
        inst.file(f"{ETC}/server.toml", text, 0o640, "root", "jobenergy")
        inst.file(f"{ETC}/server.env", env_text, 0o600)
        inst.directory(SERVER_STATE, 0o700, "jobenergy")
        _units(inst, ("jobenergy-server.service", "jobenergy-db-maintain.service",
                      "jobenergy-db-maintain.timer"), bins)
    except (JobEnergyError, OSError) as err:
        raise _fail(err, inst) from err
    steps = ["systemctl enable --now jobenergy-server jobenergy-db-maintain.timer"]
    if tls_cert:
        steps.insert(0, f"put the certificate and key at {tls_cert} and {tls_key} (INSTALL.md)")
    _finish(inst, steps)


@app.command("slurm-hooks")
def slurm_hooks(
    url: UrlOpt,
    cluster: Annotated[str | None, typer.Option(
        help="Cluster name in events (default: SLURM_CLUSTER_NAME)")] = None,
    ca_file: CaOpt = None,
    allow_insecure: InsecureOpt = False,
    auth: Annotated[str | None, typer.Option(
        help="munge, token or none (default: token with --token-file, else munge)")] = None,
    token_file: Annotated[str | None, typer.Option(
        help="0600 file, owned by SlurmUser, from `jobenergy auth token --role hooks`")] = None,
    sync: Annotated[bool, typer.Option(
        "--sync", help="Run `jobenergy slurm sync` after each job (JOBENERGY_SYNC_CMD)")] = False,
    slurm_user: Annotated[str, typer.Option(help="slurm.conf's SlurmUser")] = "slurm",
    slurm_conf_dir: Annotated[str, typer.Option(help="Slurm's configuration folder")] = (
        "/etc/slurm"),
    plugin_dir: Annotated[str, typer.Option(help="Where the SPANK plugin goes")] = (
        "/usr/local/lib/slurm"),
    slurm_include: Annotated[Path, typer.Option(
        help="Folder holding slurm/spank.h (libslurm-dev, slurm-devel)")] = Path("/usr/include"),
    no_spank: Annotated[bool, typer.Option(
        "--no-spank", help="Do not build the SPANK plugin (no --energy-* job options here)")] = (
        False),
    root: RootOpt = None, force: ForceOpt = False, bin_dir: BinOpt = None,
) -> None:
    """Every Slurm host: hooks, slurm-hooks.env, outbox, SPANK plugin, sync units, and the
    budget submit script (job_submit.lua) with its state-file units.

    The SPANK plugin is built here against slurm/spank.h and added to plugstack.conf.d; the
    jobenergy-slurm-sync and jobenergy-budget-state units are installed everywhere and
    enabled on the controller only. slurm.conf is not edited: the next steps say what to add.
    """
    inst = None
    try:
        url = configs.check_url(url, allow_insecure)
        configs.check_user(slurm_user, "--slurm-user")
        bins = _bin_dir(bin_dir)
        # Both go into plugstack.conf and the next steps' slurm.conf lines.
        configs.check_path(Path(slurm_conf_dir), "--slurm-conf-dir")
        configs.check_path(Path(plugin_dir), "--plugin-dir")
        if auth not in (None, "munge", "token", "none"):
            raise SetupError(f"--auth {auth}: use munge, token or none")
        if auth == "token" and not token_file:
            raise SetupError("--auth token needs --token-file")
        program = bins / "jobenergy"
        transport = {"JOBENERGY_CA_FILE": ca_file,
                     "JOBENERGY_ALLOW_INSECURE": "1" if allow_insecure else None,
                     "JOBENERGY_TOKEN_FILE": token_file}
        hooks_values = {"JOBENERGY_URL": url, "JOBENERGY_CLUSTER": cluster, **transport,
                        "JOBENERGY_AUTH": auth, "JOBENERGY_OUTBOX": f"{SPOOL}/outbox"}
        if sync:
            # The hook runs it with `bash -c`: every value in it is quoted (and check_url,
            # check_path already allow no shell character; a quote would stop env_line).
            hooks_values["JOBENERGY_SYNC_CMD"] = (
                f"{shlex.quote(str(program))} slurm sync --url {shlex.quote(url)} "
                '--jobs "$SLURM_JOB_ID" --wait 300')
        hooks_text = configs.hooks_env({k: v for k, v in hooks_values.items() if v})
        sync_text = configs.sync_env(
            {k: v for k, v in {"JOBENERGY_URL": url, **transport}.items() if v})
        inst = _installer(root, force)
        inst.directory(ETC, 0o755)
        inst.file(f"{ETC}/slurm-hooks.env", hooks_text, 0o644)
        hook_dir = f"{slurm_conf_dir.rstrip('/')}/jobenergy"
        inst.directory(hook_dir, 0o755)
        for name in HOOKS:
            inst.file(f"{hook_dir}/{name}",
                      (files("jobenergy.slurm_plugins") / name).read_text(), 0o755)
        inst.directory(SPOOL, 0o755)
        inst.directory(f"{SPOOL}/outbox", 0o700, slurm_user)
        problem = None
        if no_spank:
            inst.note("skipped", f"{plugin_dir.rstrip('/')}/{SPANK_SO}",
                      "(--no-spank: no --energy-* job options on this host)")
        else:
            problem = build_spank(inst, slurm_include, plugin_dir, slurm_conf_dir)
        # Energy budgets at submission: slurmctld loads job_submit.lua from slurm.conf's
        # folder; it reads the state the jobenergy-budget-state timer writes.
        inst.file(f"{slurm_conf_dir.rstrip('/')}/job_submit.lua",
                  (files("jobenergy.slurm_plugins") / "job_submit.lua").read_text(), 0o644)
        inst.file(f"{ETC}/sync.env", sync_text, 0o644)
        _units(inst, ("jobenergy-slurm-sync.service", "jobenergy-slurm-sync.timer",
                      "jobenergy-budget-state.service", "jobenergy-budget-state.timer"),
               bins, {"\nUser=slurm\n": f"\nUser={slurm_user}\n"})
    except (JobEnergyError, OSError) as err:
        raise _fail(err, inst) from err
    _finish(inst, [
        f"slurm.conf: Prolog={hook_dir}/prolog.sh Epilog={hook_dir}/epilog.sh",
        f"slurm.conf: PrologSlurmctld={hook_dir}/prolog_slurmctld.sh "
        f"EpilogSlurmctld={hook_dir}/epilog_slurmctld.sh PrologFlags=Alloc,Contain "
        "(the rest: slurm.conf.snippet); then restart slurmctld and every slurmd",
        "on the controller: systemctl enable --now jobenergy-slurm-sync.timer",
        f"energy budgets at submission: slurm.conf needs JobSubmitPlugins=lua (it loads "
        f"{slurm_conf_dir.rstrip('/')}/job_submit.lua); on the controller: systemctl enable "
        "--now jobenergy-budget-state.timer, then scontrol reconfigure",
    ], problem)


@app.command()
def login(
    url: UrlOpt,
    cluster: Annotated[str, typer.Option(help="Cluster name (Slurm's ClusterName)")],
    ca_file: CaOpt = None,
    allow_insecure: InsecureOpt = False,
    root: RootOpt = None, force: ForceOpt = False,
) -> None:
    """Login node: /etc/jobenergy/jobenergy.toml (0644), where senergy finds the collector."""
    inst = None
    try:
        text = configs.client_toml({
            "url": configs.check_url(url, allow_insecure), "cluster": cluster,
            "ca_file": ca_file, "allow_insecure": allow_insecure or None,
        })
        inst = _installer(root, force)
        inst.directory(ETC, 0o755)
        inst.file(f"{ETC}/jobenergy.toml", text, 0o644)
    except (JobEnergyError, OSError) as err:
        raise _fail(err, inst) from err
    _finish(inst, ["senergy (as a user: your jobs)"])


@app.command("wait-server")
def wait_server(
    config: Annotated[Path, typer.Option("--config", "-c", help="The server's TOML file")] = (
        Path(f"{ETC}/server.toml")),
    timeout: Annotated[float, typer.Option(help="Seconds to wait")] = 60.0,
) -> None:
    """Wait until the server on this host answers GET /healthz with 200.

    jobenergy-server.service runs it as ExecStartPost: the unit is started once it answers.
    """
    from jobenergy.cli.setup_ready import wait_healthy

    try:
        url = wait_healthy(config, timeout)
    except JobEnergyError as err:
        typer.echo(f"jobenergy setup wait-server: {err}", err=True)
        raise typer.Exit(1) from err
    typer.echo(f"server ready: {url}")
