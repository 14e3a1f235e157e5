"""Reading job event streams without starving the API's Redis pool.

A stream follower (``GET /v1/jobs/{id}/events``, a streamed chat or audio response) waits for
the next entries in a blocking ``XREAD``, which holds a pooled connection for up to a second,
and asks again at once. Unbounded, a hundred open streams held all of the pool's 64
connections and every other request waited 10 s for one, then got a 503. At most
``blocking`` reads block at once; a follower beyond them polls every ``POLL_SEC`` instead (a
connection held only for each read, its entries at most that much later).
"""

from __future__ import annotations

import asyncio
import time

POLL_SEC = 0.05

Entry = tuple[str, str, bytes]  # (stream entry id, event type, data JSON)


class StreamReads:
    def __init__(self, client, *, blocking: int):
        self.redis = client
        self._blocking = asyncio.Semaphore(blocking)

    async def read(self, key: str, after: str, block_ms: int | None, count: int) -> list[Entry]:
        """Entries of stream ``key`` after id ``after``, waiting up to ``block_ms`` for the
        first one (None: not at all); [] when none came."""
        if block_ms is None:
            return await self._xread(key, after, None, count)
        deadline = time.monotonic() + block_ms / 1000
        while True:
            remaining = deadline - time.monotonic()
            if not self._blocking.locked():  # (acquired at once then: no other task runs)
                async with self._blocking:
                    return await self._xread(key, after, max(1, int(remaining * 1000)), count)
            entries = await self._xread(key, after, None, count)
            if entries or remaining <= 0:
                return entries
            await asyncio.sleep(min(POLL_SEC, remaining))

    async def _xread(self, key: str, after: str, block_ms: int | None, count: int) -> list[Entry]:
        reply = await self.redis.xread({key: after}, count=count, block=block_ms)
        if not reply:
            return []
        return [
            (entry_id.decode(), fields[b"event"].decode(), fields[b"data"])
            for entry_id, fields in reply[0][1]
        ]
