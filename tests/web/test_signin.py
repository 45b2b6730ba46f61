"""Signing in on the pages of a server with authentication on (``--auth jwt,token``).

The scenario is posted with real credentials (a hooks token for the events, each node's agent
token for its batches). In the browser a user pastes ``scontrol token``'s output (a Slurm JWT
signed with the server's key) and sees only their own jobs, as the API shows them; an admin
token sees everything; a bad token is refused with the server's reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import jwt
import pytest

from jobenergy.sim.processes import free_port, start_server, stop

#: The console line Chromium writes for the 401 that shows the sign-in form.
UNAUTHORIZED = "status of 401"


def _token(db_url: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "jobenergy.cli.main", "auth", "token", *args],
        capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "JOBENERGY_SERVER_DB_URL": db_url})
    return out.stdout.strip()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, scenario: ModuleType
            ) -> Iterator[dict[str, Any]]:
    """A server with ``--auth jwt,token`` holding the scenario; its JWT key and admin token."""
    work = tmp_path_factory.mktemp("signin")
    key = os.urandom(32)
    key_path = work / "jwt_hs256.key"
    key_path.write_bytes(key)
    key_path.chmod(0o600)
    config = work / "server.toml"
    config.write_text('[server]\nsacctmgr = ""\n')  # no Slurm here: roles from the token
    db_url = f"sqlite:///{work / 'signin.db'}"
    port = free_port()
    proc = start_server(db_url, port, work / "server.log", "--jwt-key", str(key_path),
                        "--config", str(config), auth="jwt,token")
    url = f"http://127.0.0.1:{port}"
    try:
        cluster = scenario.CLUSTER
        hooks = _token(db_url, "--cluster", cluster, "--role", "hooks")
        agents = {node: {"Authorization": "Bearer " + _token(db_url, "--cluster", cluster,
                                                              "--node", node)}
                  for node in scenario.NODE_SPAN}
        admin = _token(db_url, "--cluster", cluster, "--role", "admin")
        expected = scenario.post(url, hooks={"Authorization": f"Bearer {hooks}"},
                                 agents=agents, admin={"Authorization": f"Bearer {admin}"})
        yield {"url": url, "key": key, "admin": admin, "expected": expected}
    finally:
        stop(proc)


def scontrol_token(key: bytes, user: str) -> str:
    """Return what ``scontrol token`` prints: ``SLURM_JWT=<HS256 JWT of user>``."""
    now = int(time.time())
    return "SLURM_JWT=" + jwt.encode({"sun": user, "iat": now, "exp": now + 600}, key,
                                     algorithm="HS256")


def sign_in(browser: Any, text: str, user: str = "") -> int:
    """Type into the sign-in form as a person would, submit it; return the renders before."""
    from selenium.webdriver.common.by import By

    driver = browser.driver
    assert driver.find_element(By.ID, "signin").is_displayed()
    field = driver.find_element(By.ID, "signin-token")
    field.clear()
    field.send_keys(text)
    if user:
        driver.find_element(By.ID, "signin-user").send_keys(user)
    before = browser.renders()
    driver.find_element(By.ID, "signin-submit").click()
    return before


def job_ids(browser: Any) -> list[str]:
    return sorted(row["job_id"][0] for row in browser.table("#jobs-table"))


def test_a_slurm_jwt_shows_the_users_own_jobs(secured: dict[str, Any], make_browser: Any,
                                                 scenario: ModuleType) -> None:
    browser = make_browser(secured["url"])
    browser.open("/?period=all", state="signin")
    assert browser.js("return document.getElementById('content').classList"
                      ".contains('hidden')")
    assert "authentication required" in browser.text("#signin-error")
    browser.check_requests(allow_console=(UNAUTHORIZED,))
    browser.screenshot("signin-form")

    before = sign_in(browser, scontrol_token(secured["key"], "bob"))
    browser.settle(renders=before)
    assert browser.text("#identity") == "bob (jwt)"
    assert job_ids(browser) == ["9002"]
    kwh = browser.table("#jobs-table")[0]["energy_kwh"][1]
    assert kwh == pytest.approx(secured["expected"].kwh("9002"), rel=1e-9)
    # Each request carried the JWT in Slurm's headers; the credential stays in this tab.
    stored = browser.js("return JSON.parse(sessionStorage.getItem('jobenergy.credential'))")
    assert stored["kind"] == "jwt" and stored["user"] == "bob"
    browser.check_requests()
    browser.screenshot("signin-jwt-jobs")

    # Another user's job: the API's 403, shown as is.
    browser.open(f"/job?id=9001&cluster={scenario.CLUSTER}", state="error")
    assert "not visible to jwt:bob" in browser.text("#error")
    browser.check_requests(allow_console=("403",))
    # Bob's usage counts his own jobs only; per-node energy is for operators.
    browser.open("/usage?period=all")
    assert [r["group"][0] for r in browser.table("#usage-table")] == ["bob"]
    browser.open(f"/cluster?cluster={scenario.CLUSTER}&period=all")
    assert "operators and admins" in browser.text("#nodes-note")
    browser.check_requests(allow_console=("403",))
    browser.screenshot("signin-jwt-cluster")

    # Signing out forgets the credential.
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser.driver.find_element("tag name", "body")
    browser.js("document.getElementById('signout').click()")
    WebDriverWait(browser.driver, 30).until(expected_conditions.staleness_of(page))
    browser.settle("signin")
    assert browser.js("return sessionStorage.getItem('jobenergy.credential')") is None


def test_a_jobenergy_token_and_a_bad_one(secured: dict[str, Any], make_browser: Any) -> None:
    browser = make_browser(secured["url"])
    browser.open("/?period=all", state="signin")
    sign_in(browser, "je_not-a-real-token")
    browser.settle("signin")
    assert browser.text("#signin-error") == (
        "Signed-in credential refused: unknown or revoked token")
    before = sign_in(browser, secured["admin"])
    browser.settle(renders=before)
    assert job_ids(browser) == ["9001", "9002", "9003"]
    assert "reads all" in browser.text("#identity")
    browser.check_requests(allow_console=(UNAUTHORIZED,))
    browser.screenshot("signin-token-jobs")
    # A JWT without a user name claim needs the name typed in.
    assert browser.js("try { JE.parseCredential('a.b.c', ''); return 'parsed' } "
                      "catch (e) { return e.message }") == (
        "this JWT names no user (sun): type the user name")
    assert browser.js("return JE.parseCredential('a.b.c', 'carol')") == {
        "kind": "jwt", "user": "carol", "token": "a.b.c"}


def test_a_user_sees_only_the_budgets_that_apply_to_them(
        secured: dict[str, Any], make_browser: Any, scenario: ModuleType) -> None:
    import httpx

    admin = {"Authorization": f"Bearer {secured['admin']}"}
    budgets = {b["id"]: b for b in scenario.post_budgets(secured["url"], admin=admin)}
    browser = make_browser(secured["url"])
    browser.open("/budgets", state="signin")
    token = scontrol_token(secured["key"], "bob")
    before = sign_in(browser, token)
    browser.settle(renders=before)
    # Bob's own budget and his account's (he ran a job in physics); not alice's, nor the
    # accounts he has no job in: what the API answers him.
    shown = browser.js("return [...document.querySelectorAll('#budgets [data-budget]')]"
                       ".map(s => s.querySelector('[data-field=title]').textContent)")
    assert sorted(shown) == ["account physics", "user bob"]
    jwt_headers = {"X-SLURM-USER-NAME": "bob",
                   "X-SLURM-USER-TOKEN": token.removeprefix("SLURM_JWT=")}
    api = httpx.get(f"{secured['url']}/api/v1/budgets", headers=jwt_headers, timeout=60).json()
    ids = browser.js("return [...document.querySelectorAll('#budgets [data-budget]')]"
                     ".map(s => Number(s.dataset.budget))")
    assert ids == [b["id"] for b in api] and len(budgets) == 5
    physics = next(b for b in api if b["account"] == "physics")
    assert browser.js("return document.querySelector(`[data-budget='${arguments[0]}'] "
                      "[data-field=percent]`).textContent", physics["id"]) == (
        f"{physics['percent']:.1f} %")
    assert browser.text("#budgets-count") == "2 budgets"
    browser.check_requests(allow_console=(UNAUTHORIZED,))
    browser.screenshot("signin-jwt-budgets")
