"""GpuAccounting end to end: real pynvml over the simulated libnvidia-ml.so.1 and a node tree.

Every expected figure is derived from the scenario's energy_mj steps (1 mJ = 1000 µJ).
"""

from __future__ import annotations

import time

import pytest

from jobenergy.core.errors import ConfigError
from jobenergy.sim.nvml.state import SimProcess


def _by_source(sources):
    return {s.source: s for s in sources}


def test_allocated_busy_gpu_goes_to_its_job(sim, node, h100s, make_accounting):
    gpu0, gpu1 = h100s[:2]
    gpu0.energy_mj, gpu1.energy_mj = 1_000, 2_000
    gpu0.processes = [SimProcess(pid=4100, sm_util=95)]
    sim.state.devices = [gpu0, gpu1]
    sim.write()
    node.job_v2("101", [4100])
    node.map_gpus("101", "0")
    acc = make_accounting()
    assert acc.available
    prev = acc.sample(["101"])
    gpu0.energy_mj += 3_500
    sim.write()
    cur = acc.sample(["101"])

    src = _by_source(acc.attribute(prev, cur))[f"gpu/{gpu0.uuid}"]
    assert src.measured_uj == 3_500 * 1_000
    assert src.jobs_uj == {"101": 3_500 * 1_000}
    assert src.unattributed_uj == 0
    assert src.device_name == "NVIDIA H100 80GB HBM3"
    assert not src.estimated and src.resets == 0
    assert cur.devices[gpu0.uuid].processes[0].sm_util == 95


def test_allocated_idle_gpu_is_the_jobs_cost(sim, node, h100s, make_accounting):
    gpu = h100s[3]  # minor 3
    gpu.index, gpu.energy_mj = 0, 10_000
    sim.state.devices = [gpu]
    sim.write()
    # No prolog map: the allocation comes from SLURM_JOB_GPUS in a job process's environ.
    node.job_v2("202", [5200], environ={"SLURM_JOB_GPUS": "3", "CUDA_VISIBLE_DEVICES": "0"})
    acc = make_accounting()
    prev = acc.sample(["202"])
    gpu.energy_mj += 700  # ~70 W idle for 10 s
    sim.write()
    cur = acc.sample(["202"])

    (src,) = acc.attribute(prev, cur)
    assert src.jobs_uj == {"202": 700_000}
    assert src.unattributed_uj == 0


def test_allocation_from_v1_device_cgroup(sim, node, h100s, make_accounting):
    sim.state.devices = h100s[:4]
    sim.write()
    node.job_v1("303", [6300], uid=20821, gpu_minors=[2])
    acc = make_accounting()
    prev = acc.sample(["303"])
    for d in sim.state.devices:
        d.energy_mj += 1_000 * (d.index + 1)
    sim.write()
    sources = _by_source(acc.attribute(prev, acc.sample(["303"])))

    assert sources[f"gpu/{h100s[2].uuid}"].jobs_uj == {"303": 3_000_000}
    for i in (0, 1, 3):
        src = sources[f"gpu/{h100s[i].uuid}"]
        assert src.jobs_uj == {} and src.unattributed_uj == 1_000_000 * (i + 1)


def test_unallocated_gpu_is_unattributed(sim, node, h100s, make_accounting):
    gpu = h100s[0]
    gpu.energy_mj = 50
    sim.state.devices = [gpu]
    sim.write()
    acc = make_accounting()
    prev = acc.sample([])
    gpu.energy_mj += 690
    sim.write()
    (src,) = acc.attribute(prev, acc.sample([]))
    assert src.jobs_uj == {}
    assert src.unattributed_uj == src.measured_uj == 690_000


def test_gpu_shared_by_two_jobs_splits_by_sm_utilisation(sim, node, h100s, make_accounting):
    gpu = h100s[0]
    gpu.processes = [SimProcess(pid=7001, sm_util=60), SimProcess(pid=7002, sm_util=20)]
    sim.state.devices = [gpu]
    sim.write()
    node.job_v2("401", [7001])
    node.job_v2("402", [7002])
    node.map_gpus("401", "0")  # 402 reaches GPU 0 through MPS/sharding, without an allocation
    acc = make_accounting()
    prev = acc.sample(["401", "402"])
    gpu.energy_mj += 8_000
    sim.write()
    (src,) = acc.attribute(prev, acc.sample(["401", "402"]))
    total = 8_000 * 1_000
    assert src.jobs_uj == {"401": total * 60 // 80, "402": total * 20 // 80}
    assert src.unattributed_uj == 0


def test_process_utilisation_missing_splits_evenly(sim, node, h100s, make_accounting):
    gpu = h100s[0]
    gpu.processes = [SimProcess(pid=7001, sm_util=90), SimProcess(pid=7002, sm_util=10)]
    sim.state.devices = [gpu]
    # The driver answers as one lacking the function (same pynvml exception as a missing
    # symbol; test_subprocess.py covers the missing symbol itself).
    sim.state.errors["nvmlDeviceGetProcessUtilization"] = "FUNCTION_NOT_FOUND"
    sim.write()
    node.job_v2("401", [7001])
    node.job_v2("402", [7002])
    acc = make_accounting()
    prev = acc.sample(["401", "402"])
    gpu.energy_mj += 1_000
    sim.write()
    (src,) = acc.attribute(prev, acc.sample(["401", "402"]))
    assert src.jobs_uj == {"401": 1_000_000 // 2, "402": 1_000_000 // 2}
    assert acc.errors_total.get("FunctionNotFound") == 1


def test_counter_reset_counts_energy_since_reset(sim, node, h100s, make_accounting):
    gpu = h100s[0]
    gpu.energy_mj = 9_000_000
    sim.state.devices = [gpu]
    sim.write()
    node.map_gpus("505", "0")
    acc = make_accounting()
    prev = acc.sample([])
    gpu.energy_mj = 250  # driver reloaded: the counter restarted from 0
    sim.write()
    (src,) = acc.attribute(prev, acc.sample([]))
    assert src.resets == 1
    assert src.measured_uj == 250_000
    assert src.jobs_uj == {"505": 250_000}
    assert acc.errors_total["counter_reset"] == 1


def test_energy_not_supported_integrates_power_marked_estimated(sim, node, t4, make_accounting):
    t4.energy_supported = False
    t4.power_mw = 70_000
    sim.state.devices = [t4]
    sim.write()
    node.map_gpus("606", "0")
    acc = make_accounting()
    # The sensor reads power at instants inside each sample() call that the test cannot see;
    # with constant power the integral is power × (time between the two reads), which lies
    # between the gap separating the calls and the span covering both. Exact bounds, no fudge.
    t0 = time.monotonic_ns()
    prev = acc.sample([])
    t1 = time.monotonic_ns()
    time.sleep(0.2)
    t2 = time.monotonic_ns()
    cur = acc.sample([])
    t3 = time.monotonic_ns()
    (src,) = acc.attribute(prev, cur)

    assert src.estimated
    assert t4.power_mw * (t2 - t1) // 1_000_000 <= src.measured_uj
    assert src.measured_uj <= t4.power_mw * (t3 - t0) // 1_000_000
    assert src.jobs_uj == {"606": src.measured_uj}
    assert acc.errors_total.get("NotSupported") == 1


def test_lost_gpu_is_dropped_and_counted_while_others_are_read(sim, node, h100s, make_accounting):
    gpu0, gpu1 = h100s[:2]
    sim.state.devices = [gpu0, gpu1]
    sim.write()
    acc = make_accounting()
    first = acc.sample([])
    gpu0.lost = True  # fell off the bus (Xid 79)
    gpu1.energy_mj += 400
    sim.write()
    second = acc.sample([])
    assert second.devices[gpu0.uuid].lost
    assert [s.source for s in acc.attribute(first, second)] == [f"gpu/{gpu1.uuid}"]
    gpu1.energy_mj += 600
    sim.write()
    third = acc.sample([])
    (src,) = acc.attribute(second, third)
    assert src.source == f"gpu/{gpu1.uuid}" and src.measured_uj == 600_000
    assert acc.errors_total["GpuIsLost"] == 1  # logged and counted once, not called again


def test_last_interval_goes_to_the_job_that_held_the_gpu(sim, node, h100s, make_accounting):
    gpu = h100s[0]
    gpu.processes = [SimProcess(pid=8800, sm_util=100)]
    sim.state.devices = [gpu]
    sim.write()
    node.job_v2("707", [8800])
    node.map_gpus("707", "0")
    acc = make_accounting()
    prev = acc.sample(["707"])
    # The job ends: processes gone, epilog removed the map, cgroup removed.
    gpu.processes = []
    gpu.energy_mj += 1_234
    sim.write()
    node.unmap("707")
    node.end_job_v2("707")
    cur = acc.sample([])
    (src,) = acc.attribute(prev, cur)
    assert src.jobs_uj == {"707": 1_234_000}
    # The interval after that has nobody: unattributed.
    gpu.energy_mj += 700
    sim.write()
    (after,) = acc.attribute(cur, acc.sample([]))
    assert after.jobs_uj == {} and after.unattributed_uj == 700_000


def test_mig_instances_split_by_slices(sim, node, h100s, make_accounting):
    gpu = h100s[0]
    gpu.mig_slices = {1: 3, 2: 4}  # 3g.40gb + 4g.40gb on an H100
    gpu.processes = [
        SimProcess(pid=9001, sm_util=10, gpu_instance=1),
        SimProcess(pid=9002, sm_util=90, gpu_instance=2),
    ]
    sim.state.devices = [gpu]
    sim.write()
    node.job_v2("901", [9001])
    node.job_v2("902", [9002])
    acc = make_accounting()
    prev = acc.sample(["901", "902"])
    gpu.energy_mj += 7_000
    sim.write()
    (src,) = acc.attribute(prev, acc.sample(["901", "902"]))
    assert src.jobs_uj == {"901": 7_000_000 * 3 // 7, "902": 7_000_000 * 4 // 7}


def test_outside_process_share_is_unattributed(sim, node, h100s, make_accounting):
    gpu = h100s[0]
    gpu.processes = [SimProcess(pid=1100, sm_util=75), SimProcess(pid=1200, sm_util=25)]
    sim.state.devices = [gpu]
    sim.write()
    node.job_v2("111", [1100])
    node.outside_process(1200)
    node.map_gpus("111", "0")
    acc = make_accounting()
    prev = acc.sample(["111"])
    gpu.energy_mj += 4_000
    sim.write()
    (src,) = acc.attribute(prev, acc.sample(["111"]))
    assert src.jobs_uj == {"111": 3_000_000}
    assert src.unattributed_uj == 1_000_000


def test_driver_not_loaded_leaves_accounting_unavailable(sim, make_accounting):
    sim.state.errors["nvmlInitWithFlags"] = "DRIVER_NOT_LOADED"
    sim.write()
    acc = make_accounting()
    assert not acc.available
    assert "Driver Not Loaded" in acc.unavailable_reason
    assert acc.attribute(acc.sample([]), acc.sample([])) == []


def test_mode_off_and_unknown_mode(sim, make_accounting):
    assert not make_accounting("off").available
    with pytest.raises(ConfigError):
        make_accounting("sometimes")


def test_energy_across_a_failed_read_is_delayed_not_lost(sim, node, h100s, make_accounting):
    gpu0 = h100s[0]
    sim.state.devices = [gpu0]
    sim.write()
    node.job_v2("7", [4200])
    node.map_gpus("7", "0")
    acc = make_accounting()
    first = acc.sample(["7"])
    acc.attribute(None, first)
    gpu0.energy_mj += 1_000
    sim.state.errors["nvmlDeviceGetTotalEnergyConsumption"] = "UNKNOWN"
    sim.write()
    failed = acc.sample(["7"])
    assert failed.devices[gpu0.uuid].energy_uj is None
    assert acc.attribute(first, failed) == []
    gpu0.energy_mj += 3_000
    sim.state.errors.clear()
    sim.write()
    (src,) = acc.attribute(failed, acc.sample(["7"]))
    assert src.measured_uj == 4_000 * 1_000 and src.jobs_uj == {"7": 4_000 * 1_000}


def test_gpu_is_paid_until_the_epilog_end_not_while_the_map_lingers(
    sim, node, h100s, make_accounting
):
    gpu = h100s[0]
    gpu.energy_mj = 0
    sim.state.devices = [gpu]
    sim.write()
    node.map_gpus("404", "0")
    acc = make_accounting(static_power_w=1e9)  # all of each delta is idle power
    prev = acc.sample([])
    end_s = time.time()
    (node.gpu_map / "404").write_text(f"0\nstart=1\nend={end_s:.6f}\n")  # the epilog's mark
    gpu.energy_mj += 1_000
    sim.write()
    cur = acc.sample([])
    assert not cur.states[gpu.uuid].held  # ended: the lingering file holds nothing
    (src,) = acc.attribute(prev, cur, {"404": 250}, 1_000)  # it lived 1/4 of the interval
    assert src.jobs_uj == {"404": 250_000} and src.unattributed_uj == 750_000
    gpu.energy_mj += 600
    sim.write()
    (later,) = acc.attribute(cur, acc.sample([]))
    assert later.jobs_uj == {} and later.unattributed_uj == 600_000


def test_a_gpu_handed_over_inside_an_interval_is_split_by_time(
    sim, node, h100s, make_accounting
):
    from jobenergy.core.split import split_uj

    gpu = h100s[0]
    gpu.energy_mj = 0
    sim.state.devices = [gpu]
    sim.write()
    node.map_gpus("501", "0")
    acc = make_accounting(static_power_w=1e9)
    prev = acc.sample(["501"])
    (node.gpu_map / "501").write_text(f"0\nend={time.time():.6f}\n")  # 501 ended ...
    node.map_gpus("502", "0")  # ... and 502 got the GPU
    gpu.energy_mj += 1_000
    sim.write()
    cur = acc.sample(["502"])
    (src,) = acc.attribute(prev, cur, {"501": 300, "502": 500}, 1_000)
    expected = split_uj(1_000_000, {"502": 1_000_000 * 500, "501": 1_000_000 * 300,
                                    "": 1_000_000 * 200})
    assert src.jobs_uj == {"501": expected["501"], "502": expected["502"]}
    assert src.unattributed_uj == expected[""]


def test_energy_above_idle_follows_who_drove_the_gpu_at_a_handover(
    sim, node, h100s, make_accounting
):
    from jobenergy.core.split import split_uj

    gpu = h100s[0]
    gpu.energy_mj = 0
    sim.state.devices = [gpu]
    sim.write()
    node.job_v2("601", [6100])
    node.map_gpus("601", "0")  # idle holder, ends
    acc = make_accounting(static_power_w=60.0)
    prev = acc.sample(["601"])
    (node.gpu_map / "601").write_text(f"0\nend={time.time():.6f}\n")
    node.job_v2("602", [6200])
    node.map_gpus("602", "0")
    gpu.processes = [SimProcess(pid=6200, sm_util=90)]  # the new holder drives it
    gpu.energy_mj += 100_000
    sim.write()
    cur = acc.sample(["602"])
    (src,) = acc.attribute(prev, cur, {"601": 400_000_000, "602": 300_000_000}, 1_000_000_000)
    static = min(src.measured_uj, 60 * (cur.time_ns - prev.time_ns) // 1000)  # 60 W, µJ
    idle = split_uj(static, {"601": src.measured_uj * 400_000_000,
                             "602": src.measured_uj * 300_000_000,
                             "": src.measured_uj * 300_000_000})
    assert src.jobs_uj == {"601": idle["601"], "602": idle["602"] + src.measured_uj - static}
