"""The pages in a real browser (headless Chromium) against a real server with known data.

The server runs ``--auth none`` on loopback (the demo's set-up) and holds tests/web/scenario.py's
three jobs. Each test loads a page, checks that its charts and tables show the scenario's
figures, that every request went to the server itself (DevTools network events) with no
console error or CSP violation, and saves a screenshot.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from jobenergy.sim.processes import free_port, start_server, stop

UJ_PER_KWH = 3.6e12


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, scenario: ModuleType
         ) -> Iterator[tuple[str, Any]]:
    """A server process (auth none, PUE 1.5, 200 g/kWh) with the scenario posted."""
    work = tmp_path_factory.mktemp("web")
    port = free_port()
    proc = start_server(f"sqlite:///{work / 'web.db'}", port, work / "server.log",
                        "--pue", "1.5", "--carbon-intensity", "200")
    url = f"http://127.0.0.1:{port}"
    try:
        yield url, scenario.post(url)
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def browser(site: tuple[str, Any], make_browser: Any) -> Any:
    return make_browser(site[0])


def approx(kwh: float) -> Any:
    return pytest.approx(kwh, rel=1e-9, abs=1e-15)


def fmt(x: float) -> str:
    """Return ``x`` as the pages show it (``JE.fmt`` in static/js/common.js)."""
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    for bound, digits in ((100, 1), (10, 2), (1, 3)):
        if a >= bound:
            return f"{x:.{digits}f}"
    return f"{x:.3g}" if a >= 1e-4 else f"{x:.2e}"  # small values: not in this scenario


def by(rows: list[dict[str, Any]], col: str) -> dict[str, dict[str, Any]]:
    return {row[col][0]: row for row in rows}


def test_jobs_page_lists_the_jobs_with_their_energy(browser, site, scenario):
    url, expected = site
    browser.open("/?period=all")
    rows = by(browser.table("#jobs-table"), "job_id")
    assert sorted(rows) == ["9001", "9002", "9003"]
    api = {j["job_id"]: j for j in httpx.get(f"{url}/api/v1/jobs", timeout=60).json()["jobs"]}
    for job_id, row in rows.items():
        assert row["energy_kwh"][1] == approx(expected.kwh(job_id))
        for key in ("facility_energy_kwh", "co2e_kg"):
            assert row[key][1] == approx(api[job_id][key])
    # 9001 ran before 11:00 (PUE 1.5, 200 g/kWh), 9003 after (1.2, 300 g/kWh).
    for job_id, pue, g_per_kwh in (("9001", 1.5, 200), ("9003", 1.2, 300)):
        assert rows[job_id]["facility_energy_kwh"][1] == approx(expected.kwh(job_id) * pue)
        assert rows[job_id]["co2e_kg"][1] == approx(
            expected.kwh(job_id) * pue * g_per_kwh / 1000)
    # The markup in a job name is text: no element made of it, nothing run.
    assert rows["9001"]["name"][0] == scenario.XSS_NAME
    assert browser.js("return document.querySelectorAll('#jobs-table img').length") == 0
    assert browser.js("return window.__xss === undefined")
    assert browser.text("#jobs-count") == "3 of 3 jobs"
    assert browser.text("#identity") == "authentication off (demo)"
    browser.check_requests()
    browser.screenshot("jobs")
    # A filter reloads the table and lands in the page's address.
    browser.change("user", "bob")
    assert sorted(by(browser.table("#jobs-table"), "job_id")) == ["9002"]
    assert "user=bob" in browser.js("return location.search")
    browser.check_requests()


def test_job_page_shows_energy_power_phases_and_steps(browser, site, scenario):
    url, expected = site
    browser.open(f"/job?id=9001&cluster={scenario.CLUSTER}")
    job = httpx.get(f"{url}/api/v1/jobs/9001", params={"cluster": scenario.CLUSTER},
                    timeout=60).json()
    assert job["energy_uj"] == expected.job_uj["9001"]
    assert browser.text("#job-title") == f"Job 9001 on {scenario.CLUSTER}: {scenario.XSS_NAME}"
    assert browser.js("return document.querySelectorAll('main img').length") == 0
    stats = browser.js("return Object.fromEntries([...document.querySelectorAll('#job-stats "
                       "[data-stat]')].map(d => [d.dataset.stat, d.querySelector('dd')"
                       ".firstChild.textContent]))")
    assert stats["energy"] == f"{fmt(expected.kwh('9001'))} kWh"
    assert stats["facility"].endswith(" kWh") and stats["co2e"].endswith(" kg CO2e")
    assert stats["coverage"] == "100.0 %"
    quality = browser.js("const d = document.querySelectorAll('#job-quality dt, #job-quality dd');"
                         "const o = {}; for (let i = 0; i < d.length; i += 2) "
                         "o[d[i].textContent] = d[i + 1].textContent; return o;")
    # No BMC in this scenario, no --energy-limit: the page says so rather than leaving a gap.
    assert job["quality"]["bmc_reconciled"] is False
    assert (quality["BMC reconciled"], quality["Energy limit"]) == ("no", "none")
    # Energy per component and per GPU: the scenario's sums.
    rows = browser.table("#components-table")
    got = {(r["component"][0], r["source"][0]): r["kwh"][1] for r in rows}
    gpus = [s for c, s, _, _ in scenario.SOURCES["gpu1"] if c == "gpu"]
    assert set(got) == {("cpu", "–"), ("dram", "–"), *(("gpu", s) for s in gpus)}
    assert got["cpu", "–"] == approx(expected.job_component_uj["9001", "cpu"] / UJ_PER_KWH)
    assert sum(got.values()) == approx(expected.kwh("9001"))
    # Phases: training then inference, with the energy announced in them.
    phases = browser.table("#phases-table")
    assert [p["phase"][0] for p in phases] == ["training", "inference"]
    for p in phases:
        assert p["energy_kwh"][1] == approx(expected.phase_uj["9001", p["phase"][0]] / UJ_PER_KWH)
    assert [p["samples"][0] for p in phases] == ["4000", "1000"]
    # Steps: CPU time 1:3 between batch and step 0.
    steps = by(browser.table("#steps-table"), "step")
    assert sum(s["energy_kwh"][1] for s in steps.values()) == approx(expected.kwh("9001"))
    assert steps["batch"]["share"][0] == "25.0 %"
    # Power chart: one line per source of the node, the bucket grid of the API, phases shaded.
    series = httpx.get(f"{url}/api/v1/jobs/9001/series",
                       params={"cluster": scenario.CLUSTER}, timeout=60).json()
    assert series["energy_uj"] == expected.job_uj["9001"]
    chart = browser.chart("power")
    assert len(chart["labels"]) == len(scenario.SOURCES["gpu1"]) == len(series["lines"])
    assert "gpu1 cpu package-0" in chart["labels"]
    assert chart["counts"] == [len(series["t"])] * len(series["lines"])
    assert chart["axes"][1] == "power (W)"
    assert chart["title"] == "Power per component and GPU"
    assert chart["bands"] == ["training (llama-7b)", "inference (llama-7b)"]
    # The legend shows each line's power at the cursor: cpu gets 3/4 of the 120 W.
    i = len(series["t"]) // 2
    legend = browser.legend_at("power", i)
    cpu = next(line for line in series["lines"] if line["component"] == "cpu")
    assert legend[1 + chart["labels"].index("gpu1 cpu package-0")] == \
        f"{fmt(cpu['power_w'][i])} W"
    assert 89 < cpu["power_w"][i] < 91
    browser.check_requests()
    browser.screenshot("job")


def test_leaderboards_put_training_and_inference_side_by_side(browser, site):
    url, expected = site
    browser.open("/leaderboards?period=all")
    api = httpx.get(f"{url}/api/v1/leaderboards/models", params={"limit": 100}, timeout=60).json()
    rows = {(r["model"][0], r["phase"][0]): r for r in browser.table("#board-table")}
    assert set(rows) == {("bert", "training"), ("llama-7b", "training"),
                         ("llama-7b", "inference")}
    # Phase parts: 9001's training and inference annotations, 9002 all inference.
    assert rows["llama-7b", "training"]["total_energy_kwh"][1] == approx(
        expected.phase_uj["9001", "training"] / UJ_PER_KWH)
    assert rows["llama-7b", "inference"]["total_energy_kwh"][1] == approx(
        (expected.phase_uj["9001", "inference"] + expected.job_uj["9002"]) / UJ_PER_KWH)
    assert rows["bert", "training"]["mean_energy_kwh"][1] == approx(expected.kwh("9003"))
    assert rows["bert", "training"]["j_per_sample"][1] == pytest.approx(
        expected.job_uj["9003"] / 1e6 / 6000)
    for name, key in (("kwh", "mean_energy_kwh"), ("jps", "j_per_sample"), ("co2", "co2e_kg")):
        chart = browser.chart(name)
        assert chart["categories"] == ["bert", "llama-7b"]
        assert chart["labels"] == ["training", "inference"]
        assert chart["counts"] == [2, 1], name  # bert has no inference bar
        drawn = {(chart["categories"][x // chart["stride"]], chart["labels"][s]): v
                 for s, col in enumerate(chart["data"][1:]) for x, v in enumerate(col)
                 if v is not None}
        assert drawn == {(r["model"], r["phase"]): r[key] for r in api}
    # The legend at llama-7b's inference bar shows its kWh per job.
    chart = browser.chart("kwh")
    legend = browser.legend_at("kwh", 1 * chart["stride"] + 1)
    assert legend[0] == "llama-7b"
    assert legend[2] == rows["llama-7b", "inference"]["mean_energy_kwh"][0] + " kWh"
    browser.check_requests()
    browser.screenshot("leaderboards")
    browser.change("phase", "training")
    assert browser.chart("kwh")["labels"] == ["training"]
    assert len(browser.table("#board-table")) == 2
    assert browser.text("#board-source") == "Computed now."  # a small database: live
    # The scenario's jobs ran on 23 November 2026: none in the last 7 days. The page asks
    # for the rolling window by name (the server may answer it from its materialisation).
    browser.change("period", "7d")
    assert browser.text("#board-table") == "no jobs with a model tag in this period"
    asked = browser.js("return performance.getEntriesByType('resource').map(e => e.name)")
    assert any("/api/v1/leaderboards/models?" in url and "period=7d" in url
               and "start=" not in url for url in asked), asked
    browser.check_requests()


def test_usage_per_user_and_account_with_csv(browser, site, scenario):
    _, expected = site
    browser.open("/usage?period=all&group_by=user")
    rows = by(browser.table("#usage-table"), "group")
    assert sorted(rows) == ["alice", "bob"]
    for user, row in rows.items():
        assert row["energy_kwh"][1] == approx(expected.user_kwh(user))
    chart = browser.chart("usage")
    assert sorted(chart["categories"]) == ["alice", "bob"]
    assert chart["counts"] == [2, 2]
    browser.check_requests()
    browser.screenshot("usage-per-user")
    browser.change("group_by", "account")
    rows = by(browser.table("#usage-table"), "group")
    assert sorted(rows) == [scenario.FORMULA_ACCOUNT, "physics"]
    assert rows["physics"]["energy_kwh"][1] == approx(expected.account_kwh("physics"))
    # The CSV is the table's rows; an account that a spreadsheet would run is text.
    text = browser.js("return JE.usageCsv()")
    table = list(csv.reader(io.StringIO(text)))
    assert table[0] == ["account", "jobs", "kWh", "GPU kWh", "facility kWh", "kg CO2e",
                        "GPU hours"]
    cells = {row[0]: row for row in table[1:]}
    assert set(cells) == {"'" + scenario.FORMULA_ACCOUNT, "physics"}
    assert float(cells["physics"][2]) == approx(expected.account_kwh("physics"))
    cells = browser.js("return arguments[0].map(JE.csvCell)",
                       ["=cmd", "+1", "-1", "@SUM(A1)", "\tx", 'say "hi"', "a,b", "plain"])
    assert cells == ["'=cmd", "'+1", "'-1", "'@SUM(A1)", "'\tx", '"say ""hi"""', '"a,b"',
                     "plain"]
    assert browser.js("return JE.csvCell(-1.5)") == "-1.5"  # numbers are never formulas
    # The button saves that same CSV (made in the page: no request).
    browser.js("document.getElementById('csv').click()")
    from selenium.webdriver.support.ui import WebDriverWait

    saved = WebDriverWait(browser.driver, 20).until(
        lambda _: [p for p in Path(browser.downloads).glob("*.csv")])
    assert saved[0].name.startswith("jobenergy-usage-per-account-")
    assert saved[0].read_bytes().decode("utf-8") == text
    browser.check_requests()
    browser.screenshot("usage-per-account")
    # Every job ran in partition gpu: one row holding all of it.
    browser.change("group_by", "partition")
    rows = by(browser.table("#usage-table"), "group")
    assert list(rows) == ["gpu"]
    assert rows["gpu"]["energy_kwh"][1] == approx(
        expected.user_kwh("alice") + expected.user_kwh("bob"))
    browser.check_requests()


BUDGET_CARDS = """
    return [...document.querySelectorAll('#budgets section[data-budget]')].map(s => {
      const bar = s.querySelector('.budget-bar');
      const mark = s.querySelector('.budget-projection');
      const tick = s.querySelector('.budget-limit');
      const left = (e) => e ? (e.getBoundingClientRect().left - bar.getBoundingClientRect().left
        - bar.clientLeft) / bar.clientWidth : null;
      return Object.assign(Object.fromEntries([...s.querySelectorAll('[data-field]')].map(
        e => [e.dataset.field, e.textContent])), {
        id: Number(s.dataset.budget), level: s.dataset.level, scale: Number(bar.dataset.scale),
        fill: s.querySelector('.budget-fill').getBoundingClientRect().width / bar.clientWidth,
        fill_color: getComputedStyle(s.querySelector('.budget-fill')).backgroundColor,
        marker: mark ? left(mark) + 1 / bar.clientWidth : null,
        limit_tick: tick ? left(tick) + 1 / bar.clientWidth : null});
    });"""


def budget_cards(browser: Any) -> dict[int, dict[str, Any]]:
    """Return each budget card of /budgets: its texts (by data-field) and bar geometry."""
    return {card["id"]: card for card in browser.js(BUDGET_CARDS)}


def show(x: float) -> str:
    """Return ``x`` as ``JE.fmt`` shows it, 0 and round numbers below 1 included
    (``toPrecision(3)`` keeps trailing zeros: 0.025 is ``0.0250``)."""
    return "0" if x == 0 else f"{x:#.3g}" if 1e-4 <= abs(x) < 1 else fmt(x)


def iso_z(value: str) -> str:
    """Return an API time as the pages show it (``JE.time``: ``YYYY-MM-DD HH:MM:SSZ``)."""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def test_budgets_page_shows_each_budget_as_a_bar(browser, site, scenario):
    url, expected = site
    budgets = {b["id"]: b for b in scenario.post_budgets(url)}
    opened = datetime.now(UTC)
    browser.open("/budgets")
    cards = budget_cards(browser)
    # What the page drew from: its own GET, made after the PUTs. The projection ("at the
    # current rate": used x length / elapsed) and the period move with the server's clock, so
    # those are checked against this answer; the PUTs' answers may be a second older.
    drawn = {b["id"]: b for b in browser.js("return JE.budgets")}
    assert sorted(drawn) == sorted(budgets)
    assert sorted(cards) == sorted(budgets)  # the demo's caller is an admin: all of them
    assert browser.text("#budgets-count") == f"{len(budgets)} budgets"
    assert browser.text("header nav a[aria-current=page]") == "Budgets"
    levels = {}
    for (body, jobs), b in zip(scenario.BUDGETS, budgets.values(), strict=True):
        card = cards[b["id"]]
        # Used: the counted jobs' facility energy (kWh budgets) or CO2e, as the scenario
        # prices each hour (PUE 1.5 / 1.2, 200 / 300 g/kWh, changing at 11:00).
        kwh = b["unit"] == "kWh"
        used = sum(expected.facility_kwh(j) if kwh else expected.co2e_kg(j) for j in jobs)
        # CO2e is kept in whole µg per job hour.
        assert b["used"] == (approx(used) if kwh else pytest.approx(used, abs=2e-9))
        used = b["used"]
        unit = "kWh" if kwh else "kg CO2e"
        limit = b["limit"]
        percent = 100 * used / limit
        assert b["percent"] == pytest.approx(percent, rel=1e-9)
        assert card["percent"] == f"{percent:.1f} %"
        assert card["used"] == f"{show(used)} of {show(limit)} {unit} used"
        remaining = max(0.0, limit - used)
        text = f"{show(remaining)} {unit}" + (
            f" (over the limit by {show(used - limit)} {unit})" if used > limit else "")
        assert card["remaining"] == text
        levels[body.get("user") or body["account"]] = card["level"]
        assert card["level"] == ("over" if percent >= 100 else "near" if percent >= 90
                                 else "ok")
        put_b, b = b, drawn[b["id"]]
        assert (b["used"], b["limit"], b["percent"]) == (
            put_b["used"], put_b["limit"], put_b["percent"])
        if put_b["projection"] is not None:  # the rate can only have slowed since the PUT
            assert put_b["projection"] >= b["projection"] == pytest.approx(
                put_b["projection"], rel=1e-3)
        # The bar: scale the limit (or up to twice it, to show use or projection past it).
        proj = b["projection_percent"]
        scale = min(200, max(100, percent, proj or 0))
        assert card["scale"] == pytest.approx(scale, rel=1e-6)
        assert card["fill"] == pytest.approx(min(percent, scale) / scale, abs=0.01)
        if scale > 100:
            assert card["limit_tick"] == pytest.approx(100 / scale, abs=0.01)
        else:
            assert card["limit_tick"] is None
        assert card["marker"] == pytest.approx(min(proj, scale) / scale, abs=0.01)
        assert card["projection"] == (f"{show(b['projection'])} {unit} ({proj:.1f} % of the "
                                      "limit) at the current rate")
        assert card["submit_policy"].startswith(body["submit_policy"] + ": ")
        assert card["running_policy"].startswith(body["running_policy"] + ": ")
        if b["resets_at"] is None:
            assert card["period"] == (f"range: {iso_z(b['period_start'])} – "
                                      f"{iso_z(b['period_end'])} (under way)")
            assert card["resets"] == ("never: a range, it ends "
                                      f"{scenario.RANGE_END:%Y-%m-%d %H:%M:%S}Z")
        else:
            assert card["resets"] == iso_z(b["resets_at"])
            assert card["period"].startswith(f"{b['period']}: {iso_z(b['period_start'])} – ")
    assert levels == {"alice": "near", "physics": "over", scenario.FORMULA_ACCOUNT: "ok",
                      "bob": "ok", "carol": "ok"}
    # The month budget resets at the start of next month (UTC).
    month = next(b for b in budgets.values() if b["period"] == "month")
    firsts = {(now.replace(day=28) + timedelta(days=4)).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0).strftime("%Y-%m-%d %H:%M:%SZ")
        for now in (opened, datetime.now(UTC))}  # two only if the page loaded across a month
    assert cards[month["id"]]["resets"] in firsts
    # Colours change at 90 % and 100 %.
    colors = {lv: c["fill_color"] for c in cards.values() for lv in [c["level"]]}
    assert len(set(colors.values())) == 3
    # Names are text: the account named with markup made no element, ran nothing.
    markup = next(b for b in budgets.values() if b["scope"] == "account_user")
    assert cards[markup["id"]]["title"] == f"user carol in account {scenario.MARKUP_ACCOUNT}"
    assert browser.js("return document.querySelectorAll('main img').length") == 0
    assert browser.js("return window.__xss === undefined")
    browser.check_requests()
    browser.screenshot("budgets")


def test_cluster_page_shows_energy_per_node_and_factors(browser, site, scenario):
    url, expected = site
    browser.open(f"/cluster?cluster={scenario.CLUSTER}&period=all")
    chart = browser.chart("nodes")
    assert chart["categories"] == ["gpu1", "gpu2"]
    assert chart["labels"] == ["measured", "attributed", "unattributed"]
    stride = chart["stride"]
    for i, node in enumerate(chart["categories"]):
        measured = sum(v for (n, c), v in expected.node_measured_uj.items() if n == node)
        attributed = sum(v for (n, c), v in expected.node_attributed_uj.items() if n == node)
        values = [chart["data"][1 + k][i * stride + k] for k in range(3)]
        assert values == [approx(measured / UJ_PER_KWH), approx(attributed / UJ_PER_KWH),
                          approx((measured - attributed) / UJ_PER_KWH)]
    rows = browser.table("#nodes-table")
    assert len(rows) == len(expected.node_measured_uj)
    gpu2_cpu = next(r for r in rows if r["node"][0] == "gpu2" and r["component"][0] == "cpu")
    assert gpu2_cpu["measured_kwh"][1] == approx(
        expected.node_measured_uj["gpu2", "cpu"] / UJ_PER_KWH)
    assert gpu2_cpu["attributed_share"][0] == "75.0 %"
    assert browser.js("return document.querySelector('[data-stat=pue] dd').firstChild"
                      ".textContent") == "1.50"
    # PUE and carbon intensity over the scenario's span: the series step at 11:00.
    factors = browser.chart("factors")
    assert factors["labels"] == ["PUE", "carbon intensity"]
    assert factors["axes"][1:] == ["PUE", "g CO2e/kWh"]
    eleven = scenario.FACTORS["pue"][1][0].timestamp()
    t = factors["data"][0]
    assert t[0] < eleven < t[-1]
    assert {v for x, v in zip(t, factors["data"][1], strict=True) if x < eleven} == {1.5}
    assert {v for x, v in zip(t, factors["data"][1], strict=True) if x > eleven} == {1.2}
    assert {v for x, v in zip(t, factors["data"][2], strict=True) if x > eleven} == {300.0}
    assert browser.legend_at("factors", len(t) - 1)[1:] == ["1.200", "300.0 g/kWh"]
    power = browser.chart("cluster-power")
    assert power["labels"] == ["IT power", "facility power"]
    series = httpx.get(f"{url}/api/v1/clusters/{scenario.CLUSTER}/series", params={
        "start": "2026-11-23T10:59:00Z", "end": "2026-11-23T11:01:00Z"}, timeout=60).json()
    assert series["energy_uj"] == sum(expected.node_measured_uj.values())
    assert [x + series["step_s"] / 2 for x in series["t"]] == t  # drawn mid-bucket
    assert power["data"][1] == series["power_w"]
    assert power["data"][2] == series["facility_power_w"]
    browser.check_requests()
    browser.screenshot("cluster")
    # A node's link opens its measured / attributed / unattributed power over time.
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser.driver.find_element("tag name", "body")
    browser.js("[...document.querySelectorAll('#nodes-table a')]"
               ".find(a => a.textContent === 'gpu1').click()")
    WebDriverWait(browser.driver, 30).until(expected_conditions.staleness_of(page))
    browser.settle()
    node = browser.chart("node")
    kinds = {label.split()[0] for label in node["labels"]}
    assert kinds == {"measured", "attributed", "unattributed"}
    assert {label.split()[1] for label in node["labels"]} == {"cpu", "dram", "gpu"}
    assert browser.text("#node-title") == "Node gpu1: power over time"
    browser.check_requests()
    browser.screenshot("cluster-node")


def test_api_docs_are_served_from_the_server(browser, site):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.drain()
    browser.driver.get(site[0] + "/docs")
    WebDriverWait(browser.driver, 30).until(lambda d: d.execute_script(
        "return document.querySelectorAll('.opblock').length > 10"))
    assert "jobenergy" in browser.text(".swagger-ui .info .title")
    # Opening an operation and trying it out stays on the server, within the CSP.
    browser.js("document.querySelector('[id$=whoami_api_v1_whoami_get] .opblock-summary-control')"
               ".click()")
    WebDriverWait(browser.driver, 30).until(lambda d: d.execute_script(
        "return !!document.querySelector('.try-out__btn')"))
    browser.js("document.querySelector('.try-out__btn').click()")
    WebDriverWait(browser.driver, 30).until(lambda d: d.execute_script(
        "return !!document.querySelector('.execute')"))
    browser.js("document.querySelector('.execute').click()")
    status = "td.response-col_status:not(.col_header)"
    WebDriverWait(browser.driver, 30).until(lambda d: d.execute_script(
        "return !!document.querySelector(`.live-responses-table ${arguments[0]}`)", status))
    assert browser.text(f".live-responses-table {status}").strip() == "200"
    urls = browser.check_requests()
    assert any(u.endswith("/swagger-ui-bundle.js") for u in urls)
    assert any(u.endswith("/openapi.json") for u in urls)
    browser.screenshot("docs")
