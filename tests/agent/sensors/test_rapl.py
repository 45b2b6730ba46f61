"""RaplSensor against the prometheus/procfs powercap fixture and small trees built per test."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobenergy.agent.readings import Reading
from jobenergy.agent.sensors.rapl import RaplSensor, parse_uj
from jobenergy.core.errors import SensorError, SensorUnavailable

FIXTURE_SYS = Path(__file__).parents[2] / "fixtures" / "rapl" / "prometheus-procfs" / "sys"
RANGE_UJ = 262143328850

MakeZone = Callable[..., Path]


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    """An empty sysfs root with class/powercap and the bare intel-rapl control folder."""
    control = tmp_path / "class" / "powercap" / "intel-rapl"
    control.mkdir(parents=True)
    (control / "enabled").write_text("1\n")
    return tmp_path


def _zone(sysfs_root: Path, folder: str, name: str, energy_uj: int | str, max_range_uj=RANGE_UJ):
    path = sysfs_root / "class" / "powercap" / folder
    path.mkdir(parents=True)
    (path / "name").write_text(f"{name}\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
    return path


@pytest.fixture
def make_zone(sysfs: Path) -> MakeZone:
    """Factory: make_zone("intel-rapl:0", "package-0", 123) creates a zone folder."""

    def make(folder: str, name: str, energy_uj: int | str = 0, max_range_uj=RANGE_UJ) -> Path:
        return _zone(sysfs, folder, name, energy_uj, max_range_uj)

    return make


def by_source(readings: list[Reading]) -> dict[str, Reading]:
    return {r.source: r for r in readings}


# -- golden fixture ------------------------------------------------------------------------


def test_fixture_packages_read_from_name_file_and_core_left_out() -> None:
    readings = RaplSensor(FIXTURE_SYS).read()

    assert readings == [
        Reading("cpu", "package-0", 240422366267, RANGE_UJ),
        # folder intel-rapl:a (non-decimal index) holds name package-10
        Reading("cpu", "package-10", 240422366267, RANGE_UJ),
    ]


def test_fixture_zone_paths_point_at_the_right_folders() -> None:
    zones = {z.source: z.folder for z in RaplSensor(FIXTURE_SYS).zones}
    assert zones == {"package-0": "intel-rapl:0", "package-10": "intel-rapl:a"}


def test_sensor_name() -> None:
    assert RaplSensor.name == "rapl"


# -- zone kinds ----------------------------------------------------------------------------


def test_core_and_uncore_are_never_returned(sysfs: Path, make_zone: MakeZone) -> None:
    make_zone("intel-rapl:0", "package-0", 1000)
    make_zone("intel-rapl:0:0", "core", 600)
    make_zone("intel-rapl:0:1", "uncore", 300)

    assert RaplSensor(sysfs).read() == [Reading("cpu", "package-0", 1000, RANGE_UJ)]


def test_dram_subzone_is_its_own_source(sysfs: Path, make_zone: MakeZone) -> None:
    make_zone("intel-rapl:0", "package-0", 1000)
    make_zone("intel-rapl:0:0", "core", 600)
    make_zone("intel-rapl:0:1", "dram", 77, max_range_uj=65712999613)
    make_zone("intel-rapl:1", "package-1", 2000)
    make_zone("intel-rapl:1:0", "dram", 88, max_range_uj=65712999613)

    assert RaplSensor(sysfs).read() == [
        Reading("cpu", "package-0", 1000, RANGE_UJ),
        Reading("cpu", "package-1", 2000, RANGE_UJ),
        Reading("dram", "package-0/dram", 77, 65712999613),
        Reading("dram", "package-1/dram", 88, 65712999613),
    ]


def test_psys_is_recorded_as_its_own_component(sysfs: Path, make_zone: MakeZone) -> None:
    make_zone("intel-rapl:0", "package-0", 1000)
    make_zone("intel-rapl:1", "psys", 5000)

    readings = by_source(RaplSensor(sysfs).read())

    assert readings["psys"] == Reading("psys", "psys", 5000, RANGE_UJ)
    assert readings["package-0"].energy_uj == 1000  # psys is not added to the package


def test_package_number_comes_from_name_not_folder_index(sysfs: Path, make_zone: MakeZone) -> None:
    make_zone("intel-rapl:0", "package-1", 111)
    make_zone("intel-rapl:1", "package-0", 222)
    make_zone("intel-rapl:1:0", "dram", 3)

    readings = by_source(RaplSensor(sysfs).read())

    assert readings["package-0"].energy_uj == 222
    assert readings["package-1"].energy_uj == 111
    assert readings["package-0/dram"].energy_uj == 3


def test_amd_style_zone_names(sysfs: Path, make_zone: MakeZone) -> None:
    make_zone("amd-rapl:0", "package-0", 10)
    make_zone("amd-rapl:1", "package-1", 20)
    make_zone("amd-rapl:0:0", "core", 5)

    assert [(r.source, r.energy_uj) for r in RaplSensor(sysfs).read()] == [
        ("package-0", 10),
        ("package-1", 20),
    ]


def test_packages_sort_numerically(sysfs: Path, make_zone: MakeZone) -> None:
    for i in (10, 2, 1):
        make_zone(f"intel-rapl:{i}", f"package-{i}", i)
    assert [r.source for r in RaplSensor(sysfs).read()] == ["package-1", "package-2", "package-10"]


def test_mmio_duplicate_of_msr_package_is_dropped(sysfs: Path, make_zone: MakeZone) -> None:
    make_zone("intel-rapl-mmio:0", "package-0", 999)
    make_zone("intel-rapl:0", "package-0", 1000)

    assert RaplSensor(sysfs).read() == [Reading("cpu", "package-0", 1000, RANGE_UJ)]


def test_mmio_only_package_is_kept(sysfs: Path, make_zone: MakeZone) -> None:
    make_zone("intel-rapl-mmio:0", "package-0", 999)

    assert RaplSensor(sysfs).read() == [Reading("cpu", "package-0", 999, RANGE_UJ)]


def test_nested_subzone_folders_are_found(sysfs: Path, make_zone: MakeZone) -> None:
    parent = make_zone("intel-rapl:0", "package-0", 1000)
    dram = parent / "intel-rapl:0:0"  # only nested, not linked in class/powercap
    dram.mkdir()
    (dram / "name").write_text("dram\n")
    (dram / "energy_uj").write_text("42\n")
    (dram / "max_energy_range_uj").write_text("100\n")

    assert by_source(RaplSensor(sysfs).read())["package-0/dram"] == Reading(
        "dram", "package-0/dram", 42, 100
    )


def test_read_returns_current_values_each_call(sysfs: Path, make_zone: MakeZone) -> None:
    zone = make_zone("intel-rapl:0", "package-0", 1000)
    sensor = RaplSensor(sysfs)
    (zone / "energy_uj").write_text("1500\n")

    assert sensor.read()[0].energy_uj == 1500


# -- absent hardware -----------------------------------------------------------------------


def test_no_powercap_folder_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(SensorUnavailable, match="no powercap folder"):
        RaplSensor(tmp_path)


def test_powercap_without_zones_is_unavailable(sysfs: Path, make_zone: MakeZone) -> None:
    make_zone("dtpm:0", "package-0", 1)  # another powercap control type

    with pytest.raises(SensorUnavailable, match="no package, dram or psys zone"):
        RaplSensor(sysfs)


# -- failures ------------------------------------------------------------------------------


def test_energy_uj_that_is_a_directory_raises_naming_the_file(
    sysfs: Path, make_zone: MakeZone
) -> None:
    zone = make_zone("intel-rapl:0", "package-0", 1000)
    sensor = RaplSensor(sysfs)
    (zone / "energy_uj").unlink()
    (zone / "energy_uj").mkdir()  # unreadable even for root: read() gives EISDIR

    with pytest.raises(SensorError, match=r"intel-rapl:0/energy_uj"):
        sensor.read()


def test_dangling_energy_uj_symlink_raises(sysfs: Path, make_zone: MakeZone) -> None:
    zone = make_zone("intel-rapl:0", "package-0", 1000)
    (zone / "energy_uj").unlink()
    (zone / "energy_uj").symlink_to(zone / "missing")

    with pytest.raises(SensorError, match=r"cannot read .*intel-rapl:0/energy_uj: no such file"):
        RaplSensor(sysfs).read()


@pytest.fixture
def world_readable_sysfs() -> Iterator[Path]:
    """A sysfs root that an unprivileged user can traverse (pytest's tmp_path is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="jobenergy-rapl-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root)


def _read_unprivileged(sensor: RaplSensor) -> str:
    """Return "ok ..." or "error <message>" from sensor.read() run as an unprivileged user."""
    if os.geteuid() != 0:
        try:
            return f"ok {sensor.read()}"
        except SensorError as err:
            return f"error {err}"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop root as a non-root agent would run, then read
        try:
            os.close(r)
            os.setgid(65534)
            os.setuid(65534)
            try:
                out = f"ok {sensor.read()}"
            except SensorError as err:
                out = f"error {err}"
            os.write(w, out.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


def test_root_only_energy_uj_raises_permission_error_not_zero(
    world_readable_sysfs: Path,
) -> None:
    _zone(world_readable_sysfs, "intel-rapl:0", "package-0", 1000)
    zone1 = _zone(world_readable_sysfs, "intel-rapl:1", "package-1", 2000)
    for path in world_readable_sysfs.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o444)
    sensor = RaplSensor(world_readable_sysfs)

    assert _read_unprivileged(sensor).startswith("ok ")  # the tree itself is readable
    (zone1 / "energy_uj").chmod(0o400)  # as on kernels with the CVE-2020-8694 fix

    out = _read_unprivileged(sensor)
    assert out.startswith("error RAPL: cannot read ")
    assert "intel-rapl:1/energy_uj: permission denied: run the agent as root" in out
    assert "CVE-2020-8694" in out


def test_garbage_energy_uj_raises(sysfs: Path, make_zone: MakeZone) -> None:
    make_zone("intel-rapl:0", "package-0", "12x4")

    with pytest.raises(SensorError, match=r"garbage in .*intel-rapl:0/energy_uj.*12x4"):
        RaplSensor(sysfs).read()


def test_garbage_max_energy_range_raises_at_discovery(sysfs: Path, make_zone: MakeZone) -> None:
    make_zone("intel-rapl:0", "package-0", 1, max_range_uj="")

    with pytest.raises(SensorError, match=r"intel-rapl:0/max_energy_range_uj"):
        RaplSensor(sysfs)


def test_zone_vanishing_after_discovery_raises_naming_it(sysfs: Path, make_zone: MakeZone) -> None:
    make_zone("intel-rapl:0", "package-0", 1000)
    zone1 = make_zone("intel-rapl:1", "package-1", 2000)
    sensor = RaplSensor(sysfs)
    shutil.rmtree(zone1)

    with pytest.raises(SensorError, match=r"intel-rapl:1 \(package-1\) vanished"):
        sensor.read()

    sensor.rescan()
    assert [r.source for r in sensor.read()] == ["package-0"]


@pytest.mark.parametrize(
    ("raw", "value"), [(b"0\n", 0), (b"240422366267\n", 240422366267), (b" 7 ", 7)]
)
def test_parse_uj(raw: bytes, value: int) -> None:
    assert parse_uj(raw) == value


@pytest.mark.parametrize("raw", [b"", b"\n", b"-1\n", b"1.5\n", b"abc", b"12 34\n"])
def test_parse_uj_rejects_garbage(raw: bytes) -> None:
    with pytest.raises(ValueError, match="non-negative decimal integer"):
        parse_uj(raw)
