"""Where the Redis broker keeps things: one queue's keys, named once.

All keys of a queue share the hash tag ``{prefix:queue}``, so every script
touches one cluster slot; ``redis.lua``'s header documents what each holds.
"""

from __future__ import annotations

from typing import Any

from .redis_connection import RedisConnection

#: A queue's sets, in the order the scripts take them as KEYS.
SETS = ("ready", "scheduled", "retrying", "running", "succeeded", "cancelled", "failed", "expiry")
#: Scripts that use only the first few of the per-queue sets are sent only those.
KEYS_USED = {"enqueue": 3, "claim_fire": 3, "claim": 4, "extend": 4}


class QueueKeys:
    """One queue's key names: the hash-tagged base and its sets, in the scripts' KEYS order."""

    __slots__ = ("base", "keys", "name", "redis")

    def __init__(self, prefix: str, name: str, redis: RedisConnection) -> None:
        self.name = name
        self.base = f"{{{prefix}:{name}}}:"
        self.keys = tuple(self.base + s for s in SETS)
        self.redis = redis

    def script(self, name: str, *args: Any) -> tuple[Any, ...]:
        """The command that runs script ``name`` on this queue."""
        keys = self.keys[: KEYS_USED.get(name, len(SETS))]
        return self.redis.script(name, keys, self.base, *args)

    def job(self, job_id: str) -> str:
        return f"{self.base}job:{job_id}"
