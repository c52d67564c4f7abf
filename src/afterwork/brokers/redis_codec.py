"""How a :class:`JobRecord` is stored as a Redis hash, and read back whatever it holds.

The fields the scripts read or change (status, run time, priority, attempts,
lease, result TTL, unique key...) are fields of their own, absent when None
(or, for attempts, zero).
Those no script looks at and that never change after enqueue (task, enqueued
at, attempts allowed, timeout) travel as one MessagePack field, ``spec``: one
argument to pack and one field to write instead of four, and one msgspec call
to read them back. Id and queue are in the key. Floats are written as ``repr``
(the shortest text that reads back as the same float), so times round-trip
exactly.

Reading never raises: a hash whose fields do not decode (written by hand, or
by a broken client) comes back as the best record that can be made of it and a
description of what is wrong, so the broker can dead-letter the job with that
reason instead of failing every claim on its queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from ..defaults import DEFAULT_RESULT_TTL
from ..job import ErrorInfo, JobRecord, JobStatus

_error_encoder = msgspec.json.Encoder()
_error_decoder = msgspec.json.Decoder(ErrorInfo)
_spec_encoder = msgspec.msgpack.Encoder()
#: task, enqueued_at, max_attempts, timeout
Spec = tuple[str, float, int, float | None]
_spec_decoder: msgspec.msgpack.Decoder[Spec] = msgspec.msgpack.Decoder(Spec)


def encode_job(job: JobRecord) -> list[Any]:
    """The hash's values, as the scripts' store() takes them: those of the fields every
    job has (status, run_at, priority, result_ttl, spec, payload), then how many
    arguments follow and, flat, the field, value pairs of the others it has."""
    spec = _spec_encoder.encode((job.task, job.enqueued_at, job.max_attempts, job.timeout))
    extra: list[Any] = []
    # One test each, not a loop over pairs: a new job has none of these, and this runs
    # for every job of every batch.
    if job.attempts:
        extra += ["attempts", job.attempts]
    if job.unique_key is not None:
        extra += ["unique_key", job.unique_key]
    if job.started_at is not None:
        extra += ["started_at", repr(job.started_at)]
    if job.finished_at is not None:
        extra += ["finished_at", repr(job.finished_at)]
    if job.worker is not None:
        extra += ["worker", job.worker]
    if job.lease_until is not None:
        extra += ["lease_until", repr(job.lease_until)]
    if job.expires_at is not None:
        extra += ["expires_at", repr(job.expires_at)]
    if job.cancel_requested:
        extra += ["cancel_requested", "1"]
    if job.result is not None:
        extra += ["result", job.result]
    if job.error is not None:
        extra += ["error", _error_encoder.encode(job.error).decode()]
    fixed = job.status, repr(job.run_at), job.priority, repr(job.result_ttl), spec
    return [*fixed, job.payload, len(extra), *extra]


def as_dict(reply: Any) -> dict[bytes, bytes]:
    """An ``HGETALL`` reply as a dict: Redis sends a flat list (redis-py makes a dict)."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[::2], reply[1::2], strict=True))


def _text(raw: bytes) -> str:
    return raw.decode()


def _float(raw: bytes) -> float:
    value = float(raw)
    if value != value:
        raise ValueError("not a number")
    return value


def _bool(raw: bytes) -> bool:
    if raw not in (b"0", b"1"):
        raise ValueError("not 0 or 1")
    return raw == b"1"


def _status(raw: bytes) -> JobStatus:
    return JobStatus(raw.decode())


def _bytes(raw: bytes) -> bytes:
    return raw


def _spec(raw: bytes) -> Spec:
    spec: Spec = _spec_decoder.decode(raw)
    return spec


# field -> (parser, the value a hash without a readable field gets, whether it must be there)
_FIELDS: dict[str, tuple[Callable[[bytes], Any], Any, bool]] = {
    "spec": (_spec, ("?", 0.0, 1, None), True),
    "priority": (int, 0, True),
    "payload": (_bytes, b"", True),
    "status": (_status, JobStatus.QUEUED, True),
    "run_at": (_float, 0.0, True),
    "result_ttl": (_float, DEFAULT_RESULT_TTL, True),
    "attempts": (int, 0, False),
    "unique_key": (_text, None, False),
    "started_at": (_float, None, False),
    "finished_at": (_float, None, False),
    "worker": (_text, None, False),
    "lease_until": (_float, None, False),
    "cancel_requested": (_bool, False, False),
    "result": (_bytes, None, False),
    "error": (_error_decoder.decode, None, False),
    "expires_at": (_float, None, False),
}
_KNOWN = {name.encode() for name in _FIELDS}


_STATUSES = {str(status).encode(): status for status in JobStatus}


def _optional(raw: bytes | None, parse: Callable[[bytes], Any]) -> Any:
    return None if raw is None else parse(raw)


def decode_job(fields: dict[bytes, bytes], job_id: str, queue: str) -> tuple[JobRecord, str | None]:
    """The record a hash holds, and None; or the best record it allows and what is wrong."""
    try:  # the common case, spelled out: several times faster than the loop below
        if not fields.keys() <= _KNOWN:
            raise ValueError("unknown fields")
        get = fields.get
        task, enqueued_at, max_attempts, timeout = _spec_decoder.decode(fields[b"spec"])
        record = JobRecord(
            id=job_id,
            task=task,
            queue=queue,
            priority=int(fields[b"priority"]),
            payload=fields[b"payload"],
            status=_STATUSES[fields[b"status"]],
            run_at=_float(fields[b"run_at"]),
            enqueued_at=enqueued_at,
            max_attempts=max_attempts,
            result_ttl=_float(fields[b"result_ttl"]),
            timeout=timeout,
            attempts=int(get(b"attempts", b"0")),
            unique_key=_optional(get(b"unique_key"), _text),
            started_at=_optional(get(b"started_at"), _float),
            finished_at=_optional(get(b"finished_at"), _float),
            worker=_optional(get(b"worker"), _text),
            lease_until=_optional(get(b"lease_until"), _float),
            cancel_requested=_bool(get(b"cancel_requested", b"0")),
            result=get(b"result"),
            error=_optional(get(b"error"), _error_decoder.decode),
            expires_at=_optional(get(b"expires_at"), _float),
        )
        return record, None
    except (KeyError, ValueError, UnicodeDecodeError, msgspec.DecodeError):
        return _decode_leniently(fields, job_id, queue)


def _decode_leniently(
    fields: dict[bytes, bytes], job_id: str, queue: str
) -> tuple[JobRecord, str | None]:
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name, (parse, default, required) in _FIELDS.items():
        raw = fields.get(name.encode())
        if raw is None:
            values[name] = default
            if required:
                problems.append(f"{name} is missing")
            continue
        try:
            values[name] = parse(raw)
        except (ValueError, UnicodeDecodeError, msgspec.DecodeError):
            values[name] = default
            problems.append(f"{name} is {raw[:40]!r}")
    unknown = sorted(k.decode(errors="replace") for k in fields if k not in _KNOWN)
    if unknown:
        problems.append(f"unknown fields {', '.join(unknown)}")
    task, enqueued_at, max_attempts, timeout = values.pop("spec")
    record = JobRecord(
        id=job_id,
        queue=queue,
        task=task,
        enqueued_at=enqueued_at,
        max_attempts=max_attempts,
        timeout=timeout,
        **values,
    )
    return record, "; ".join(problems) or None
