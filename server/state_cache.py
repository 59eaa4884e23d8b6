"""Restored scorer states kept in memory, so a session that comes back skips reading its rows and `restore`.

Loading a session from Redis reads all of its scorer rows (O(n*d) bytes) and
rebuilds the softmax sums (O(n^2*d)): tens of ms at 500 segments and most of a
second at 2000. A client that opens a call per chunk (PutChunk) would pay that
every chunk. This cache keeps, per session, the state this server last
restored or stored. Redis stays the only source of truth: an entry is used
only while Redis holds exactly that state's head (and rows of its length that
end in its last record), checked in the same atomic read that would otherwise
return the rows (store.SessionStore.load with `known`). The head holds the
segment count, the LSTM's h and c and a checksum of every row, so any other
writer (another replica, a forgotten and recreated session, a migration)
changes it and the entry simply misses.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # the CLI reads the default below without loading torch, redis or prometheus_client
    from moodstream.model import ScorerState
    from moodstream.server.store_records import KnownState

DEFAULT_STATE_CACHE_MB = 256.0


class CachedState(NamedTuple):
    known: "KnownState"  # what Redis holds for `state`, as the store's load compares it
    state: "ScorerState"


def state_nbytes(state: "ScorerState") -> int:
    """The memory an entry holds: every array of the state, the rows' spare capacity included."""
    arrays = (state.h, state.c, state.row_max, state.row_denominator, state.row_numerator,
              state._queries.data, state._keys.data, state._values.data)
    return sum(array.nbytes for array in arrays)


def _metrics():
    from moodstream.server import metrics

    return metrics


class ScorerStateCache:
    """A least-recently-used map of session key -> CachedState, bounded in bytes (0 bytes: off).

    Keys are the session's Redis hash key, which names participant, model version and session.
    A state larger than the whole bound is not kept. Not thread-safe: the server uses it from its
    event loop only.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"the state cache size must be >= 0 bytes (0 = off), not {max_bytes}")
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[CachedState, int]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> CachedState | None:
        """The entry of a session, if any; neither a use nor a hit until `hit` (it may be stale)."""
        entry = self._entries.get(key)
        return None if entry is None else entry[0]

    def hit(self, key: str) -> None:
        """An entry was found to be what Redis holds, and used."""
        self._entries.move_to_end(key)
        _metrics().STATE_CACHE_LOOKUPS.labels("hit").inc()

    def miss(self) -> None:
        """A stored state had to be read and restored from Redis."""
        if self.enabled:
            _metrics().STATE_CACHE_LOOKUPS.labels("miss").inc()

    def put(self, key: str, known: "KnownState", state: "ScorerState") -> None:
        if not self.enabled:
            return
        self.discard(key)
        size = state_nbytes(state) + len(known.head) + len(known.last_row)
        if size > self.max_bytes:
            return
        self._entries[key] = (CachedState(known, state), size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.bytes -= evicted
            _metrics().STATE_CACHE_EVICTIONS.inc()
        _metrics().STATE_CACHE_BYTES.set(self.bytes)

    def discard(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry[1]
            _metrics().STATE_CACHE_BYTES.set(self.bytes)
