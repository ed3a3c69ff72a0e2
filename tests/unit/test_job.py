from __future__ import annotations

import dataclasses
import json
import re

import pytest

from chervil import DecodeError, NotSerializable, PayloadTooLarge
from chervil.job import (
    ErrorInfo,
    Job,
    JobStatus,
    decode_payload,
    encode_payload,
    job_of,
    new_job_id,
)


def test_round_trip() -> None:
    data = encode_payload((1, "x", [1.5, None]), {"k": {"a": True}})
    assert decode_payload(data) == ([1, "x", [1.5, None]], {"k": {"a": True}})


def test_oversized_payload_is_refused_with_advice() -> None:
    with pytest.raises(PayloadTooLarge, match="pass its id instead") as info:
        encode_payload(("x" * 70_000,), {}, task="app.report")
    assert "app.report" in str(info.value) and "65536" in str(info.value)


@pytest.mark.parametrize("value", [object(), {1, 2}, float("nan"), b"bytes"])
def test_non_json_arguments_are_refused(value: object) -> None:
    with pytest.raises(NotSerializable, match="JSON"):
        encode_payload((value,), {})


@pytest.mark.parametrize("raw, fault", [
    (b"\xff\xfe\x00", "UTF-8"),
    (b'{"a": [1, 2', "not valid JSON"),
    (b'[1, 2]', "shape"),
    (b'{"a": {}, "k": {}}', "shape"),
    (b"[" * 30_000 + b"]" * 30_000, "JSON"),
    (b'{"a": [' + b"9" * 5000 + b'], "k": {}}', "JSON"),
    (b'{"a": [], "k": {}}' + b" " * 70_000, "exceeds"),
])
def test_bad_payloads_raise_decode_error(raw: bytes, fault: str) -> None:
    with pytest.raises(DecodeError, match=fault):
        decode_payload(raw)


def test_job_ids_are_uuid7_and_increase() -> None:
    ids = [new_job_id() for _ in range(5000)]
    assert ids == sorted(ids) and len(set(ids)) == 5000
    assert all(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                            i) for i in ids[:50])


def test_payload_is_compact_json() -> None:
    assert json.loads(encode_payload((1,), {"a": "é"})) == {"a": [1], "k": {"a": "é"}}


def test_job_of_builds_the_job_its_fields_give() -> None:
    job = Job(id="j1", task="t", queue="q", payload=b"{}", status=JobStatus.RUNNING,
              priority=2, attempts=1, max_attempts=3, last_error=ErrorInfo("E", "m"),
              created_at=1.0, run_at=2.0, started_at=3.0, worker="w", lease_until=4.0,
              lease_token="tok", trace={"a": "b"}, limit_key="k", rate_key="r")
    values = [getattr(job, f.name) for f in dataclasses.fields(Job)]
    built = job_of(values)
    assert built == job and type(built) is Job
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.attempts = 2  # type: ignore[misc]
    with pytest.raises(ValueError, match="24 fields, got 23"):
        job_of(values[:-1])
