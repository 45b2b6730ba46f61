"""The hardware emulator's wall power: its counters plus the overhead only a BMC sees."""

from __future__ import annotations

import json

from jobenergy.sim.bmc import ipmi as ipmi_emu
from jobenergy.sim.hwemu import HardwareEmulator, PowerModel
from jobenergy.sim.node import SimNode

MODEL = PowerModel(overhead_w=117.0)
IDLE_WALL_W = MODEL.cpu_idle_w + MODEL.dram_idle_w + 2 * MODEL.gpu_idle_w + MODEL.overhead_w


def test_wall_power_goes_to_the_bmc_and_its_energy_to_the_ledger(tmp_path):
    node = SimNode(tmp_path / "node", "n1", ncpus=4, packages=1)
    seen: list[tuple[str, float]] = []
    emu = HardwareEmulator(tmp_path / "hw", ["n1"], gpus=2, cgroup_root=node.cgroup_root,
                           procfs_root=node.procfs_root, model=MODEL,
                           wall_power=lambda name, watts: seen.append((name, watts)),
                           bmc_power_files=True)
    # The file the emulated BMC of this node reads (IpmiSimBmc(<root>/<node>/bmc)).
    power_file = ipmi_emu.IpmiSimBmc(tmp_path / "hw" / "n1" / "bmc").power_file
    emu.tick()  # the first tick has no time behind it: nothing drawn yet
    assert seen[-1] == ("n1", 0.0) and power_file.read_text() == "0\n"
    emu.tick()  # idle: every part at its idle power, and the overhead
    assert seen[-1] == ("n1", IDLE_WALL_W)
    assert power_file.read_text() == f"{round(IDLE_WALL_W)}\n"
    (tmp_path / "hw" / "hold").touch()
    emu.tick()  # held: the node stands still, at the wall too
    assert seen[-1] == ("n1", 0.0) and power_file.read_text() == "0\n"
    emu.write_ledger()
    ledger = json.loads((tmp_path / "hw" / "ledger.json").read_text())
    measured_uj = sum(ledger["nodes"]["n1"].values())
    wall_uj = ledger["wall_uj"]["n1"]
    # One unheld tick of dt s: wall = measured × (wall W / measured W), but for what each
    # counter carries to the next tick: under 1 µJ per RAPL zone, 1 mJ per GPU (NVML's unit),
    # which the ratio scales (measured short by c µJ: wall × ratio off by c × ratio).
    measured_w = IDLE_WALL_W - MODEL.overhead_w
    ratio = IDLE_WALL_W / measured_w
    assert measured_uj > 0
    assert abs(wall_uj - measured_uj * ratio) <= (2 * 1000 + 2 + 1) * ratio
