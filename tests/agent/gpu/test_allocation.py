"""GpuAllocation: the three allocation sources and GPU process → job."""

from __future__ import annotations

from jobenergy.agent.gpu.allocation import (
    GpuAllocation,
    gpus_from_environ,
    parse_devices_list,
    parse_gpu_ids,
)


def test_parsers():
    assert parse_gpu_ids("0,1\n") == {0, 1}
    assert parse_gpu_ids("0-2,6, x") == {0, 1, 2, 6}
    assert parse_devices_list("a *:* rwm\n") == frozenset()
    assert parse_devices_list("c 195:255 rwm\nc 195:3 rwm\nc 195:254 rw\nc 1:3 rwm\n") == {3}
    env = b"CUDA_VISIBLE_DEVICES=0\0SLURM_JOB_ID=5\0SLURM_JOB_GPUS=4,5\0"
    assert gpus_from_environ(env) == {4, 5}
    assert gpus_from_environ(b"CUDA_VISIBLE_DEVICES=0,1\0") is None


def test_map_dir_wins_and_lists_jobs_without_cgroup(node):
    node.job_v2("10", [100], environ={"SLURM_JOB_GPUS": "1"})
    node.map_gpus("10", "0")
    node.map_gpus("11", "2,3")  # cgroup already gone, epilog not yet run
    (node.gpu_map / ".11.tmp").write_text("7")
    alloc = GpuAllocation(node.procfs, node.cgroup, node.gpu_map)
    assert alloc.resolve(["10"]) == {0: {"10"}, 2: {"11"}, 3: {"11"}}


def test_environ_answer_is_cached_while_job_lives(node):
    node.job_v2("20", [200], environ={"SLURM_JOB_GPUS": "5"})
    alloc = GpuAllocation(node.procfs, node.cgroup, None)
    assert alloc.resolve(["20"]) == {5: {"20"}}
    (node.procfs / "200" / "environ").unlink()
    assert alloc.resolve(["20"]) == {5: {"20"}}
    assert alloc.resolve([]) == {}


def test_node_specific_v1_layout(node):
    devices = node.cgroup / "devices" / "slurm_n7" / "uid_0" / "job_30"
    devices.mkdir(parents=True)
    (devices / "devices.list").write_text("c 195:6 rwm\n")
    assert GpuAllocation(node.procfs, node.cgroup, None, node="n7").resolve(["30"]) == {6: {"30"}}


def test_jobs_of_pids(node):
    node.job_v2("40", [400])
    node.job_v1("41", [410], uid=1, gpu_minors=[0])
    node.outside_process(420)
    alloc = GpuAllocation(node.procfs, node.cgroup, None)
    assert alloc.jobs_of_pids([400, 410, 420, 999]) == {400: "40", 410: "41", 420: None, 999: None}


def test_gpu_processes_map_to_jobs_only_under_slurms_root(node):
    # Issue 9: a GPU process in a folder merely named job_N is not job N's (job N would pay
    # for it), a forged line is no job's, and non-UTF-8 cgroup names never break sampling.
    def proc(pid: int, text: bytes) -> None:
        (node.procfs / str(pid)).mkdir(parents=True, exist_ok=True)
        (node.procfs / str(pid) / "cgroup").write_bytes(text)

    proc(500, b"0::/user.slice/user-1000.slice/user@1000.service/slurmstepd.scope/job_99\n")
    proc(501, b"0::/system.slice/slurmstepd.scope/job_5/step_0/user/task_0/job_99\n")
    proc(502, b"0::/system.slice/slurmstepd.scope/job_5/step_0/user/\xff\xfe\n")
    proc(503, b"0::/user.slice/a\n0::/system.slice/slurmstepd.scope/job_99/step_0/user/t\n")
    (node.procfs / "self").mkdir(exist_ok=True)
    (node.procfs / "self" / "cgroup").write_text("0::/system.slice/agent.service\n")
    alloc = GpuAllocation(node.procfs, node.cgroup, None)
    assert alloc.jobs_of_pids([500, 501, 502, 503]) == {500: None, 501: "5", 502: "5", 503: None}
