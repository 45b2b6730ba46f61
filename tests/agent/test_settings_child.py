"""Settings read in a child (agent/settings_child.py) are exactly ``AgentSettings.load``'s.

Each check runs in a fresh interpreter: the child is forked only while the process has one
thread, which a test process cannot promise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest

from jobenergy.agent.settings import AgentSettings
from jobenergy.agent.settings_child import SettingsView, load_settings

ROOT = Path(__file__).resolve().parents[2]

#: Loads through the child, checks it did fork and imported nothing of pydantic-settings, then
#: loads in place and prints both, field by field, with their types.
_COMPARE = """
import json, sys
from jobenergy.agent.settings_child import SettingsView, load_settings
from jobenergy.core.errors import ConfigError
config, overrides = sys.argv[1] or None, json.loads(sys.argv[2])
def both():
    try:
        child = load_settings(config, **overrides)
    except ConfigError as err:
        child = "error: " + str(err)
    else:
        assert type(child) is SettingsView, type(child)
    assert "pydantic_settings" not in sys.modules and "pydantic" not in sys.modules
    from jobenergy.agent.settings import AgentSettings
    try:
        here = AgentSettings.load(config, **overrides)
    except ConfigError as err:
        return child, "error: " + str(err)
    return child, here
child, here = both()
if isinstance(here, str) or isinstance(child, str):
    print(json.dumps([str(child), str(here)]))
else:
    names = list(type(here).model_fields)
    print(json.dumps([[(n, repr(getattr(s, n)), type(getattr(s, n)).__name__) for n in names]
                      for s in (child, here)]))
"""


def _compare(config: Path | None, env: dict[str, str] | None = None, **overrides: object):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JOBENERGY_")}
    proc = subprocess.run(
        [sys.executable, "-c", _COMPARE, str(config or ""), json.dumps(overrides)],
        capture_output=True, text=True, timeout=60, check=False, env={**clean, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    child, here = json.loads(proc.stdout)
    return child, here


def test_every_key_of_the_example_and_more_is_the_same(tmp_path):
    table = tomllib.loads((ROOT / "deploy" / "agent.toml.example").read_text())["agent"]
    table.update(
        token_file="/etc/jobenergy/agent.token", spool_dir="/srv/spool", cpu_static_power_w=40.5,
        gpu_static_power_w=61, bmc="redfish", bmc_url="https://10.0.0.5",
        bmc_credentials_file="/etc/jobenergy/bmc", limit_warn_signal="sigusr2",
        annotation_socket="", interval_s=0.25,
    )
    config = tmp_path / "agent.toml"  # JSON's scalars are TOML's
    config.write_text("[agent]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()))
    child, here = _compare(config, env={"JOBENERGY_AGENT_STORE_INTERVAL_S": "2.5"},
                           node="gpu017", log_format="JSON")
    assert child == here
    assert not isinstance(here, str), here
    values = {name: value for name, value, _ in here}
    assert values["store_interval_s"] == "2.5" and values["log_format"] == "'json'"
    assert values["spool_dir"] == "PosixPath('/srv/spool')"
    assert values["gpu_map_dir"] == "PosixPath('/run/jobenergy/gpus/gpu017')"


def test_the_defaults_are_the_same():
    child, here = _compare(None, node="n1")
    assert child == here


@pytest.mark.parametrize(("text", "overrides"), [
    ('[agent]\ninterval_s = -1\n', {}),
    ('[agent]\nstore_interval_s = 0.5\ninterval_s = 1\n', {}),
    ('[agent]\nbmc = "ipmi"\n', {}),
    ('[agent]\nnot_a_key = 1\n', {}),
    ("[agent\n", {}),
    ("[server]\n", {}),
    ('[agent]\n', {"node": "bad name!"}),
])
def test_errors_are_the_same(tmp_path, text, overrides):
    config = tmp_path / "agent.toml"
    config.write_text(text)
    child, here = _compare(config, **overrides)
    assert child == here and child.startswith("error: ")


def test_a_missing_file_is_the_same_error(tmp_path):
    child, here = _compare(tmp_path / "nope.toml")
    assert child == here and "cannot read agent config" in child


def test_with_threads_running_the_settings_load_in_place(tmp_path):
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        settings = load_settings(None, node="n1")
    finally:
        stop.set()
        thread.join()
    assert isinstance(settings, AgentSettings) and settings.node == "n1"


def test_the_view_is_read_only():
    view = SettingsView({"node": "n1"})
    assert view.node == "n1"
    with pytest.raises(AttributeError, match="read-only"):
        view.node = "n2"
    with pytest.raises(AttributeError, match="no agent setting 'nodes'"):
        view.nodes  # noqa: B018


#: Loads through the child with SIGCHLD ignored (inherited from a parent that ignores it: the
#: kernel would reap the child itself) and SIGUSR1 blocked; prints what is left as it was.
_SIGNALS = """
import copy, signal, sys
from jobenergy.agent.settings_child import SettingsView, load_settings
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
view = load_settings(None, node="n1")
assert type(view) is SettingsView and copy.copy(view).node == "n1"
print(signal.getsignal(signal.SIGCHLD) is signal.SIG_IGN,
      signal.pthread_sigmask(signal.SIG_BLOCK, set()) == {signal.SIGUSR1})
"""


def test_a_parent_ignoring_sigchld_and_the_signal_mask_are_left_as_they_were():
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JOBENERGY_")}
    proc = subprocess.run([sys.executable, "-c", _SIGNALS], capture_output=True, text=True,
                          timeout=60, check=False, env=clean)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["True", "True"]


def test_an_undecodable_config_path_is_named_in_the_error(tmp_path):
    child, here = _compare(Path(os.fsdecode(bytes(tmp_path) + b"/nope\xff.toml")))
    for message in (child, here):
        assert "cannot read agent config" in message and "No such file" in message
