"""The IPMI DCMI sensor against a real BMC: Debian's ipmi_sim on loopback (sim/bmc/ipmi.py)."""

from __future__ import annotations

import pytest

from jobenergy.agent.bmc_poller import BmcPoller
from jobenergy.agent.metrics import AgentMetrics
from jobenergy.agent.sensors.bmc import BmcError
from jobenergy.agent.sensors.bmc_ipmi import IpmiDcmiBmc, parse_dcmi_power
from jobenergy.sim.bmc import ipmi as ipmi_emu


@pytest.fixture
def bmc(ipmi_bmc):
    """The module's ipmi_sim BMC, reading 250 W."""
    ipmi_bmc.set_power_w(250)
    return ipmi_bmc


def _sensor(emu, interface="lanplus", password=ipmi_emu.PASSWORD, timeout_s=3.0):
    return IpmiDcmiBmc(interface=interface, host="127.0.0.1", port=emu.port,
                       user=ipmi_emu.USER, password=password, cipher_suite=3,
                       timeout_s=timeout_s)


@pytest.mark.parametrize("interface", ["lanplus", "lan"])
def test_reads_the_power_the_scenario_sets(bmc, interface):
    sensor = _sensor(bmc, interface)
    bmc.set_power_w(250)
    assert sensor.read().power_w == 250.0
    bmc.set_power_w(1377)
    reading = sensor.read()
    assert reading.power_w == 1377.0
    assert reading.energy_uj is None  # DCMI has no energy counter: integrated, estimated


def test_the_password_is_never_on_the_command_line(bmc):
    sensor = _sensor(bmc)
    assert ipmi_emu.PASSWORD not in " ".join(sensor.argv)
    assert "-E" in sensor.argv


def test_a_wrong_password_is_a_failed_read(bmc):
    with pytest.raises(BmcError) as caught:
        _sensor(bmc, password="wrong").read()
    assert "wrong" not in str(caught.value)


def test_a_bmc_that_does_not_answer_is_a_bounded_failure(bmc):
    sensor = IpmiDcmiBmc(interface="lanplus", host="127.0.0.1", port=ipmi_emu.free_udp_port(),
                         user="u", password="p", cipher_suite=3, timeout_s=1.0)
    with pytest.raises(BmcError):
        sensor.read()


def test_the_poller_integrates_the_readings_and_counts_failures(bmc):
    metrics = AgentMetrics("c", "n")
    poller = BmcPoller(_sensor(bmc), 5.0, metrics)
    bmc.set_power_w(400)
    first = poller.poll_once()
    second = poller.poll_once()
    assert first is not None and second is not None
    assert second.seq == first.seq + 1 and second.estimated
    assert second.total_uj > 0
    bmc.set_power_w(0)
    poller.sensor = _sensor(bmc, password="wrong")
    assert poller.poll_once() is None
    assert poller.latest() == second  # the last good answer stays
    assert metrics.sensor_errors.labels("bmc")._value.get() == 1


@pytest.mark.parametrize("out", [
    b"", b"garbage\n", b"Instantaneous power reading: -5 Watts\n",
    b"Instantaneous power reading: 99999999 Watts\n",
    b"Instantaneous power reading: nan Watts\n",
    b"Instantaneous power reading: 12 Watts\nPower reading state is: deactivated\n",
])
def test_garbled_output_is_refused(out):
    with pytest.raises(BmcError):
        parse_dcmi_power(out)
