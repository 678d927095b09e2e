"""Reading HTTP bodies with a hard size bound.

``StreamReader.read(n)`` returns *up to* n bytes — whatever has arrived — so it
cannot be used to read a whole body. This reads until EOF or until the limit is
passed, never buffering more than ``limit + one chunk``.
"""

from __future__ import annotations

from aiohttp import StreamReader


async def read_bounded(stream: StreamReader, limit: int) -> tuple[bytes, bool]:
    """(body, complete): complete is False when the body is longer than ``limit``."""
    chunks: list[bytes] = []
    total = 0
    async for chunk in stream.iter_chunked(64 * 1024):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            return b"".join(chunks)[: limit + 1], False
    return b"".join(chunks), True
