"""What the session store returns: results, session records and summaries, and the store's errors."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "ENDED",
    "INTERRUPTED",
    "OPEN",
    "SESSION_STATES",
    "ApplyResult",
    "ApplyStatus",
    "KnownState",
    "SessionCursor",
    "SessionNotFoundError",
    "SessionOwnershipError",
    "SessionRecord",
    "SessionSnapshot",
    "SessionState",
    "SessionSummary",
    "UpdateBatch",
]


class SessionOwnershipError(PermissionError):
    """The session id is already owned by another participant."""


class SessionNotFoundError(LookupError):
    """No participant owns this session id (never claimed, expired, or forgotten)."""


class ApplyStatus(enum.StrEnum):
    APPLIED = "applied"  # written; offset names the new stream entry
    DUPLICATE = "duplicate"  # seq <= applied seq: already applied (maybe by this very writer
    #                          before a dropped connection); nothing written
    GAP = "gap"  # seq > applied seq + 1: an earlier segment is missing; nothing written
    CONFLICT = "conflict"  # seq == applied + 1 but the writer's state was built on another
    #                        seq than the applied one (stale writer); nothing written
    UNCLAIMED = "unclaimed"  # no session record (never claimed, expired, forgotten)
    ENDED = "ended"  # the session was ended; no new segments accepted


@dataclass(frozen=True)
class ApplyResult:
    status: ApplyStatus
    applied_seq: int | None  # the session's last applied seq after this call
    offset: str | None = None  # session stream entry id (ScoreUpdate.offset); APPLIED only
    participant_offset: str | None = None  # participant stream entry id (normally == offset)
    score: dict[str, Any] | None = None  # the stored update, offset included; APPLIED only

    @property
    def applied(self) -> bool:
        return self.status is ApplyStatus.APPLIED

    @property
    def duplicate(self) -> bool:
        return self.status is ApplyStatus.DUPLICATE


@dataclass(frozen=True)
class SessionRecord:
    session_id: str
    participant_id: str
    device_id: str
    model_version: str
    created: bool  # True when this claim started the session
    started_at: float
    applied_seq: int | None
    segments: int
    speech_seconds: float
    ended_at: float | None
    latest: dict[str, Any] | None

    @property
    def ended(self) -> bool:
        return self.ended_at is not None


OPEN, ENDED, INTERRUPTED = "open", "ended", "interrupted"
SESSION_STATES = (OPEN, ENDED, INTERRUPTED)


class SessionState(NamedTuple):
    ended_at: float | None        # End received (server time)
    interrupted_at: float | None  # the last stream closed without End (cleared when a stream resumes)

    @property
    def name(self) -> str:
        """OPEN, ENDED or INTERRUPTED (an ended session is ended, whatever else it was)."""
        if self.ended_at is not None:
            return ENDED
        return INTERRUPTED if self.interrupted_at is not None else OPEN

    @property
    def since(self) -> float | None:
        """Server time the session entered its state (None while open)."""
        return self.ended_at if self.ended_at is not None else self.interrupted_at


@dataclass(frozen=True)
class SessionSummary:
    """One entry of the session directory (mirrors SessionSummary of moodstream.v1)."""

    session_id: str
    participant_id: str
    device_id: str
    model_version: str
    started_unix: float
    last_update_unix: float  # time of the latest score
    state: SessionState
    segments: int
    speech_seconds: float
    latest: dict[str, Any] | None


class SessionCursor(NamedTuple):
    """Where a directory page ended: the last session listed."""

    participant_id: str
    started_unix: float
    session_id: str


class SessionSnapshot(NamedTuple):
    applied_seq: int | None
    state: bytes | None  # the scorer state head (or a whole state in the format before heads and rows)
    latest: dict[str, Any] | None
    # every scorer row record appended so far, in order; None when the stored state is the one `known`
    # to load(), so the rows were not read
    rows: bytes | None = b""


@dataclass(frozen=True)
class UpdateBatch:
    updates: list[dict[str, Any]]  # score dicts, each with its "offset"
    next_offset: str  # pass as after_offset to continue exactly after this batch
    trimmed: bool  # the stream cap removed updates newer than after_offset: the reader missed
    #                them (see store_values.missed_removed_entries for the one boundary case)



class KnownState(NamedTuple):
    """A scorer state the caller holds, as load() compares it with the stored one."""

    head: bytes
    rows_length: int   # bytes of all its row records
    last_row: bytes    # its last row record (b"" without rows)

    @classmethod
    def of(cls, head: bytes, state) -> KnownState:
        """What the store holds for a ScorerState `state` stored with `head`."""
        last_row = state.row_bytes(state.rows - 1) if state.rows else b""
        return cls(head, state.rows * len(last_row), last_row)
