"""How a worker writes outcomes: in batches, and never lost to a broker error.

Outcomes gather while a write is in flight and go in the next one, so a busy
worker settles many jobs a round trip. A write that fails keeps its outcomes
for the next try; settling an outcome twice is harmless, since a broker ignores
outcomes for jobs the worker no longer holds.
"""

from __future__ import annotations

import asyncio
import logging

from .brokers import Broker, Outcome

logger = logging.getLogger("afterwork.worker")


class OutcomeWriter:
    """The outcomes a worker has reported and not yet written, and the loop writing them."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        #: Writes that reached the broker: a burst worker compares it before and after a
        #: flush to tell whether a retry or a put-back may have made a job ready.
        self.batches = 0
        self._pending: list[Outcome] = []
        self._lock = asyncio.Lock()
        self._added = asyncio.Event()

    def add(self, outcome: Outcome) -> None:
        self._pending.append(outcome)
        self._added.set()

    async def run(self, broker: Broker) -> None:
        """Write outcomes as they come, until cancelled."""
        while True:
            await self._added.wait()
            self._added.clear()
            await self.flush(broker)

    async def flush(self, broker: Broker) -> None:
        """Write all pending outcomes in one call; on broker errors keep them and retry.

        Callers wait for a write already in flight, so when this returns every
        outcome reported before the call is in the broker.
        """
        async with self._lock:
            await self._flush_locked(broker)

    async def _flush_locked(self, broker: Broker) -> None:
        delay = 0.1
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await broker.settle(batch)
                self.batches += 1
            except asyncio.CancelledError:
                self._pending[:0] = batch  # kept for the final flush
                raise
            except Exception as exc:
                self._pending[:0] = batch
                logger.warning(
                    "could not settle %d outcomes (%s: %s); retrying in %.1fs",
                    len(batch),
                    type(exc).__name__,
                    exc,
                    delay,
                    extra={"worker": self.worker, "error_type": type(exc).__name__},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
