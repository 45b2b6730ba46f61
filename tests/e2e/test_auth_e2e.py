"""Real agent and server processes with authentication on: MUNGE (a private munged with its
own key), static node tokens, and TLS with the site's CA file.

The agents run as root, as the shipped unit runs them: their MUNGE uid is 0, from 127.0.0.1,
which the server's ``[server.nodes]`` maps to the nodes it may speak for.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from jobenergy.core import munge
from jobenergy.core.request_auth import MungeAuth
from jobenergy.sim.node import SimNode
from jobenergy.sim.processes import free_port, start_agent, start_server, stop, write_agent_config

CLUSTER = "authc"


def _wait_for(predicate, timeout_s: float, what: str, log: Path | None = None):
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.05)
    extra = f"\n{log}:\n{log.read_text()[-3000:]}" if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}{extra}")


def _cli(*args: str, env: dict[str, str] | None = None, check: bool = True
         ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "jobenergy.cli.main", *args],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{args}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _node(tmp_path: Path, name: str, port: str, auth: dict[str, str]) -> tuple[Path, SimNode]:
    node = SimNode(tmp_path / name, name, ncpus=4, packages=1)
    config = write_agent_config(
        tmp_path / f"{name}.toml", collector_url=f"http://127.0.0.1:{port}", cluster=CLUSTER,
        node=name, interval_s=0.2, push_interval_s=0.2, spool_dir=str(tmp_path / "spool" / name),
        sysfs_root=str(node.sysfs_root), procfs_root=str(node.procfs_root),
        cgroup_root=str(node.cgroup_root), nvml="off", gpu_map_dir=str(tmp_path / "map" / name),
        annotation_socket="", **auth)
    return config, node


def test_agents_authenticate_with_munge_and_tokens(tmp_path: Path, munge_socket: str) -> None:
    """n1 (MUNGE, mapped) and n2 (its token) are stored; n3 (MUNGE, not mapped) and n4 (n2's
    token, claiming n4) are refused and keep their batches in the spool, saying why."""
    if os.geteuid() != 0:
        message = "agents authenticate as root (MUNGE uid 0); CI runs as root"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    db_url = f"sqlite:///{tmp_path / 'auth.db'}"
    addr = munge.decode(munge.encode(b"", socket_path=munge_socket),
                        socket_path=munge_socket).addr
    server_toml = tmp_path / "server.toml"
    server_toml.write_text(f'[server]\n[server.nodes]\n"{addr}" = ["n1"]\n')
    _cli("db", "upgrade", env={"JOBENERGY_SERVER_DB_URL": db_url})
    token = _cli("auth", "token", "--cluster", CLUSTER, "--node", "n2",
                 env={"JOBENERGY_SERVER_DB_URL": db_url}).stdout.strip()
    token_file = tmp_path / "n2.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    port = str(free_port())
    server = start_server(db_url, int(port), tmp_path / "server.log", "--config",
                          str(server_toml), "--munge-socket", munge_socket, auth="munge,token")
    agents, nodes = [], []
    try:
        munge_auth = {"auth": "munge", "munge_socket": munge_socket}
        token_auth = {"auth": "token", "token_file": str(token_file)}
        for name, auth in (("n1", munge_auth), ("n2", token_auth), ("n3", munge_auth),
                           ("n4", token_auth)):
            config, node = _node(tmp_path, name, port, auth)
            nodes.append(node)
            agents.append(start_agent(config, tmp_path / f"{name}.log"))
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10,
                          auth=MungeAuth(munge_socket)) as api:

            def stored() -> set[str]:
                for node in nodes:  # the idle nodes draw a little power all along
                    node.add_energy("package-0", 50_000)
                rows = api.get("/api/v1/nodes", params={"cluster": CLUSTER}).json()["nodes"]
                return {r["node"] for r in rows if r["measured_uj"] > 0}

            _wait_for(lambda: {"n1", "n2"} <= stored(), 30, "n1 and n2 stored",
                      tmp_path / "server.log")
            for name in ("n3", "n4"):
                _wait_for(lambda name=name: "HTTP 403" in (tmp_path / f"{name}.log").read_text(),
                          30, f"{name}'s refusal logged", tmp_path / f"{name}.log")
            assert stored() == {"n1", "n2"}
            refusals = api.get("/api/v1/nodes").json()["refusals"]
            # A refusal is recorded only for the node's own agent, never for a claimed one.
            assert not [r for r in refusals if r["node"] in ("n3", "n4")], refusals
        for name in ("n3", "n4"):
            spool = tmp_path / "spool" / name
            assert any(spool.rglob("*.json*")) and not any((spool / "rejected").glob("*")), \
                sorted(p.name for p in spool.rglob("*"))
    finally:
        for agent in agents:
            stop(agent)
        stop(server)


def test_agent_refuses_a_token_file_others_can_read(tmp_path: Path) -> None:
    token_file = tmp_path / "n1.token"
    token_file.write_text("jet_whatever\n")
    token_file.chmod(0o644)
    config, _node_state = _node(tmp_path, "n1", "9", {"auth": "token",
                                                      "token_file": str(token_file)})
    proc = _cli("agent", "--config", str(config), check=False)
    assert proc.returncode == 2 and "readable by others" in proc.stderr, proc.stderr


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=jobenergy-test", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], capture_output=True, check=True,
                   timeout=60)
    return cert, key


def test_tls_with_the_sites_ca_file(tmp_path: Path, munge_socket: str) -> None:
    """senergy verifies the server against JOBENERGY_CA_FILE; without it, it refuses."""
    cert, key = _self_signed(tmp_path)
    db_url = f"sqlite:///{tmp_path / 'tls.db'}"
    port = free_port()
    server = start_server(db_url, port, tmp_path / "server.log", "--tls-cert", str(cert),
                          "--tls-key", str(key), "--munge-socket", munge_socket,
                          auth="munge", ca_file=cert)
    senergy = [str(Path(sys.executable).parent / "senergy"), "--url",
               f"https://127.0.0.1:{port}", "--json", "-a"]
    env = {**os.environ, "JOBENERGY_MUNGE_SOCKET": munge_socket}
    env.pop("SLURM_JWT", None)
    env.pop("JOBENERGY_TOKEN_FILE", None)
    try:
        ok = subprocess.run(senergy, capture_output=True, text=True, timeout=60,
                            env={**env, "JOBENERGY_CA_FILE": str(cert)})
        assert ok.returncode == 0 and json.loads(ok.stdout) == {"jobs": []}, ok.stderr
        untrusted = subprocess.run(senergy, capture_output=True, text=True, timeout=60, env=env)
        assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr, \
            untrusted.stderr
        # Plain HTTP to the TLS port does not get through either.
        try:
            plain = httpx.get(f"http://127.0.0.1:{port}/api/v1/jobs", timeout=5)
        except httpx.HTTPError:
            pass
        else:
            assert not plain.is_success, plain.text
    finally:
        stop(server)


def test_server_refuses_plain_http_off_loopback_and_auth_none_there(tmp_path: Path,
                                                                    munge_socket: str) -> None:
    env = {"JOBENERGY_SERVER_DB_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    plain = _cli("server", "--host", "0.0.0.0", "--port", str(free_port()), "--auth", "munge",
                 "--munge-socket", munge_socket, env=env, check=False)
    assert plain.returncode == 2 and "plain HTTP on 0.0.0.0" in plain.stderr, plain.stderr
    none = _cli("server", "--host", "0.0.0.0", "--port", str(free_port()), "--auth", "none",
                "--allow-insecure", env=env, check=False)
    assert none.returncode == 2 and "loopback" in none.stderr, none.stderr
    unset = _cli("server", "--port", str(free_port()), "--munge-socket",
                 str(tmp_path / "no-munged.sock"), env=env, check=False)
    assert unset.returncode == 2 and "no --auth given" in unset.stderr, unset.stderr


def test_clients_refuse_plain_http_to_another_host() -> None:
    from jobenergy.core.errors import ConfigError
    from jobenergy.core.request_auth import transport_verify

    with pytest.raises(ConfigError, match="plain HTTP"):
        transport_verify("http://10.1.2.3:8080")
    assert transport_verify("http://10.1.2.3:8080", allow_insecure=True) is False
    assert transport_verify("http://127.0.0.1:8080") is False
    assert isinstance(transport_verify("https://collector.example:8443"), ssl.SSLContext)
