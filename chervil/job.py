"""The job record, its closed status and reason sets, and the JSON codec.

A :class:`Job` is a value: it never talks to a broker. The payload is kept as the raw
bytes the broker stored, and decoded only by :func:`decode_payload`, so a malformed
record can be inspected (size, hash prefix) without ever being trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from .errors import DecodeError, NotSerializable, PayloadTooLarge

DEFAULT_PAYLOAD_LIMIT = 64 * 1024


class JobStatus(StrEnum):
    SCHEDULED = "scheduled"  # waiting for run_at
    QUEUED = "queued"  # ready to run
    RUNNING = "running"  # leased by a worker
    SUCCEEDED = "succeeded"  # terminal
    DEAD = "dead"  # terminal, in the dead-letter queue, with a reason
    CANCELLED = "cancelled"  # terminal

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


STATUS_OF = {s.value: s for s in JobStatus}  # a dict lookup: JobStatus(v) cost 1 µs
TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.DEAD, JobStatus.CANCELLED})
WAITING = frozenset({JobStatus.SCHEDULED, JobStatus.QUEUED})


class DeadReason(StrEnum):
    """Why a job is in the dead-letter queue. A closed set: docs/core.md lists them."""

    RETRIES_EXHAUSTED = "retries_exhausted"  # failed on its last allowed attempt
    NOT_RETRYABLE = "not_retryable"  # an exception the retry policy excludes
    DISCARDED = "discarded"  # the task raised Discard(reason)
    WORKER_LOST = "worker_lost"  # its lease was lost too many times (crash, kill)
    TIME_LIMIT = "time_limit"  # ran past its hard timeout on its last attempt
    UNKNOWN_TASK = "unknown_task"  # no live worker has this task
    BAD_ARGUMENTS = "bad_arguments"  # arguments no longer bind to the signature
    DECODE_ERROR = "decode_error"  # the payload is not valid JSON of the right shape
    PAYLOAD_TOO_LARGE = "payload_too_large"  # the stored payload exceeds the limit
    BAD_SIGNATURE = "bad_signature"  # HMAC signature missing or wrong
    INCOMPATIBLE_VERSION = "incompatible_version"  # no worker runs this task version


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    type: str
    message: str
    traceback: str = ""

    def to_json(self) -> str:
        return json.dumps({"type": self.type, "message": self.message, "traceback": self.traceback})

    @classmethod
    def from_json(cls, text: str | bytes | None) -> ErrorInfo | None:
        if not text:
            return None
        data = json.loads(text)
        return cls(str(data.get("type", "")), str(data.get("message", "")),
                   str(data.get("traceback", "")))


@dataclass(frozen=True, slots=True)
class Job:
    """One enqueued call of a task: the single source of truth for every view of it."""

    id: str
    task: str
    queue: str
    payload: bytes
    status: JobStatus
    priority: int = 0
    attempts: int = 0
    max_attempts: int = 1
    lost_leases: int = 0
    last_error: ErrorInfo | None = None
    dead_reason: str | None = None
    created_at: float = 0.0
    run_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    lease_until: float | None = None
    lease_token: str | None = None
    unique_key: str | None = None
    task_version: str | None = None
    result: str | None = None  # JSON text, only when the task stores results
    trace: dict[str, str] = field(default_factory=dict)
    limit_key: str | None = None  # concurrency or lock key
    rate_key: str | None = None  # rate-limit bucket key

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts: hand it to payment APIs and the like."""
        return self.id

    def payload_digest(self) -> str:
        """Size and hash prefix: what logs show of a payload instead of its body."""
        return f"{len(self.payload)} bytes sha256:{hashlib.sha256(self.payload).hexdigest()[:12]}"


# One slot setter per field of Job, in declaration order (see job_of).
_JOB_SLOTS = tuple(Job.__dict__[f.name].__set__ for f in fields(Job))


def job_of(values: Sequence[Any]) -> Job:
    """A Job from all its fields, in declaration order: how the brokers build the jobs
    they reserve. The frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__`` (6.8 µs a job); the slots set directly cost 4.6 (a drain
    builds one Job per job). The values are taken as given, as ``Job(*values)`` would."""
    if len(values) != len(_JOB_SLOTS):
        raise ValueError(f"a Job has {len(_JOB_SLOTS)} fields, got {len(values)} values")
    job = object.__new__(Job)
    for put, value in zip(_JOB_SLOTS, values, strict=True):
        put(job, value)
    return job


def job_from_row(row: Sequence[Any], payload: bytes, trace: dict[str, Any]) -> Job:
    """A Job from an SQL broker's row, whose columns are Job's fields in order; the payload
    and the trace as that broker's driver decodes them."""
    return job_of((
        *row[:3], payload, STATUS_OF.get(row[4]) or JobStatus(row[4]), *row[5:9],
        ErrorInfo.from_json(row[9]) if row[9] else None, *row[10:21], trace, row[22], row[23],
    ))


_id_lock = threading.Lock()
_id_last = [0, 0]  # last millisecond, last sequence


def new_job_id(now: float | None = None) -> str:
    """A UUIDv7 string: time-sortable, unique without coordination.

    Within one process ids are strictly increasing: inside one millisecond the 12-bit
    ``rand_a`` field counts up (RFC 9562, method 1), so jobs list in enqueue order.
    """
    ms = int((time.time() if now is None else now) * 1000)
    with _id_lock:
        last_ms, seq = _id_last
        if ms <= last_ms:
            ms, seq = last_ms, seq + 1
            if seq > 0xFFF:
                ms, seq = ms + 1, 0
        else:
            seq = int.from_bytes(os.urandom(2), "big") & 0x3FF
        _id_last[0], _id_last[1] = ms, seq
    rand = int.from_bytes(os.urandom(8), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= seq << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_payload(args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any],
                   limit: int = DEFAULT_PAYLOAD_LIMIT, task: str = "") -> bytes:
    """Encode call arguments as JSON, refusing anything over ``limit`` bytes."""
    try:
        data = _encoder.encode({"a": list(args), "k": kwargs}).encode()
    except (TypeError, ValueError) as exc:
        raise NotSerializable(
            f"arguments of {task or 'the task'} are not JSON-serializable ({exc}); "
            "pass plain values (str, int, float, bool, None, lists, dicts) such as an id"
        ) from None
    if len(data) > limit:
        raise PayloadTooLarge(
            f"arguments of {task or 'the task'} encode to {len(data)} bytes, over the "
            f"{limit}-byte payload limit; store the data elsewhere and pass its id instead"
        )
    return data


def decode_payload(payload: bytes, limit: int = DEFAULT_PAYLOAD_LIMIT
                   ) -> tuple[list[Any], dict[str, Any]]:
    """Decode a stored payload into (args, kwargs); raise DecodeError naming the fault."""
    if len(payload) > limit:
        raise DecodeError(f"payload of {len(payload)} bytes exceeds the {limit}-byte limit")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("payload is not valid UTF-8") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"payload is not valid JSON: {exc}") from None
    if (not isinstance(data, dict) or not isinstance(data.get("a"), list)
            or not isinstance(data.get("k"), dict)):
        raise DecodeError('payload is JSON but not of the shape {"a": [...], "k": {...}}')
    return data["a"], data["k"]


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
