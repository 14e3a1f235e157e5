"""A blob store in Redis: uploads, batch files and batch outputs, outside broker messages.

A blob is a Redis list of chunks (``BLOB_CHUNK_BYTES`` each, the last one shorter) under
``inferq:blob:<id>``, with the same expiry as what owns it. Writers append chunk by chunk
and readers fetch chunk by chunk, so neither side ever holds a whole file in memory, and
every machine that reaches Redis (API, any worker) reads the same bytes.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

from inferq.protocol import PREFIX

BLOB_CHUNK_BYTES = 1 << 20


def blob_key(blob_id: str) -> str:
    return f"{PREFIX}:blob:{blob_id}"


def new_blob_id(prefix: str = "blob") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class BlobTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"larger than {limit} bytes")
        self.limit = limit


class _Rechunker:
    """Turns pieces of any size into chunks of exactly ``BLOB_CHUNK_BYTES`` (but the last)."""

    def __init__(self, limit: int | None):
        self.buffer = bytearray()
        self.size = 0
        self.limit = limit

    def feed(self, piece: bytes) -> list[bytes]:
        self.size += len(piece)
        if self.limit is not None and self.size > self.limit:
            raise BlobTooLarge(self.limit)
        self.buffer += piece
        ready = []
        while len(self.buffer) >= BLOB_CHUNK_BYTES:
            ready.append(bytes(self.buffer[:BLOB_CHUNK_BYTES]))
            del self.buffer[:BLOB_CHUNK_BYTES]
        return ready

    def rest(self) -> list[bytes]:
        return [bytes(self.buffer)] if self.buffer else []


class AsyncBlobs:
    """Blob access for the API (redis.asyncio)."""

    def __init__(self, client):
        self.redis = client

    async def write(
        self, blob_id: str, pieces: AsyncIterator[bytes], *, ttl: int, limit: int | None = None
    ) -> int:
        """Store ``pieces``; returns the size. Over ``limit``: deletes what was written, raises."""
        key = blob_key(blob_id)
        rechunker = _Rechunker(limit)
        try:
            async for piece in pieces:
                for chunk in rechunker.feed(piece):
                    await self.redis.rpush(key, chunk)
            for chunk in rechunker.rest():
                await self.redis.rpush(key, chunk)
            await self.redis.expire(key, ttl)
        except BaseException:
            await self.redis.delete(key)
            raise
        return rechunker.size

    async def read(self, blob_id: str) -> AsyncIterator[bytes]:
        key = blob_key(blob_id)
        index = 0
        while True:
            chunk = await self.redis.lindex(key, index)
            if chunk is None:
                return
            yield chunk
            index += 1

    async def delete(self, blob_id: str) -> None:
        await self.redis.delete(blob_key(blob_id))


class Blobs:
    """Blob access for workers (synchronous redis)."""

    def __init__(self, client):
        self.redis = client

    def writer(self, blob_id: str, *, ttl: int) -> BlobWriter:
        return BlobWriter(self.redis, blob_id, ttl)

    def read(self, blob_id: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes ``[start, end)`` of a blob, chunk by chunk."""
        key = blob_key(blob_id)
        index, offset = divmod(start, BLOB_CHUNK_BYTES)
        position = start - offset
        while end is None or position < end:
            chunk = self.redis.lindex(key, index)
            if chunk is None:
                return
            piece = chunk[offset : None if end is None else end - position]
            if piece:
                yield piece
            position += len(chunk)
            index, offset = index + 1, 0

    def lines(self, blob_id: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The lines of ``[start, end)`` (without their newline), read chunk by chunk."""
        tail = b""
        for piece in self.read(blob_id, start, end):
            parts = (tail + piece).split(b"\n")
            tail = parts.pop()
            yield from parts
        if tail:
            yield tail

    def exists(self, blob_id: str) -> bool:
        return bool(self.redis.exists(blob_key(blob_id)))

    def delete(self, blob_id: str) -> None:
        self.redis.delete(blob_key(blob_id))


class BlobWriter:
    """Appends to a blob; ``close`` flushes the last chunk and sets the expiry."""

    def __init__(self, client, blob_id: str, ttl: int):
        self.redis = client
        self.blob_id = blob_id
        self.ttl = ttl
        self._rechunker = _Rechunker(None)

    def write(self, data: bytes) -> None:
        for chunk in self._rechunker.feed(data):
            self.redis.rpush(blob_key(self.blob_id), chunk)

    def close(self) -> int:
        for chunk in self._rechunker.rest():
            self.redis.rpush(blob_key(self.blob_id), chunk)
        self.redis.expire(blob_key(self.blob_id), self.ttl)
        return self._rechunker.size
