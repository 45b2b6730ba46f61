"""``slurm_plugins/job_submit.lua`` run by a real Lua 5.1 against state files the Python writer
wrote (``core/budget_state.py``), with a fake ``slurm`` table standing in for slurmctld's.

Every way the state can be unusable (missing, unreadable, stale, garbled) and a Lua error
must accept the job and log why: slurmctld must never be stopped by a budget.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from jobenergy.core.budget_state import StateEntry, write_state
from jobenergy.core.units import UJ_PER_KWH

SCRIPT = Path(__file__).resolve().parents[2] / "slurm_plugins" / "job_submit.lua"
STATE_LINE = 'local STATE_FILE = "/var/lib/jobenergy/budget.state"'
SUCCESS, ERROR = 0, -1

# The fake slurm table: each log call prints "<kind>\t<message>" (formatted as Slurm's
# wrappers do, with string.format), then the return code of slurm_job_submit.
DRIVER = r"""
local function recorder(kind)
  return function(fmt, ...)
    local text = string.format(fmt, ...)
    io.write(kind, "\t", (string.gsub(text, "\n", "\\n")), "\n")
  end
end
slurm = { SUCCESS = 0, ERROR = -1, log_info = recorder("info"),
          log_error = recorder("error"), log_user = recorder("user"),
          log_debug = recorder("debug") }
local script, user_name, user_id, account, default_account, submit_uid = unpack(arg)
local fixed_now = os.getenv("JOBENERGY_TEST_NOW")  -- the test's clock, when it sets one
if fixed_now then os.time = function() return tonumber(fixed_now) end end
local function opt(v)
  if v == "" then return nil elseif v == "<empty>" then return "" end
  if string.sub(v, 1, 7) == "<long>:" then return string.rep(string.sub(v, 8), 20000) end
  return v
end
assert(loadfile(script))()
local job_desc = { user_name = opt(user_name), user_id = tonumber(opt(user_id) or ""),
                   account = opt(account), default_account = opt(default_account) }
if user_id == "boom" then
  setmetatable(job_desc, { __index = function() error("slurmctld said no") end })
end
io.write("rc\t", tostring(slurm_job_submit(job_desc, {}, tonumber(submit_uid))), "\n")
io.write("modify\t", tostring(slurm_job_modify(job_desc, {}, {}, 0)), "\n")
"""


def _lua() -> str:
    lua = shutil.which("lua5.1")
    if lua is None:
        message = "lua5.1 not found: apt-get install lua5.1 (scripts/system-deps.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return lua


@pytest.fixture
def run_submit(tmp_path):
    """Return ``run(state_path, user_name=, user_id=, account=, default_account=,
    submit_uid=) -> (rc, [(kind, message)])`` for the shipped script reading ``state_path``."""
    lua = _lua()
    driver = tmp_path / "driver.lua"
    driver.write_text(DRIVER)

    def run(state: Path, *, user_name: str = "", user_id: str = "1000", account: str = "",
            default_account: str = "", submit_uid: int = 1000,
            now: int | None = None) -> tuple[int, list[tuple]]:
        text = SCRIPT.read_text()
        assert text.count(STATE_LINE) == 1
        script = tmp_path / "job_submit.lua"
        script.write_text(text.replace(STATE_LINE, f'local STATE_FILE = "{state}"'))
        out = subprocess.run(
            [lua, str(driver), str(script), user_name, user_id, account, default_account,
             str(submit_uid)], capture_output=True, text=True, timeout=30, check=False,
            env=None if now is None else {**os.environ, "JOBENERGY_TEST_NOW": str(now)})
        assert out.returncode == 0, out.stderr
        logs = [tuple(line.split("\t", 1)) for line in out.stdout.splitlines()]
        assert ("modify", "0") in logs
        rc = int(dict(logs)["rc"])
        return rc, [entry for entry in logs if entry[0] not in ("rc", "modify")]

    return run


def entry(id_: int = 7, scope: str = "account", account: str = "physics", user: str = "",
          policy: str = "deny", unit: str = "kwh", used: int = 2 * UJ_PER_KWH,
          limit: int = UJ_PER_KWH, resets_at: int = 1_798_761_600, period: str = "month"
          ) -> StateEntry:
    return StateEntry(id=id_, scope=scope, account=account, user=user, policy=policy,
                      unit=unit, period=period, used=used, limit=limit, resets_at=resets_at)


def state(tmp_path: Path, *entries: StateEntry, age_s: int = 0) -> Path:
    path = tmp_path / "budget.state"
    write_state(path, list(entries), int(time.time()) - age_s)
    return path


def test_over_budget_deny_refuses_with_budget_used_limit_and_reset(tmp_path, run_submit):
    path = state(tmp_path, entry(used=UJ_PER_KWH * 5123 // 10, limit=500 * UJ_PER_KWH))
    rc, logs = run_submit(path, user_name="alice", account="physics")
    assert rc == ERROR
    user = [m for kind, m in logs if kind == "user"]
    assert user == ["jobenergy: job refused: energy budget 7 (monthly, account physics) has "
                    "used 512.3 of 500 kWh of facility energy; it resets 2027-01-01 00:00 UTC."
                    " Ask your account coordinator or the admins."]


def test_under_budget_and_other_accounts_are_accepted_silently(tmp_path, run_submit):
    path = state(tmp_path, entry(used=UJ_PER_KWH - 1, limit=UJ_PER_KWH),
                 entry(id_=8, account="chemistry"))
    rc, logs = run_submit(path, user_name="alice", account="physics")
    assert (rc, [k for k, _ in logs if k == "user"]) == (SUCCESS, [])


def test_exactly_at_the_limit_is_over(tmp_path, run_submit):
    path = state(tmp_path, entry(used=UJ_PER_KWH, limit=UJ_PER_KWH))
    assert run_submit(path, user_name="alice", account="physics")[0] == ERROR


def test_warn_accepts_with_a_warning(tmp_path, run_submit):
    path = state(tmp_path, entry(policy="warn", unit="kg_co2e", used=3 * 10**9,
                                 limit=2 * 10**9, period="week", resets_at=1_798_761_600))
    rc, logs = run_submit(path, user_name="alice", account="physics")
    assert rc == SUCCESS
    assert logs == [("user", "jobenergy: warning: energy budget 7 (weekly, account physics) "
                     "has used 3 of 2 kg CO2e; it resets 2027-01-01 00:00 UTC. The job is "
                     "accepted.")]


def test_user_and_account_user_scopes_and_the_default_account(tmp_path, run_submit):
    path = state(tmp_path, entry(id_=1, scope="user", account="", user="bob"),
                 entry(id_=2, scope="account_user", account="physics", user="carol"))
    assert run_submit(path, user_name="bob")[0] == ERROR  # any account
    assert run_submit(path, user_name="alice")[0] == SUCCESS
    # No -A: the user's DefaultAccount counts.
    assert run_submit(path, user_name="carol", default_account="physics")[0] == ERROR
    assert run_submit(path, user_name="carol", account="chemistry")[0] == SUCCESS
    # No account known at all: only user budgets apply, and it says so at debug level.
    rc, logs = run_submit(path, user_name="carol")
    assert rc == SUCCESS and any(kind == "debug" for kind, _ in logs)


def test_user_name_from_the_uid_lines_when_slurm_gives_none(tmp_path, run_submit):
    root = entry(scope="user", account="", user="root")  # uid 0 on every host
    path = state(tmp_path, root)
    assert "uid 0 root" in path.read_text().splitlines()
    assert run_submit(path, user_name="", user_id="0", submit_uid=0)[0] == ERROR
    assert run_submit(path, user_name="", user_id="", submit_uid=0)[0] == ERROR
    assert run_submit(path, user_name="", user_id="4242", submit_uid=4242)[0] == SUCCESS


@pytest.mark.parametrize("case", ["missing", "stale", "future", "garbled", "header",
                                  "unreadable", "no-generated", "lua-error"])
def test_unusable_state_fails_open_and_logs(tmp_path, run_submit, case):
    path = state(tmp_path, entry())  # over budget, deny: refused if it were read
    text = path.read_text()
    kwargs = {"user_name": "alice", "account": "physics"}
    if case == "missing":
        path.unlink()
    elif case == "stale":
        path = state(tmp_path, entry(), age_s=601)
    elif case == "future":
        path = state(tmp_path, entry(), age_s=-3600)
    elif case == "garbled":
        path.write_text(text.replace("2.000000", "2.0x0"))
    elif case == "header":
        path.write_text("<html>\n" + text)
    elif case == "unreadable":
        path.unlink()
        path.mkdir()  # io.open of a folder fails on read
    elif case == "no-generated":
        path.write_text("\n".join(line for line in text.splitlines()
                                  if not line.startswith("generated")) + "\n")
    elif case == "lua-error":
        kwargs["user_id"] = "boom"
    rc, logs = run_submit(path, **kwargs)
    assert rc == SUCCESS, logs
    errors = [m for kind, m in logs if kind == "error"]
    assert len(errors) == 1 and "fail open" in errors[0], logs
    assert errors[0].startswith("jobenergy budget: ")


def test_fresh_enough_state_is_used(tmp_path, run_submit):
    # The script's clock is the file's time + 599 s exactly: with the real one, a run that
    # started more than a second after the file was written would see it 601 s old.
    now = int(time.time())
    path = tmp_path / "budget.state"
    write_state(path, [entry()], now - 599)
    assert run_submit(path, user_name="alice", account="physics", now=now)[0] == ERROR


def test_names_that_could_forge_lines_never_reach_the_file(tmp_path, run_submit):
    forged = entry(id_=9, scope="user", account="",
                   user="mallory\nbudget user - alice deny kWh 9 1 - 1 day")
    spaced = entry(id_=10, scope="account", account="phys ics")
    path = tmp_path / "budget.state"
    problems = write_state(path, [forged, spaced], int(time.time()))
    assert len(problems) == 2
    text = path.read_text()
    assert "mallory" not in text and "phys ics" not in text
    assert [line.split()[0] for line in text.splitlines()[1:]] == ["generated"]
    assert run_submit(path, user_name="alice", account="physics")[0] == SUCCESS


# ---------------------------------------------------------------------------------------------
# Attacks: what a user controls at submission (-A, the job's name fields) and a state file
# whose numbers are not the writer's.

def test_an_account_in_other_case_meets_the_accounts_budget(tmp_path, run_submit):
    # Slurm's association lookup ignores case: "-A PHYSICS" runs (and is charged) in physics.
    path = state(tmp_path, entry(), entry(id_=8, scope="account_user", account="chem",
                                         user="alice"))
    assert run_submit(path, user_name="bob", account="PHYSICS")[0] == ERROR
    assert run_submit(path, user_name="bob", account="Physics")[0] == ERROR
    assert run_submit(path, user_name="alice", account="CHEM")[0] == ERROR
    assert run_submit(path, user_name="bob", account="chem")[0] == SUCCESS


def test_an_empty_account_is_none_and_the_default_account_counts(tmp_path, run_submit):
    path = state(tmp_path, entry())
    rc, _ = run_submit(path, user_name="bob", account="<empty>", default_account="physics")
    assert rc == ERROR
    rc, logs = run_submit(path, user_name="<empty>", user_id="1000", account="<empty>")
    assert rc == SUCCESS and not [m for k, m in logs if k == "error"]


@pytest.mark.parametrize("account", [
    "%s%s%s%n", "physics\nbudget account x - deny kWh 9.0 1.0 - 1 day", "(.-)%d*[",
    "<long>:physics", "\u00e9\u202e", "physics%z"])
def test_hostile_account_names_neither_error_nor_refuse(tmp_path, run_submit, account):
    path = state(tmp_path, entry(account="other"))
    rc, logs = run_submit(path, user_name="%s%n", account=account)
    assert rc == SUCCESS
    assert not [m for kind, m in logs if kind in ("error", "user")], logs


@pytest.mark.parametrize("used, limit", [
    ("nan", "1.000000"), ("inf", "1.000000"), ("0x10", "1.000000"), ("1e999", "1.0"),
    ("2.000000", "nan"), ("-1.000000", "1.000000"), ("2", "1")])
def test_numbers_not_written_by_the_writer_make_the_state_garbled(tmp_path, run_submit, used,
                                                                 limit):
    path = tmp_path / "budget.state"
    path.write_text(f"# jobenergy budget state v1\ngenerated {int(time.time())}\n"
                    f"budget account physics - deny kWh {used} {limit} - 7 day\n")
    rc, logs = run_submit(path, user_name="alice", account="physics")
    assert rc == SUCCESS
    assert [m for kind, m in logs if kind == "error"] == [
        f"jobenergy budget: {path} line 3 is garbled; job accepted without a budget check "
        "(fail open)"], logs
