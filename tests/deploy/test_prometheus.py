"""deploy/prometheus and deploy/grafana against a real Prometheus scraping a real agent and server.

promtool checks the rule and scrape files and runs their unit tests (``rules_test.yml``);
then Prometheus itself (Debian's binary, 127.0.0.1, a temporary storage folder, 1 s scrapes
and rule evaluations) scrapes a server process and an agent process measuring a simulated
node, and the recording rules and every dashboard query are asked through its HTTP API.
Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobenergy.sim.node import SimNode
from jobenergy.sim.processes import free_port, start_agent, start_server, stop, write_agent_config

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
SCRAPE = ROOT / "deploy" / "prometheus" / "scrape.yml"
RULES_TEST = Path(__file__).with_name("rules_test.yml")
DASHBOARDS = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
CLUSTER, NODE = "prom", "p1"
INTERVAL_S = 0.2
SOURCES = ("package-0", "package-0/dram", "package-1", "package-1/dram")
#: Dashboard queries that may rightly answer nothing here: NVML errors (the node has no GPU).
MAY_BE_EMPTY = {"jobenergy_agent_gpu_errors_total"}
#: What dashboards' variables stand for when their queries are checked.
VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$cluster": ".*", "$nodes": ".*"}


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/sbin")
    if path is None:
        message = (f"{name} not found: install Debian's prometheus package "
                   "(apt-get install prometheus; `make system-deps` does)")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _run(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def wait_for(predicate: Callable[[], Any], what: str, timeout_s: float = 60.0) -> Any:
    """Return the predicate's first truthy value; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


# -- promtool --------------------------------------------------------------------------
def test_rules_and_scrape_config_are_valid():
    promtool = _tool("promtool")
    assert "SUCCESS" in _run(promtool, "check", "rules", str(RULES))
    out = _run(promtool, "check", "config", str(SCRAPE))  # also checks rules.yml it names
    assert "valid prometheus config" in out


def test_alerting_and_recording_rules_behave():
    assert "SUCCESS" in _run(_tool("promtool"), "test", "rules", str(RULES_TEST))


# -- dashboards ------------------------------------------------------------------------
def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[tuple[str, str, str]]:
    """Return (dashboard file, panel title, PromQL) of every Prometheus target."""
    return [
        (path.name, panel["title"], target["expr"])
        for path in DASHBOARDS
        for panel in _panels(json.loads(path.read_text()))
        for target in panel.get("targets", [])
        if target.get("datasource", panel.get("datasource", {})).get("type") == "prometheus"
    ]


def test_dashboards_are_well_formed():
    assert {p.name for p in DASHBOARDS} >= {
        "jobenergy-cluster.json", "jobenergy-health.json", "jobenergy-job.json"}
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        panels = list(_panels(dashboard))
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), path.name
        assert dashboard["uid"].startswith("jobenergy-") and dashboard["schemaVersion"] >= 36
        variables = {v["name"] for v in dashboard["templating"]["list"]}
        for panel in panels:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"].lstrip("${").rstrip("}") in variables, panel
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                # root_selector is JSONata, whose $functions Grafana leaves alone.
                text = json.dumps({k: v for k, v in target.items() if k != "root_selector"})
                for used in re.findall(r"\$\{?(\w+)", text):
                    assert used in variables or used.startswith("__"), (panel["title"], used)
    # The job dashboard reads the API's job series (api/routes_series.py): its fields exist.
    job = json.loads((ROOT / "deploy" / "grafana" / "jobenergy-job.json").read_text())
    infinity = [t for p in _panels(job) for t in p.get("targets", []) if "url" in t]
    assert infinity
    for target in infinity:
        assert target["url"].endswith("/api/v1/jobs/${job_id}/series")
    from jobenergy.api.series_schemas import JobSeries, JobSeriesLine

    assert {"t", "lines"} <= set(JobSeries.model_fields)
    assert {"power_w", "energy_uj", "node", "component", "source"} <= set(
        JobSeriesLine.model_fields)


# -- a live Prometheus -----------------------------------------------------------------
class Live:
    """The processes of the live test and the scenario's exact energy."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        self.node = SimNode(tmp / "node", NODE, ncpus=8, packages=2)
        self.measured_uj: dict[str, int] = {}
        self.idle_uj: dict[str, int] = {}
        self.prom = ""
        self.api = ""
        self.agent_metrics = ""

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Return an instant query's result (asserting Prometheus answered success)."""
        response = httpx.get(f"{self.prom}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def values(self, expr: str, by: str) -> dict[str, float]:
        return {r["metric"].get(by, ""): float(r["value"][1]) for r in self.query(expr)}

    def agent_samples(self) -> int:
        try:
            text = httpx.get(f"{self.agent_metrics}/metrics", timeout=2).text
        except httpx.HTTPError:
            return -1
        found = re.search(r"^jobenergy_agent_samples_total ([0-9.e+]+)$", text, re.M)
        return int(float(found.group(1))) if found else -1

    def settle(self) -> None:
        """Wait for two more agent samples: one wholly after the last change."""
        before = max(self.agent_samples(), 0)
        wait_for(lambda: self.agent_samples() >= before + 2, "the agent's next samples")

    def burn(self, joules: int, job_id: str | None) -> None:
        for i, source in enumerate(SOURCES):
            energy_uj = joules * 1_000_000 + 7 * i + 1
            component = "dram" if source.endswith("/dram") else "cpu"
            self.measured_uj[component] = self.measured_uj.get(component, 0) + energy_uj
            if job_id is None:
                self.idle_uj[component] = self.idle_uj.get(component, 0) + energy_uj
            self.node.add_energy(source, energy_uj)
        if job_id is not None:
            ns = int(4 * INTERVAL_S * 1e9)
            self.node.add_cpu_time(job_id, ns * 4, ns)

    def api_nodes(self) -> dict[tuple[str, str], tuple[int, int]]:
        """Return (kind, component) totals of the node from GET /api/v1/nodes."""
        body = httpx.get(f"{self.api}/api/v1/nodes", params={"cluster": CLUSTER},
                         timeout=10).json()
        totals: dict[str, list[int]] = {}
        for row in body["nodes"]:
            if row.get("node") == NODE:
                total = totals.setdefault(row["component"], [0, 0])
                total[0] += row["measured_uj"]
                total[1] += row["unattributed_uj"]
        return {c: (m, u) for c, (m, u) in totals.items()}


def _prometheus_config(live: Live, server_port: int, agent_port: int) -> Path:
    # JSON is YAML: the shipped rules file, this test's targets and 1 s intervals.
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                   "scrape_timeout": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "jobenergy-agent",
             "static_configs": [{"targets": [f"127.0.0.1:{agent_port}"]}]},
            {"job_name": "jobenergy-collector",
             "static_configs": [{"targets": [f"127.0.0.1:{server_port}"]}]},
        ],
    }
    path = live.tmp / "prometheus.yml"
    path.write_text(json.dumps(config, indent=1))
    return path


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Live]:
    prometheus = _tool("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    live = Live(tmp)
    server_port, agent_port, prom_port = free_port(), free_port(), free_port()
    live.api = f"http://127.0.0.1:{server_port}"
    live.agent_metrics = f"http://127.0.0.1:{agent_port}"
    live.prom = f"http://127.0.0.1:{prom_port}"
    try:
        live.procs.append(start_server(f"sqlite:///{tmp / 'jobenergy.db'}", server_port,
                                       tmp / "server.log"))
        node = live.node
        config = write_agent_config(
            tmp / "agent.toml", collector_url=live.api, auth="none", cluster=CLUSTER,
            node=NODE, interval_s=INTERVAL_S, store_interval_s=INTERVAL_S,
            push_interval_s=0.3, spool_dir=str(tmp / "spool"), sysfs_root=str(node.sysfs_root),
            procfs_root=str(node.procfs_root), cgroup_root=str(node.cgroup_root), nvml="off",
            gpu_map_dir=str(tmp / "gpumap"), metrics_port=agent_port,
        )
        live.procs.append(start_agent(config, tmp / "agent.log"))
        log = open(tmp / "prometheus.log", "ab")  # noqa: SIM115 - the child's, closed below
        live.procs.append(subprocess.Popen(
            [prometheus, f"--config.file={_prometheus_config(live, server_port, agent_port)}",
             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{prom_port}",
             "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
        ))
        log.close()

        def ready() -> bool:
            for proc in live.procs:
                assert proc.poll() is None, f"a process exited; see the logs in {tmp}"
            try:
                return httpx.get(f"{live.prom}/-/ready", timeout=1).is_success
            except httpx.HTTPError:
                return False

        wait_for(ready, "Prometheus to be ready")
        wait_for(lambda: live.agent_samples() >= 1, "the agent's first sample")
        # Idle energy (the node's), seen by Prometheus before a job alone on the node burns
        # more (all of it the job's): the rate rules then have an increase to show.
        live.burn(5, None)
        live.settle()
        idle_j = {c: uj / 1_000_000 for c, uj in live.measured_uj.items()}
        wait_for(lambda: live.values(
            f'jobenergy_collector_measured_energy_joules_total{{cluster="{CLUSTER}"}}',
            "component") == idle_j, "Prometheus to scrape the idle energy")
        node.start_job("7", 5001, list(range(8)))
        live.settle()
        live.burn(30, "7")
        live.settle()
        node.end_job("7")
        live.settle()
        wait_for(lambda: {c: m for c, (m, _) in live.api_nodes().items()} == live.measured_uj,
                 "the collector to store every interval")
        yield live
    finally:
        for proc in reversed(live.procs):
            stop(proc)


def test_collector_and_agent_counters_match_the_api(live):
    nodes = live.api_nodes()
    assert {c: u for c, (_, u) in nodes.items()} == live.idle_uj  # the job's share: none
    expected_j = {c: m / 1_000_000 for c, (m, _) in nodes.items()}
    unattributed_j = {c: u / 1_000_000 for c, (_, u) in nodes.items()}
    # One series per (cluster, component): µJ / 1e6 exactly, as the API's µJ give it.
    wait_for(lambda: live.values(
        f'jobenergy_collector_measured_energy_joules_total{{cluster="{CLUSTER}"}}',
        "component") == expected_j, "the collector's measured joules in Prometheus", 30)
    assert live.values(f'jobenergy_collector_unattributed_energy_joules_total'
                       f'{{cluster="{CLUSTER}"}}', "component") == unattributed_j
    agent = wait_for(lambda: (lambda got: got if got.keys() == expected_j.keys() and all(
        math.isclose(got[c], expected_j[c], rel_tol=1e-12) for c in got) else None)(
        live.values('sum by (component) (jobenergy_agent_measured_energy_joules_total)',
                    "component")), "the agent's measured joules in Prometheus", 30)
    assert agent
    info = live.query("jobenergy_agent_node_info")
    assert [(r["metric"]["cluster"], r["metric"]["node"]) for r in info] == [(CLUSTER, NODE)]
    builds = live.query("jobenergy_build_info")
    assert {r["metric"]["job"] for r in builds} == {"jobenergy-agent", "jobenergy-collector"}
    assert live.values('up', "job") == {"jobenergy-agent": 1.0, "jobenergy-collector": 1.0}
    stored = live.values("jobenergy_collector_batches_total", "outcome")
    sent = live.values("jobenergy_agent_batches_sent_total", "job")["jobenergy-agent"]
    assert stored["stored"] + stored["duplicate"] >= 1 and sent >= 1


def test_recording_rules_follow_the_scenario(live):
    nodes = live.api_nodes()
    measured_uj = sum(m for m, _ in nodes.values())
    unattributed_uj = sum(u for _, u in nodes.values())
    sel = f'{{cluster="{CLUSTER}"}}'

    def total() -> bool:
        got = live.values(f"cluster:jobenergy_collector_measured_energy_joules:total{sel}",
                          "cluster").get(CLUSTER)
        return got is not None and math.isclose(got, measured_uj / 1e6, rel_tol=1e-12)

    wait_for(total, "the lifetime total rule", 30)
    ratio = live.values(f"cluster:jobenergy_collector_unattributed_energy_joules:ratio{sel}",
                        "cluster")[CLUSTER]
    assert math.isclose(ratio, unattributed_uj / measured_uj, rel_tol=1e-9)
    assert 0 < ratio < 1
    assert live.values(f"cluster:jobenergy_collector_nodes_covered:ratio{sel}",
                       "cluster") == {CLUSTER: 1.0}
    age = live.values(f"cluster_node:jobenergy_collector_node_data_age:seconds{sel}", "node")
    assert 0 <= age[NODE] < 60
    power = live.values(f"cluster:jobenergy_collector_measured_energy_joules:rate5m{sel}",
                        "cluster")[CLUSTER]
    assert power > 0  # energy was stored within the last 5 minutes
    # Since Prometheus first saw the cluster, only the job burnt energy: none unattributed.
    hourly = live.values(
        f"cluster:jobenergy_collector_unattributed_energy_joules:ratio_rate1h{sel}", "cluster")
    assert hourly == {CLUSTER: 0.0}

    def evaluated() -> list[dict[str, Any]] | None:
        groups = httpx.get(f"{live.prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        done = all(not r["lastEvaluation"].startswith("0001") for r in rules)
        return rules if done else None

    rules = wait_for(evaluated, "every rule to be evaluated", 30)
    assert len(rules) >= 20
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    alerts = httpx.get(f"{live.prom}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    assert [a["labels"]["alertname"] for a in alerts if a["state"] == "firing"] == []


def test_every_dashboard_query_answers(live):
    queries = dashboard_queries()
    assert len(queries) >= 30
    empty = []
    for dashboard, title, expr in queries:
        for name, value in VARIABLES.items():
            expr = expr.replace(name, value)
        assert "$" not in expr, (dashboard, title, expr)
        if not live.query(expr) and not any(name in expr for name in MAY_BE_EMPTY):
            empty.append((dashboard, title, expr))
    assert empty == []
    for path in DASHBOARDS:
        for variable in json.loads(path.read_text())["templating"]["list"]:
            found = re.fullmatch(r"label_values\((\w+), *(\w+)\)",
                                 variable.get("definition", ""))
            if found:
                metric, label = found.groups()
                values = httpx.get(f"{live.prom}/api/v1/label/{label}/values",
                                   params={"match[]": metric}, timeout=10).json()["data"]
                assert CLUSTER in values, (path.name, variable["name"])


def test_metrics_pass_promtool_lint(live):
    promtool = _tool("promtool")
    for url in (f"{live.agent_metrics}/metrics", f"{live.api}/metrics"):
        text = httpx.get(url, headers={"Accept": "text/plain"}, timeout=10).text
        proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                              text=True, timeout=60, check=False)
        assert proc.returncode == 0 and not proc.stdout.strip(), (url, proc.stdout,
                                                                  proc.stderr)
