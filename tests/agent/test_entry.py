"""The agent's own entry point (``jobenergy-agent``, ``python -m jobenergy.agent``) stays lean.

Every compute node runs the agent for ever: what it imports is memory it holds. It must load
none of the command-line tools (typer, rich, click, pygments), no HTTP library beyond the
standard one (httpx pulls in the tools above), nothing of the server, and no pydantic at all
(agent/wire.py writes the wire models' bytes, agent/annotation_message.py checks annotations,
and the settings are read in a child: agent/settings_child.py): checked in a process that
really runs the agent through its entry point, samples, seals and tries to push, then stops on
SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from jobenergy.agent.main import build_parser
from jobenergy.sim.node import SimNode
from jobenergy.sim.processes import write_agent_config

ROOT = Path(__file__).resolve().parents[2]

#: Top-level packages (and jobenergy modules) the agent process must never import.
FORBIDDEN = (
    "typer", "click", "rich", "pygments", "httpx", "httpcore", "h11", "anyio", "certifi",
    "sqlalchemy", "fastapi", "starlette", "uvicorn", "alembic", "psycopg",
    "jobenergy.cli", "jobenergy.api", "jobenergy.collector", "jobenergy.core.schema",
    "jobenergy.core.request_auth",
    "pydantic", "pydantic_core", "pydantic_settings", "dotenv", "asyncio",
    "jobenergy.agent.settings", "jobenergy.core.log_fields",
)

#: Runs the agent as ``jobenergy-agent --config CFG`` would, in this process (one thread at
#: start, as under systemd), and prints the modules it imported once it stopped.
_RUN = """
import sys
from jobenergy.agent.main import main
try:
    main(["--config", sys.argv[1], "--log-level", "warning"])
except SystemExit as exit:
    print("exit", exit.code)
print("\\n".join(sorted(sys.modules)))
"""


def _config(tmp_path: Path, **extra: object) -> Path:
    node = SimNode(tmp_path / "n", "n1", ncpus=8, packages=2)
    node.start_job("101", 1000, [0, 1])
    return write_agent_config(
        tmp_path / "agent.toml", collector_url="http://127.0.0.1:9", auth="none", cluster="t",
        node="n1", interval_s=0.1, push_interval_s=0.2, store_interval_s=0.2,
        spool_dir=str(tmp_path / "spool"), sysfs_root=str(node.sysfs_root),
        procfs_root=str(node.procfs_root), cgroup_root=str(node.cgroup_root), nvml="off",
        gpu_map_dir=str(tmp_path / "map"), annotation_socket=str(tmp_path / "agent.sock"),
        metrics_port=0, **extra,
    )


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("JOBENERGY_")}


def test_a_running_agent_imports_none_of_the_tools_nor_the_wire_models(tmp_path):
    cfg = _config(tmp_path)
    batches = tmp_path / "spool" / "batches"
    proc = subprocess.Popen([sys.executable, "-c", _RUN, str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_clean_env())
    try:
        deadline = time.monotonic() + 60
        while not (batches.is_dir() and any(batches.iterdir())):  # it sealed a batch
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    lines = stdout.splitlines()
    assert "exit 0" in lines, stdout[-2000:] + stderr[-2000:]
    modules = set(lines[lines.index("exit 0") + 1:])
    assert "jobenergy.agent.daemon" in modules and "http.client" in modules  # it did run
    bad = sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
    assert bad == [], f"the agent imported {bad}"


@pytest.mark.parametrize(("args", "words"), [
    (["--config", "/nonexistent/agent.toml"], "No such file"),
    (["--log-level", "verbose"], "log_level"),
    (["--node", "bad name!"], "node"),
])
def test_bad_settings_are_one_line_and_exit_2(tmp_path, args, words):
    env = {**_clean_env(), "JOBENERGY_AGENT_SPOOL_DIR": str(tmp_path / "spool"),
           "JOBENERGY_AGENT_NVML": "off", "JOBENERGY_AGENT_AUTH": "none",
           "JOBENERGY_AGENT_ANNOTATION_SOCKET": ""}
    proc = subprocess.run([sys.executable, "-m", "jobenergy.agent", *args], capture_output=True,
                          text=True, timeout=60, check=False, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("jobenergy-agent: ") and words in lines[0]
    assert not (tmp_path / "spool").exists()


def test_jobenergy_agent_takes_the_same_options():
    """``jobenergy agent`` (typer) and ``jobenergy-agent`` (argparse) parse the same options."""
    from typer.main import get_command

    from jobenergy.cli.main import app

    command = get_command(app).commands["agent"]  # type: ignore[attr-defined]
    typer_options = {name for param in command.params for name in param.opts}
    argparse_options = {
        name for action in build_parser()._actions for name in action.option_strings
    } - {"-h", "--help", "-V", "--version"}
    assert typer_options - {"--help"} == argparse_options


def test_the_unit_and_the_package_run_the_lean_entry():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["jobenergy-agent"] == "jobenergy.agent.main:main"
    unit = (ROOT / "deploy" / "systemd" / "jobenergy-agent.service").read_text()
    [exec_start] = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert exec_start.split()[0] == "ExecStart=/opt/jobenergy/bin/jobenergy-agent"
