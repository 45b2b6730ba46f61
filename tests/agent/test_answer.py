"""agent/answer.py: what a collector's answer says it stores; anything unreadable says nothing."""

from __future__ import annotations

import pytest

from jobenergy.agent.answer import accepted_fields


def test_the_collector_s_own_answer_names_step_uj():
    from jobenergy.collector.routes import IngestResponse
    from jobenergy.core.schema import OPTIONAL_FIELDS

    body = IngestResponse(duplicate=False, records=3).model_dump_json().encode()
    assert accepted_fields(body) == frozenset(OPTIONAL_FIELDS) >= {"step_uj"}


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[]", b"null", b'{"accepts": "step_uj"}', b'{"accepts": {"step_uj": 1}}',
    b'{"duplicate": false, "records": 1}', b"\xff\xfe", b'{"accepts": [1, null, ["step_uj"]]}',
])
def test_an_answer_that_does_not_name_it_names_nothing(body):
    assert accepted_fields(body) == frozenset()


def test_names_beyond_the_first_64_are_ignored():
    names = ", ".join(f'"f{i}"' for i in range(100))
    assert len(accepted_fields(f'{{"accepts": [{names}, "step_uj"]}}'.encode())) == 64
