"""Budget actions in the agent: the collector's answer parsed strictly
(agent/budget_actions.py), then taken once per job on this node (agent/energy_limits.py).

``scancel`` is a real executable script that appends its argv to a file (as in
test_energy_limits.py); the last test runs a real collector over HTTP and a real agent.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

from jobenergy.agent.budget_actions import MAX_ACTIONS, BudgetAction, parse_budget_actions
from jobenergy.agent.energy_limits import EnergyLimits, parse_record
from jobenergy.agent.jobmap import JobMapEntry
from jobenergy.agent.records import SampledInterval, SourceSample

T0 = datetime(2026, 1, 1, tzinfo=UTC)
GOOD = {"job_id": "42", "action": "warn", "budget_id": 7, "used_inner": 95, "limit_inner": 100,
        "unit": "kwh"}


def _answer(*actions: dict) -> bytes:
    return json.dumps({"duplicate": False, "records": 1, "budget_actions": list(actions)}
                      ).encode()


def _interval(jobs_uj: dict[str, int]) -> SampledInterval:
    sources = [SourceSample("cpu", "package-0", sum(jobs_uj.values()), dict(jobs_uj), 0)]
    return SampledInterval(start=T0, end=T0, start_us=0, end_us=0, sources=sources)


def _tick(limits: EnergyLimits, job_map: dict[str, JobMapEntry], jobs_uj: dict[str, int]
          ) -> None:
    limits.observe(job_map, _interval(jobs_uj))
    assert limits.wait_idle(10)


def _count(counter, *labels: str) -> float:
    return counter.labels(*labels)._value.get()


def test_a_valid_answer_is_parsed_and_every_bad_entry_refused():
    bad = [
        {**GOOD, "job_id": "1;reboot"}, {**GOOD, "job_id": 42}, {**GOOD, "job_id": "0"},
        {**GOOD, "action": "kill"}, {**GOOD, "unit": "J"}, {**GOOD, "budget_id": True},
        {**GOOD, "budget_id": 0}, {**GOOD, "used_inner": -1}, {**GOOD, "limit_inner": 0},
        {**GOOD, "used_inner": 2**63}, {**GOOD, "budget_id": 7.0}, "42", None,
    ]
    actions, problems = parse_budget_actions(_answer(GOOD, *bad, {**GOOD, "job_id": "43",
                                                                  "extra": "ignored"}))
    assert actions == [BudgetAction("42", "warn", 7, 95, 100, "kwh"),
                       BudgetAction("43", "warn", 7, 95, 100, "kwh")]
    assert len(problems) == len(bad)
    # Older collectors (no field), a proxy's page, a field of the wrong type.
    assert parse_budget_actions(b'{"duplicate": false, "records": 3}') == ([], [])
    assert parse_budget_actions(b"<html>ok</html>") == ([], [])
    assert parse_budget_actions(b'{"budget_actions": {"42": "cancel"}}') == \
        ([], ["budget_actions is not a list"])
    actions, problems = parse_budget_actions(_answer(*[GOOD] * (MAX_ACTIONS + 1)))
    assert len(actions) == MAX_ACTIONS and "only the first" in problems[0]


def test_a_budget_warns_once_then_cancels_once_and_records_why(tmp_path, scancel):
    limits = EnergyLimits(tmp_path / "limits", str(scancel))
    job_map = {"42": JobMapEntry(), "43": JobMapEntry()}  # no --energy-limit
    _tick(limits, job_map, {"42": 5_000_000, "43": 1})
    limits.budget_answer(_answer(GOOD))
    assert scancel.calls() == []  # taken by the sampling thread, at the next interval
    _tick(limits, job_map, {"42": 1_000_000})
    assert scancel.calls() == [["--signal=USR1", "--full", "42"]]
    limits.budget_answer(_answer(GOOD))  # every answer repeats it: taken once
    _tick(limits, job_map, {"42": 1_000_000})
    assert len(scancel.calls()) == 1
    # Two answers between two intervals: the strongest action is kept.
    limits.budget_answer(_answer({**GOOD, "action": "cancel", "budget_id": 8}))
    limits.budget_answer(_answer(GOOD))
    _tick(limits, job_map, {"42": 1_000_000})
    assert scancel.calls()[1:] == [["--signal=TERM", "--full", "42"], ["42"]]
    text = (tmp_path / "limits" / "42").read_text()
    record = parse_record(text)
    assert record is not None and record.limit_uj is None and record.budget_id == 8
    assert (record.warned_uj, record.cancelled_uj) == (6_000_000, 8_000_000)
    # The epilog reads the actions in order; budget_id comes before them.
    assert text.index("budget_id") < text.index("warned_uj") < text.index("cancelled_uj")
    assert not (tmp_path / "limits" / "43").exists()  # never acted on: no file
    assert _count(limits.budget_actions, "warn") == 1
    assert _count(limits.budget_actions, "cancel") == 1
    assert _count(limits.actions, "cancel") == 1  # counted with the jobs' own limits too
    # A restarted agent resumes the record: nothing again.
    again = EnergyLimits(tmp_path / "limits", str(scancel))
    again.budget_answer(_answer({**GOOD, "action": "cancel"}))
    _tick(again, job_map, {"42": 1})
    assert len(scancel.calls()) == 3


def test_exceeded_under_a_warn_budget_signals_once_and_lets_the_job_run(tmp_path, scancel):
    limits = EnergyLimits(tmp_path / "limits", str(scancel), warn_signal="USR2")
    job_map = {"42": JobMapEntry()}
    limits.budget_answer(_answer({**GOOD, "action": "exceeded"}))
    _tick(limits, job_map, {"42": 3})
    limits.budget_answer(_answer(GOOD, {**GOOD, "action": "exceeded"}))
    _tick(limits, job_map, {"42": 3})
    assert scancel.calls() == [["--signal=USR2", "--full", "42"]]
    record = parse_record((tmp_path / "limits" / "42").read_text())
    assert record is not None and (record.warned_uj, record.exceeded_uj) == (3, 3)
    assert record.cancelled_uj is None


def test_only_jobs_running_on_this_node_are_acted_on(tmp_path, scancel):
    limits = EnergyLimits(tmp_path / "limits", str(scancel))
    job_map = {"42": JobMapEntry(), "44": JobMapEntry(end_ns=1)}  # 44: the epilog ran
    limits.budget_answer(_answer(*({**GOOD, "job_id": j, "action": "cancel"}
                                   for j in ("41", "44"))))
    limits.budget_answer(_answer({**GOOD, "job_id": "1;reboot", "action": "cancel"}))
    _tick(limits, job_map, {"42": 1})
    assert scancel.calls() == []
    assert _count(limits.budget_actions_ignored, "not_running") == 2
    assert _count(limits.budget_actions_ignored, "invalid") == 1
    assert not any((tmp_path / "limits").glob("4*"))


def test_a_jobs_own_limit_after_a_budget_warning_takes_the_record_back(tmp_path, scancel):
    limits = EnergyLimits(tmp_path / "limits", str(scancel))
    job_map = {"42": JobMapEntry(energy_limit_uj=100, nodes=1)}
    limits.budget_answer(_answer(GOOD))
    _tick(limits, job_map, {"42": 10})
    assert parse_record((tmp_path / "limits" / "42").read_text()).budget_id == 7
    _tick(limits, job_map, {"42": 95})  # 105 % of its own limit: cancelled for that
    assert scancel.calls() == [["--signal=USR1", "--full", "42"],
                               ["--signal=TERM", "--full", "42"], ["42"]]
    record = parse_record((tmp_path / "limits" / "42").read_text())
    assert record.budget_id is None and record.cancelled_uj == 105


def test_a_budget_cancels_a_job_through_a_real_collector(tmp_path, scancel, db_url, make_batch):
    """Real server over HTTP (budget, events, usage), real agent (job map, sampling, push)."""
    import httpx
    import uvicorn

    from jobenergy.agent.daemon import Agent
    from jobenergy.agent.settings import AgentSettings
    from jobenergy.api.app import create_app
    from jobenergy.collector.budget_writer import refresh_once
    from jobenergy.collector.settings import ServerSettings
    from jobenergy.sim.node import SimNode

    app = create_app(ServerSettings(db_url=db_url, auth="none", migrate=False))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    node = SimNode(tmp_path / "n", "n1", ncpus=4, packages=1)
    agent = None
    try:
        start = datetime.now(UTC) - timedelta(hours=3)
        for job_id, user in (("5", "alice"), ("6", "bob")):
            httpx.post(f"{url}/api/v1/jobs/events", json={
                "cluster": "t", "job_id": job_id, "event": "start",
                "time": start.isoformat(), "user": user, "account": "physics"}, timeout=60
                       ).raise_for_status()
        # Alice's job has used 1 kWh on another node already: her 1 kWh budget is spent.
        batch = make_batch(cluster="t", node="n0", jobs={"5": 1}, unattributed_weight=0,
                           sources=(("cpu", "package-0"),), power_w=1000.0,
                           interval_s=3600.0, n_intervals=1, start=start)
        httpx.post(f"{url}/api/v1/batches", content=batch.model_dump_json(),
                   timeout=60).raise_for_status()
        # A range from the usage's hour: a month budget (or a day's) would miss that usage
        # in the first 3 hours of a UTC month, where now - 3 h lies in the month before.
        first_hour = start.replace(minute=0, second=0, microsecond=0)
        httpx.put(f"{url}/api/v1/budgets", json={
            "cluster": "t", "scope": "user", "user": "alice", "limit": "1kWh",
            "period": "range", "start": first_hour.isoformat(),
            "end": (first_hour + timedelta(days=1)).isoformat(),
            "running_policy": "cancel"}, timeout=60).raise_for_status()
        refresh_once(app.state.engine, app.state.running_budgets, None, None)

        settings = AgentSettings(
            collector_url=url, auth="none", cluster="t", node="n1", interval_s=1,
            push_interval_s=3600, spool_dir=tmp_path / "spool",
            sysfs_root=node.sysfs_root, procfs_root=node.procfs_root,
            cgroup_root=node.cgroup_root, nvml="off", gpu_map_dir=tmp_path / "jobmap",
            limit_dir=tmp_path / "limits", scancel_path=str(scancel),
            cpu_static_power_w=0, dram_static_power_w=0)
        agent = Agent(settings)
        (tmp_path / "jobmap").mkdir()
        for job_id in ("5", "6"):
            (tmp_path / "jobmap" / job_id).write_text("\nstart=1.0\n")  # no --energy-limit
        agent.tick()  # baseline
        node.start_job("5", 1000, [0, 1])
        node.start_job("6", 1001, [2, 3])
        for _ in range(2):
            node.add_cpu_time("5", 1_000_000_000, 1_000_000_000)
            node.add_cpu_time("6", 1_000_000_000, 1_000_000_000)
            node.add_energy("package-0", 6_000_000)
            agent.tick()
        agent.seal()
        assert agent.pusher.push_once()  # the answer names job 5 (alice's), not bob's 6
        assert scancel.calls() == []
        agent.tick()  # the sampling thread takes it
        assert agent.energy_limits.wait_idle(10)
        assert scancel.calls() == [["--signal=TERM", "--full", "5"], ["5"]]
        record = parse_record((tmp_path / "limits" / "5").read_text())
        assert record is not None and record.budget_id == 1 and record.cancelled_uj == 6_000_000
        assert not (tmp_path / "limits" / "6").exists()
    finally:
        if agent is not None:
            agent.pusher.close()
        server.should_exit = True
        thread.join(timeout=10)


def test_a_budget_warning_puts_the_node_on_close_watch_until_it_acts(tmp_path, scancel):
    """From a budget's warning to its cancel (or ``exceeded``), while the job runs here, the
    agent watches closely: every sampled interval stored and pushed (the daemon)."""
    limits = EnergyLimits(tmp_path / "limits", str(scancel))
    running = {"42": JobMapEntry()}
    _tick(limits, running, {"42": 1})
    assert not limits.watching
    limits.budget_answer(_answer(GOOD))
    _tick(limits, running, {"42": 1})
    assert limits.watching
    _tick(limits, {"42": JobMapEntry(end_ns=1)}, {"42": 1})  # the epilog ran
    assert not limits.watching
    _tick(limits, running, {"42": 1})
    assert limits.watching
    limits.budget_answer(_answer({**GOOD, "action": "cancel"}))
    _tick(limits, running, {"42": 1})
    assert not limits.watching  # cancelled: nothing more to decide
    # Exceeded under a warn budget: the job runs on, unwatched. A job's own limit: the agent
    # decides it alone, every interval, so no watch.
    other = EnergyLimits(tmp_path / "other", str(scancel))
    other.budget_answer(_answer(GOOD))
    _tick(other, running, {"42": 1})
    assert other.watching
    other.budget_answer(_answer({**GOOD, "action": "exceeded"}))
    _tick(other, running, {"42": 1})
    assert not other.watching
    own = EnergyLimits(tmp_path / "own", str(scancel))
    _tick(own, {"42": JobMapEntry(energy_limit_uj=10, nodes=1)}, {"42": 9})
    assert not own.watching


def test_close_watch_lasts_only_while_the_collector_repeats_the_warning(
        tmp_path, scancel, monkeypatch):
    """A lease: an answer without the job's warning (budget raised, deleted, reset) ends the
    watch, and so does silence (an outage); a restarted agent watches once named again."""
    from jobenergy.agent import energy_limits

    limits = EnergyLimits(tmp_path / "limits", str(scancel))
    running = {"42": JobMapEntry()}
    limits.budget_answer(_answer(GOOD))
    _tick(limits, running, {"42": 1})
    assert limits.watching
    limits.budget_answer(_answer({**GOOD, "job_id": "43"}))  # 42's budget cooled
    _tick(limits, running, {"42": 1})
    assert not limits.watching
    limits.budget_answer(b"<html>proxy error</html>")
    limits.budget_answer(_answer(GOOD))
    _tick(limits, running, {"42": 1})
    assert limits.watching  # warned already: no second signal, but watched again
    assert scancel.calls() == [["--signal=USR1", "--full", "42"]]
    restarted = EnergyLimits(tmp_path / "limits", str(scancel))
    _tick(restarted, running, {"42": 1})
    assert not restarted.watching  # the record resumes; the lease waits for an answer
    restarted.budget_answer(_answer(GOOD))
    _tick(restarted, running, {"42": 1})
    assert restarted.watching
    monkeypatch.setattr(energy_limits, "WATCH_LEASE_S", 0.0)
    restarted.budget_answer(_answer(GOOD))  # then silence: the lease runs out
    _tick(restarted, running, {"42": 1})
    assert not restarted.watching


def test_on_close_watch_the_agent_seals_every_sampled_interval(tmp_path, scancel):
    """A real agent with 10 s stored intervals and hourly pushes: nothing is sealed while
    it merges; once a budget warned one of its jobs, each tick seals its own interval."""
    from jobenergy.agent.daemon import Agent
    from jobenergy.agent.settings import AgentSettings
    from jobenergy.sim.node import SimNode

    node = SimNode(tmp_path / "n", "n1", ncpus=4, packages=1)
    settings = AgentSettings(
        collector_url="http://127.0.0.1:9", auth="none", cluster="t", node="n1",
        interval_s=1, store_interval_s=10, push_interval_s=3600,
        spool_dir=tmp_path / "spool", sysfs_root=node.sysfs_root,
        procfs_root=node.procfs_root, cgroup_root=node.cgroup_root, nvml="off",
        gpu_map_dir=tmp_path / "jobmap", limit_dir=tmp_path / "limits",
        scancel_path=str(scancel), cpu_static_power_w=0, dram_static_power_w=0)
    agent = Agent(settings)
    try:
        (tmp_path / "jobmap").mkdir()
        (tmp_path / "jobmap" / "5").write_text("\nstart=1.0\n")
        node.start_job("5", 1000, [0, 1])

        def tick() -> None:
            node.add_cpu_time("5", 1_000_000_000, 1_000_000_000)
            node.add_energy("package-0", 6_000_000)
            agent.tick()

        agent.tick()  # baseline
        agent.seal(flush=False)  # the first seal is due at once (nothing stored yet)
        for _ in range(3):
            tick()
        assert agent.spool.pending_count() == 0  # merging into one 10 s interval
        agent.energy_limits.budget_answer(_answer({**GOOD, "job_id": "5"}))
        tick()  # takes the warning: watch from the next interval
        assert agent.energy_limits.watching
        sealed = agent.spool.pending_count()
        for k in range(1, 4):
            tick()
            assert agent.spool.pending_count() == sealed + k
    finally:
        agent.pusher.close()
