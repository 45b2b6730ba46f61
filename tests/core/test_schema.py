import pytest
from pydantic import ValidationError

from jobenergy.core.schema import Batch, JobEvent, SourceEnergy


def _source(**kw):
    base = dict(
        component="cpu", source="package-0", measured_uj=100, jobs_uj={"7": 60}, unattributed_uj=40
    )
    base.update(kw)
    return base


def _batch(**kw):
    base = dict(
        schema_version=1,
        cluster="c",
        node="n",
        boot_id="b",
        seq=0,
        intervals=[{"start": 1_700_000_000, "end": 1_700_000_001, "sources": [_source()]}],
    )
    base.update(kw)
    return base


def test_valid_batch_round_trips():
    b = Batch.model_validate(_batch())
    again = Batch.model_validate_json(b.model_dump_json())
    assert again == b
    assert again.intervals[0].sources[0].jobs_uj == {"7": 60}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema_version": 2}, "schema_version"),
        ({"extra": 1}, "extra"),
        ({"seq": -1}, "seq"),
        ({"intervals": [{"start": 10, "end": 5, "sources": []}]}, "not after start"),
        (
            {"intervals": [{"start": 0, "end": 1, "sources": [_source(measured_uj=101)]}]},
            "not conserved",
        ),
        (
            {
                "intervals": [
                    {
                        "start": 0,
                        "end": 1,
                        "sources": [_source(jobs_uj={"7": -1}, unattributed_uj=101)],
                    }
                ]
            },
            "greater than or equal",
        ),
        (
            {
                "intervals": [
                    {
                        "start": 0,
                        "end": 1,
                        "sources": [
                            _source(measured_uj=10**12, jobs_uj={}, unattributed_uj=10**12)
                        ],
                    }
                ]
            },
            "absurd",
        ),
        ({"intervals": [{"start": 0, "end": 1, "sources": [_source(component="psys")]}]}, "psys"),
        (
            {"intervals": [{"start": 0, "end": 1, "sources": [_source(jobs_uj={"../x": 60})]}]},
            "pattern",
        ),
    ],
)
def test_bad_batches_are_rejected_with_a_reason(change, message):
    with pytest.raises(ValidationError) as info:
        Batch.model_validate(_batch(**change))
    assert message in str(info.value)


def test_energy_must_be_integer_not_float():
    with pytest.raises(ValidationError):
        SourceEnergy.model_validate(_source(measured_uj=100.0))


def test_job_event_accepts_epoch_and_iso_as_utc():
    a = JobEvent.model_validate({"cluster": "c", "job_id": "1", "event": "start", "time": 0})
    b = JobEvent.model_validate(
        {"cluster": "c", "job_id": "1", "event": "start", "time": "1970-01-01T00:00:00"}
    )
    assert a.time == b.time
    assert a.time.utcoffset().total_seconds() == 0


def test_a_source_twice_or_overlapping_intervals_are_refused():
    with pytest.raises(ValidationError, match="source listed twice"):
        Batch.model_validate(
            _batch(intervals=[{"start": 0, "end": 1, "sources": [_source(), _source()]}])
        )
    with pytest.raises(ValidationError, match="overlap"):
        Batch.model_validate(
            _batch(
                intervals=[
                    {"start": 0, "end": 10, "sources": [_source()]},
                    {"start": 5, "end": 15, "sources": [_source()]},
                ]
            )
        )


def test_an_interval_without_sources_carries_the_jobs_seen():
    """An agent without RAPL or NVML still says which jobs ran on its node."""
    batch = Batch.model_validate(_batch(intervals=[{
        "start": 1_700_000_000, "end": 1_700_000_001, "sources": [],
        "jobs": [{"job_id": "7", "uid": 1000, "cpu_time_us": 5}],
    }]))
    assert batch.intervals[0].sources == [] and batch.intervals[0].jobs[0].job_id == "7"


@pytest.mark.parametrize(("time", "ok"), [
    (0, True), ("1970-01-01T00:00:00Z", True), ("2099-12-31T23:59:59Z", True),
    (-1, False), ("2100-01-01T00:00:00Z", False), ("9999-12-31T23:59:59-14:00", False),
    ("0001-01-01T00:00:00+14:00", False),
])
def test_times_are_between_1970_and_2100(time, ok):
    body = {"cluster": "c", "job_id": "1", "event": "start", "time": time}
    if ok:
        assert JobEvent.model_validate(body).time.utcoffset().total_seconds() == 0
    else:
        with pytest.raises(ValidationError, match="is not between 1970-01-01 and 2100-01-01"):
            JobEvent.model_validate(body)


def test_text_never_holds_nul():
    base = {"cluster": "c", "job_id": "1", "event": "start", "time": 0}
    for field, value in [("user", "a\x00"), ("tags", {"k\x00": "v"}), ("tags", {"k": "\x00"}),
                         ("gpus", ["\x00"]), ("cluster", "\x00")]:
        with pytest.raises(ValidationError, match="pattern"):
            JobEvent.model_validate({**base, field: value})
    with pytest.raises(ValidationError, match="pattern"):
        Batch.model_validate(_batch(boot_id="b\x00"))
