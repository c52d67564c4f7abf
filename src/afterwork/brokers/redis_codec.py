"""How a :class:`JobRecord` is stored as a Redis hash, and read back whatever it holds.

One field per record field, absent when the value is None, so scripts can read
and change single fields. Floats are written as ``repr`` (the shortest text
that reads back as the same float), so times round-trip exactly.

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


def encode_job(job: JobRecord) -> list[Any]:
    """The record's text and number fields as hash field, value pairs (flat), without
    those that are None; the binary ones (payload, result) are sent apart."""
    fields: list[Any] = [
        "id", job.id, "task", job.task, "queue", job.queue, "priority", job.priority,
        "status", str(job.status), "run_at", repr(job.run_at),
        "enqueued_at", repr(job.enqueued_at), "max_attempts", job.max_attempts,
        "result_ttl", repr(job.result_ttl), "attempts", job.attempts,
    ]  # fmt: skip
    optional = (
        ("timeout", job.timeout),
        ("started_at", job.started_at),
        ("finished_at", job.finished_at),
        ("lease_until", job.lease_until),
        ("expires_at", job.expires_at),
    )
    for name, value in optional:
        if value is not None:
            fields += [name, repr(value)]
    for name, label in (("unique_key", job.unique_key), ("worker", job.worker)):
        if label is not None:
            fields += [name, label]
    if job.cancel_requested:
        fields += ["cancel_requested", "1"]
    if job.error is not None:
        fields += ["error", _error_encoder.encode(job.error).decode()]
    return fields


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


# field -> (parser, the value a hash without a readable field gets, whether it must be there)
_FIELDS: dict[str, tuple[Callable[[bytes], Any], Any, bool]] = {
    "task": (_text, "?", True),
    "priority": (int, 0, True),
    "payload": (_bytes, b"", True),
    "status": (_status, JobStatus.QUEUED, True),
    "run_at": (_float, 0.0, True),
    "enqueued_at": (_float, 0.0, True),
    "max_attempts": (int, 1, True),
    "result_ttl": (_float, DEFAULT_RESULT_TTL, True),
    "timeout": (_float, None, False),
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
_KNOWN = {name.encode() for name in (*_FIELDS, "id", "queue")}


_STATUSES = {str(status).encode(): status for status in JobStatus}


def _optional(raw: bytes | None, parse: Callable[[bytes], Any]) -> Any:
    return None if raw is None else parse(raw)


def decode_job(fields: dict[bytes, bytes], job_id: str, queue: str) -> tuple[JobRecord, str | None]:
    """The record a hash holds, and None; or the best record it allows and what is wrong."""
    try:  # the common case, spelled out: several times faster than the loop below
        if not fields.keys() <= _KNOWN:
            raise ValueError("unknown fields")
        get = fields.get
        record = JobRecord(
            id=job_id,
            task=fields[b"task"].decode(),
            queue=queue,
            priority=int(fields[b"priority"]),
            payload=fields[b"payload"],
            status=_STATUSES[fields[b"status"]],
            run_at=_float(fields[b"run_at"]),
            enqueued_at=_float(fields[b"enqueued_at"]),
            max_attempts=int(fields[b"max_attempts"]),
            result_ttl=_float(fields[b"result_ttl"]),
            timeout=_optional(get(b"timeout"), _float),
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
    record = JobRecord(id=job_id, queue=queue, **values)
    return record, "; ".join(problems) or None
