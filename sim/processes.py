"""Start the real ``jobenergy`` server and agents as child processes (demo, tests, benches)."""

from __future__ import annotations

import collections
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from jobenergy.core.errors import JobEnergyError

#: Ports :func:`free_port` handed out last in this process: the kernel may give a port just
#: closed again (about 1 call in 14,000 on Linux), and two servers told one port clash.
_RECENT: collections.deque[int] = collections.deque(maxlen=64)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now, none of the last 64 returned."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _RECENT:
            _RECENT.append(port)
            return port


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "jobenergy.cli.main", *args]


def start_server(
    db_url: str, port: int, log_path: Path, *extra: str, timeout_s: float = 30.0,
    auth: str = "none", ca_file: Path | None = None,
) -> subprocess.Popen:
    """Start ``jobenergy server --auth AUTH`` on 127.0.0.1 and wait until /healthz answers.

    ``none`` (the demo, local tests) is what a loopback-only server may run with. With
    ``ca_file`` (the server has ``--tls-cert``/``--tls-key`` in ``extra``), /healthz is asked
    over HTTPS, verified against it.
    """
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    proc = subprocess.Popen(
        _cli(
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--auth",
            auth,
            *extra,
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "JOBENERGY_SERVER_DB_URL": db_url},  # never in argv
    )
    scheme = "https" if ca_file is not None else "http"
    url = f"{scheme}://127.0.0.1:{port}/healthz"
    verify: bool | ssl.SSLContext = (
        ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else False)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise JobEnergyError(f"server exited with {proc.returncode}; see {log_path}")
            try:
                if httpx.get(url, timeout=1, verify=verify).is_success:
                    return proc
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): the caller never gets the child
        stop(proc)
        raise
    proc.kill()
    proc.wait()
    raise JobEnergyError(f"server did not answer on {url} within {timeout_s}s; see {log_path}")


def write_agent_config(path: Path, **values: object) -> Path:
    """Write a TOML ``[agent]`` table (strings, numbers, booleans)."""
    lines = ["[agent]"]
    for key, value in values.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f'{key} = "{value}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def start_agent(
    config: Path, log_path: Path, env: dict[str, str] | None = None, nice: int = 0
) -> subprocess.Popen:
    """Start ``jobenergy-agent --config FILE`` with extra environment.

    The agent's own entry point (``python -m jobenergy.agent``), as the shipped systemd unit
    runs it; ``nice``: the priority change that unit gives it (``Nice=-5``, root only), so
    that jobs burning every CPU do not delay its samples.
    """
    log = open(log_path, "ab")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "jobenergy.agent", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        preexec_fn=(lambda: os.nice(nice)) if nice else None,  # noqa: PLW1509
    )


def stop(proc: subprocess.Popen, timeout_s: float = 20.0) -> int:
    """SIGTERM a child and wait for its exit status (SIGKILL after ``timeout_s``)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
