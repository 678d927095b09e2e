"""Out-of-order acks, in-order commits.

A consumer may finish message 7 before message 5 (retries, slow functions). The
committed position of a partition may only move over a *contiguous* prefix of
finished messages, or a crash would skip message 5. This tracker records what was
delivered, in delivery order, and reports how far the acked prefix reaches.
"""

from __future__ import annotations

from collections import deque


class PartitionPositions:
    __slots__ = ("_acked", "_pending", "committed", "dirty")

    def __init__(self, committed: int) -> None:
        self.committed = committed  # last offset whose whole prefix is finished
        self._pending: deque[int] = deque()  # delivered offsets, oldest first
        self._acked: set[int] = set()
        self.dirty = False

    def delivered(self, offset: int) -> None:
        self._pending.append(offset)

    def ack(self, offset: int) -> None:
        self._acked.add(offset)
        pending = self._pending
        while pending and pending[0] in self._acked:
            done = pending.popleft()
            self._acked.discard(done)
            self.committed = done
            self.dirty = True

    @property
    def in_flight(self) -> int:
        return len(self._pending) - len(self._acked)

    @property
    def last_delivered(self) -> int:
        return self._pending[-1] if self._pending else self.committed
