"""senergy's table: sacct's widths, names, units and safety with users' text."""

from __future__ import annotations

import pytest

from jobenergy.cli.report import helpformat, parse_fields, render

JOB = {
    "job_id": "1234", "user": "alice", "name": "evil\x1b[2J\nname", "nodes": ["n1", "n2", "n3",
                                                                             "gpu07"],
    "energy_uj": 12_345_678_901, "start": "2026-11-20T10:00:00+00:00", "end": None,
    "exit_code": "0:0", "final": True, "by_component": {"cpu": 12_345_678_901},
}


def test_widths_are_right_justified_with_percent_n_and_left_with_percent_minus_n() -> None:
    out = render([JOB], parse_fields("JobID%8,User%-8"), header=False)
    assert out == "    1234 alice   "


@pytest.mark.parametrize("spec", ["JobID%x", "JobID%-", "JobID%0", "JobID%-y"])
def test_bad_widths_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="invalid width"):
        parse_fields(spec)


def test_control_characters_never_reach_the_terminal() -> None:
    for delimiter in (None, "|"):
        out = render([JOB], parse_fields("JobName%40"), delimiter=delimiter, header=False)
        assert "\x1b" not in out and "\n" not in out, out
        assert "\\x1b[2J\\nname" in out


def test_nodelist_compressed_as_slurm_prints_it_and_nnodes() -> None:
    out = render([JOB], parse_fields("NodeList%30,NNodes"), delimiter="|", header=False)
    assert out == "gpu07,n[1-3]|4"


def test_consumed_energy_in_joules_as_sacct() -> None:
    out = render([JOB], parse_fields("ConsumedEnergy,ConsumedEnergyRaw"), delimiter="|",
                 header=False)
    assert out == "12.35K|12345"


def test_times_and_exit_code() -> None:
    out = render([JOB], parse_fields("End,ExitCode"), delimiter="|", header=False)
    assert out == "Unknown|0:0"
    start = render([JOB], parse_fields("Start"), delimiter="|", header=False)
    assert len(start) == 19 and start[10] == "T"


def test_delimiter_and_helpformat() -> None:
    out = render([JOB], parse_fields("JobID,User"), delimiter=";", trailing=True)
    assert out.splitlines() == ["JobID;User;", "1234;alice;"]
    names = helpformat().split()
    assert "ConsumedEnergy" in names and "NodeList" in names and "Start" in names


def test_consumed_energy_units_as_sacct_converts_them() -> None:
    from jobenergy.cli.report import format_joules

    uj = 1_000_000
    assert [format_joules(j * uj) for j in (0, 999, 1000, 2000, 12_345, 1_500_000)] == [
        "0", "999", "1K", "2K", "12.35K", "1.50M"]
    assert format_joules(12_345 * uj, "M") == "0.01M"
    assert format_joules(12_345 * uj, "k") == "12.35K"
    assert format_joules(2_000_000 * uj, "K") == "2000K"
    assert format_joules(12_345 * uj, convert=False) == "12345"
    out = render([JOB], parse_fields("ConsumedEnergy", units="M"), delimiter="|", header=False)
    assert out == "0.01M"
    out = render([JOB], parse_fields("ConsumedEnergy", convert=False), delimiter="|",
                 header=False)
    assert out == "12345"


def test_sacct_ids_alloc_tres_and_who_cancelled() -> None:
    job = {**JOB, "job_id": "41", "sacct_job_id": "40_0", "state": "CANCELLED",
           "kill_requid": 1000, "alloc_tres": "billing=4,cpu=4,gres/gpu=1,mem=4G,node=1"}
    out = render([job], parse_fields("JobID,JobIDRaw,State,AllocTRES%50"), delimiter="|",
                 header=False)
    assert out == "40_0|41|CANCELLED by 1000|billing=4,cpu=4,gres/gpu=1,mem=4G,node=1"
    assert render([JOB], parse_fields("JobID,AllocTRES,State"), delimiter="|",
                  header=False) == "1234||"


def test_step_rows_print_only_what_is_known_per_step() -> None:
    step = {"step": "batch", "job_id": "41.batch", "sacct_job_id": "40_0.batch",
            "cluster": "c1", "account": "phys", "name": "batch", "energy_uj": 7_200_000_000,
            "by_component": {"cpu": 7_200_000_000}, "final": False,
            "quality": {"unmeasured": False}}
    fields = parse_fields("JobID,JobIDRaw,JobName,User,Account,State,Start,End,ExitCode,"
                          "NodeList,NNodes,AllocTRES,CPUkWh,EnergyUJ,ConsumedEnergyRaw,CO2eKg")
    out = render([step], fields, delimiter="|", header=False)
    assert out == "40_0.batch|41.batch|batch||phys||||||||0.002000|7200000000|7200|"
    unknown = {**step, "energy_uj": None, "by_component": {}}
    assert render([unknown], parse_fields("JobID,TotalkWh,EnergyUJ,CPUkWh"), header=False
                  ).split() == ["40_0.batch"]  # unknown energy: empty, no "*"


def test_other_kwh_is_the_jobs_bmc_other_share_and_0_without_a_bmc() -> None:
    reconciled = {**JOB, "by_component": {"cpu": 1_000, "other": 7_200_000_000_000}}
    fields = parse_fields("JobID,OtherkWh")
    assert render([reconciled], fields, delimiter="|", header=False) == "1234|2.000000"
    assert render([JOB], fields, delimiter="|", header=False) == "1234|0.000000"
    unmeasured = {**JOB, "quality": {"unmeasured": True}}
    assert render([unmeasured], fields, delimiter="|", header=False) == "1234|unmeasured"
    assert "OtherkWh" in helpformat().split()
