"""Durable outbox: every chunk waits on disk until the server acknowledges it.

SQLite in WAL mode with synchronous=FULL, so a chunk whose `put` returned
survives a crash or power loss. One row per (session_id, seq); a row is
deleted only by the server's ack. Disk use is bounded (`max_bytes` of stored
chunks) with an explicit policy when the bound is reached:

* ``refuse``: `put` raises :class:`OutboxFull`; the agent stops capturing and
  says so. Nothing already stored is touched.
* ``drop-oldest``: the oldest chunks that were never sent are deleted to make
  room, each one logged in the ``drops`` table and returned to the caller to
  report. Chunks already sent are never dropped: the server may have applied
  them. Later chunks of the same session move down one seq so the wire
  sequence stays gap-free (the server waits for gaps rather than skipping).
"""
from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

from moodstream.speech.chunker import SpeechChunk
from .sources import SAMPLE_RATE

POLICIES = ("refuse", "drop-oldest")
DEFAULT_MAX_BYTES = 256 * 1024 * 1024  # ~2 h of kept speech at 16 kHz s16le
ROW_OVERHEAD_BYTES = 512  # metadata and index share of a row, so the bound holds for tiny chunks too
DB_NAME = "outbox.sqlite3"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id      TEXT PRIMARY KEY,
    participant_id  TEXT NOT NULL,
    device_id       TEXT NOT NULL,
    sample_rate     INTEGER NOT NULL,
    next_seq        INTEGER NOT NULL DEFAULT 0,  -- wire seq the next stored chunk gets
    chunks_produced INTEGER NOT NULL DEFAULT 0,  -- chunks the capture made, evicted ones included
    clock_seconds   REAL NOT NULL DEFAULT 0,     -- session clock the capture has reached
    source_done     INTEGER NOT NULL DEFAULT 0,  -- capture finished: no more chunks will come
    completed_unix  REAL,                        -- server acked everything after End
    settings        TEXT NOT NULL DEFAULT '{}',
    created_unix    REAL NOT NULL,
    updated_unix    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,  -- storage order, for drop-oldest
    session_id      TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    participant_id  TEXT NOT NULL,
    device_id       TEXT NOT NULL,
    sample_rate     INTEGER NOT NULL,
    start_seconds   REAL NOT NULL,
    speech_seconds  REAL NOT NULL,
    dropped_seconds REAL NOT NULL,
    vad_frames      INTEGER NOT NULL,
    pcm             BLOB NOT NULL,
    nbytes          INTEGER NOT NULL,
    sent            INTEGER NOT NULL DEFAULT 0,  -- handed to a connection at least once
    created_unix    REAL NOT NULL,
    UNIQUE (session_id, seq)
);
CREATE TABLE IF NOT EXISTS drops (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id      TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    start_seconds   REAL NOT NULL,
    speech_seconds  REAL NOT NULL,
    reason          TEXT NOT NULL,
    time_unix       REAL NOT NULL
);
"""


class OutboxFull(RuntimeError):
    """A chunk cannot be stored within the outbox's disk bound."""


@dataclass(frozen=True)
class StoredChunk:
    session_id: str
    seq: int
    participant_id: str
    device_id: str
    sample_rate: int
    start_seconds: float
    speech_seconds: float
    dropped_seconds: float
    vad_frames: int
    pcm: bytes
    sent: bool
    created_unix: float


@dataclass(frozen=True)
class DropRecord:
    session_id: str
    seq: int
    start_seconds: float
    speech_seconds: float
    reason: str
    time_unix: float


@dataclass(frozen=True)
class OutboxSession:
    session_id: str
    participant_id: str
    device_id: str
    sample_rate: int
    next_seq: int
    chunks_produced: int
    clock_seconds: float
    source_done: bool
    completed: bool
    settings: dict = field(default_factory=dict)

    @property
    def last_seq(self) -> int | None:
        return self.next_seq - 1 if self.next_seq > 0 else None


@dataclass(frozen=True)
class PutResult:
    seq: int                       # the wire seq the chunk was stored under
    evicted: list[DropRecord]      # chunks dropped to make room (drop-oldest only)


def default_outbox_dir() -> Path:
    """Where the outbox lives unless told: the platform's per-user data folder."""
    override = os.environ.get("MOODSTREAM_OUTBOX")
    if override:
        return Path(override).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    return base / "moodstream" / "outbox"


class Outbox:
    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        policy: str = "refuse",
    ):
        if policy not in POLICIES:
            raise ValueError(f"outbox policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if max_bytes <= ROW_OVERHEAD_BYTES:
            raise ValueError(f"outbox bound must be more than {ROW_OVERHEAD_BYTES} bytes, got {max_bytes}")
        self.directory = Path(directory).expanduser()
        self.max_bytes = int(max_bytes)
        self.policy = policy
        try:
            # Speech recordings are health data: only the user may read them.
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as error:
            raise ValueError(f"cannot create the outbox folder {self.directory}: {error.strerror}") from None
        self.path = self.directory / DB_NAME
        fresh = not self.path.exists()
        try:
            self._db = sqlite3.connect(
                str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False
            )
            self._db.row_factory = sqlite3.Row
            if fresh:
                os.chmod(self.path, 0o600)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ValueError(f"the outbox at {self.path} cannot use WAL mode (got {mode!r})")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=30000")
            # Keep the WAL file from growing past the bound between checkpoints.
            self._db.execute(f"PRAGMA journal_size_limit={16 * 1024 * 1024}")
            self._db.executescript(_SCHEMA)
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise ValueError(
                    f"the outbox at {self.path} has schema version {version}; this agent "
                    f"understands {SCHEMA_VERSION}"
                )
        except sqlite3.DatabaseError as error:
            raise ValueError(f"cannot open the outbox at {self.path}: {error}") from None
        self._lock = threading.RLock()

    # -- plumbing -------------------------------------------------------------------

    @contextmanager
    def _transaction(self):
        with self._lock:
            # IMMEDIATE takes the write lock up front, so agents sharing the folder serialise.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def _query(self, sql: str, params=()):
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- sessions -------------------------------------------------------------------

    def open_session(
        self,
        session_id: str,
        participant_id: str,
        device_id: str,
        settings: dict | None = None,
    ) -> OutboxSession:
        """The session's record, created on first use. A session belongs to one participant."""
        now = time.time()
        with self._transaction() as db:
            existing = self._session(db, session_id)
            if existing is None:
                db.execute(
                    "INSERT INTO sessions (session_id, participant_id, device_id, sample_rate, "
                    "settings, created_unix, updated_unix) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (session_id, participant_id, device_id, SAMPLE_RATE,
                     json.dumps(settings or {}, sort_keys=True), now, now),
                )
                return self._session(db, session_id)
        if existing.participant_id != participant_id:
            raise ValueError(
                f"session {session_id!r} in the outbox belongs to participant "
                f"{existing.participant_id!r}, not {participant_id!r}; use another --session"
            )
        return existing

    @staticmethod
    def _session(db, session_id: str) -> OutboxSession | None:
        row = db.execute(
            "SELECT session_id, participant_id, device_id, sample_rate, next_seq, chunks_produced, "
            "clock_seconds, source_done, completed_unix, settings FROM sessions WHERE session_id = ?",
            (session_id,),
        ).fetchone()
        if row is None:
            return None
        return OutboxSession(
            session_id=row["session_id"], participant_id=row["participant_id"], device_id=row["device_id"],
            sample_rate=row["sample_rate"], next_seq=row["next_seq"], chunks_produced=row["chunks_produced"],
            clock_seconds=row["clock_seconds"], source_done=bool(row["source_done"]),
            completed=row["completed_unix"] is not None, settings=json.loads(row["settings"]),
        )

    def session(self, session_id: str) -> OutboxSession | None:
        with self._lock:
            return self._session(self._db, session_id)

    def unfinished_sessions(self) -> list[OutboxSession]:
        """Sessions with chunks to deliver, or whose End was never acknowledged."""
        ids = [row[0] for row in self._query(
            "SELECT session_id FROM sessions WHERE completed_unix IS NULL AND next_seq > 0 "
            "ORDER BY created_unix"
        )]
        return [self.session(session_id) for session_id in ids]

    def record_progress(self, session_id: str, clock_seconds: float, source_done: bool = False) -> None:
        """The session clock only moves forward; once the source is done it stays done."""
        with self._transaction() as db:
            db.execute(
                "UPDATE sessions SET clock_seconds = MAX(clock_seconds, ?), source_done = MAX(source_done, ?), "
                "updated_unix = ? WHERE session_id = ?",
                (clock_seconds, int(source_done), time.time(), session_id),
            )

    def mark_source_done(self, session_id: str, clock_seconds: float) -> None:
        self.record_progress(session_id, clock_seconds, source_done=True)

    def mark_completed(self, session_id: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE sessions SET completed_unix = ?, updated_unix = ? WHERE session_id = ?",
                (time.time(), time.time(), session_id),
            )

    # -- chunks ---------------------------------------------------------------------

    def put(self, session_id: str, chunk: SpeechChunk, *, clock_seconds: float | None = None) -> PutResult:
        """Store a chunk durably; returns its wire seq and anything evicted for it.

        Raises :class:`OutboxFull` when it cannot be stored within the bound."""
        need = len(chunk.pcm) + ROW_OVERHEAD_BYTES
        if need > self.max_bytes:
            raise OutboxFull(
                f"outbox bound of {self.max_bytes} bytes is smaller than one chunk ({need} bytes)"
            )
        now = time.time()
        with self._transaction() as db:
            session = self._session(db, session_id)
            if session is None:
                raise ValueError(f"session {session_id!r} was not opened in the outbox")
            used = db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM chunks").fetchone()[0]
            evicted: list[DropRecord] = []
            if used + need > self.max_bytes:
                if self.policy == "refuse":
                    count = db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
                    raise OutboxFull(
                        f"outbox full: {count} unacknowledged chunks use {used} of {self.max_bytes} "
                        f"bytes at {self.directory} (policy 'refuse': capture stops; nothing was dropped)"
                    )
                used = self._evict_oldest_unsent(db, used, need, evicted, now)
                if used + need > self.max_bytes:
                    # Roll back the evictions too: dropping chunks without storing this one helps no one.
                    raise OutboxFull(
                        f"outbox full: even without every unsent chunk, the chunks awaiting the "
                        f"server's ack use {used} of {self.max_bytes} bytes at {self.directory}"
                    )
                session = self._session(db, session_id)
            seq = session.next_seq
            db.execute(
                "INSERT INTO chunks (session_id, seq, participant_id, device_id, sample_rate, "
                "start_seconds, speech_seconds, dropped_seconds, vad_frames, pcm, nbytes, created_unix) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session_id, seq, session.participant_id, session.device_id, session.sample_rate,
                 chunk.start_seconds, chunk.speech_seconds, chunk.dropped_seconds, chunk.vad_frames,
                 chunk.pcm, need, now),
            )
            db.execute(
                "UPDATE sessions SET next_seq = ?, chunks_produced = MAX(chunks_produced, ?), "
                "clock_seconds = MAX(clock_seconds, ?), updated_unix = ? WHERE session_id = ?",
                (seq + 1, chunk.seq + 1, clock_seconds if clock_seconds is not None else chunk.end_seconds,
                 now, session_id),
            )
        return PutResult(seq=seq, evicted=evicted)

    def _evict_oldest_unsent(self, db, used: int, need: int, evicted: list[DropRecord], now: float) -> int:
        candidates = db.execute(
            "SELECT id, session_id, seq, start_seconds, speech_seconds, nbytes FROM chunks "
            "WHERE sent = 0 ORDER BY id"
        ).fetchall()
        for row_id, session_id, seq, start_seconds, speech_seconds, nbytes in candidates:
            if used + need <= self.max_bytes:
                break
            # The row's seq may have moved down since the SELECT (an earlier eviction in
            # this loop renumbered its session), so address it by id.
            seq = db.execute("SELECT seq FROM chunks WHERE id = ?", (row_id,)).fetchone()[0]
            db.execute("DELETE FROM chunks WHERE id = ?", (row_id,))
            # Close the gap: every later chunk of the session is unsent too (chunks are
            # sent in seq order), so renumbering them cannot clash with the server's state.
            # Two steps because SQLite checks UNIQUE row by row.
            db.execute("UPDATE chunks SET seq = -seq WHERE session_id = ? AND seq > ?", (session_id, seq))
            db.execute("UPDATE chunks SET seq = -seq - 1 WHERE session_id = ? AND seq < 0", (session_id,))
            db.execute(
                "UPDATE sessions SET next_seq = next_seq - 1, updated_unix = ? WHERE session_id = ?",
                (now, session_id),
            )
            reason = "outbox full (policy drop-oldest): oldest unsent chunk dropped"
            db.execute(
                "INSERT INTO drops (session_id, seq, start_seconds, speech_seconds, reason, time_unix) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (session_id, seq, start_seconds, speech_seconds, reason, now),
            )
            evicted.append(DropRecord(session_id, seq, start_seconds, speech_seconds, reason, now))
            used -= nbytes
        return used

    def record_drop(self, session_id: str, seq: int, start_seconds: float, speech_seconds: float,
                    reason: str) -> DropRecord:
        """Log audio that will never be sent (e.g. a too-short last chunk), so it is on record."""
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO drops (session_id, seq, start_seconds, speech_seconds, reason, time_unix) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (session_id, seq, start_seconds, speech_seconds, reason, now),
            )
        return DropRecord(session_id, seq, start_seconds, speech_seconds, reason, now)

    def drops(self, session_id: str | None = None) -> list[DropRecord]:
        sql = f"SELECT {', '.join(f.name for f in fields(DropRecord))} FROM drops"
        params: tuple = ()
        if session_id is not None:
            sql += " WHERE session_id = ?"
            params = (session_id,)
        return [DropRecord(**row) for row in self._query(sql + " ORDER BY id", params)]

    _CHUNK_COLUMNS = ", ".join(f.name for f in fields(StoredChunk))

    @staticmethod
    def _chunk(row: sqlite3.Row) -> StoredChunk:
        return StoredChunk(**{**row, "sent": bool(row["sent"])})

    def pending(self, session_id: str) -> list[StoredChunk]:
        """Every unacknowledged chunk of the session, in seq order."""
        rows = self._query(
            f"SELECT {self._CHUNK_COLUMNS} FROM chunks WHERE session_id = ? ORDER BY seq", (session_id,)
        )
        return [self._chunk(row) for row in rows]

    def claim_next(self, session_id: str, min_seq: int) -> StoredChunk | None:
        """The lowest-seq chunk at or above `min_seq`, marked sent in the same transaction
        (so drop-oldest can never evict or renumber a chunk once it may be on the wire)."""
        with self._transaction() as db:
            row = db.execute(
                f"SELECT {self._CHUNK_COLUMNS} FROM chunks WHERE session_id = ? AND seq >= ? "
                "ORDER BY seq LIMIT 1",
                (session_id, min_seq),
            ).fetchone()
            if row is None:
                return None
            if not row["sent"]:
                db.execute("UPDATE chunks SET sent = 1 WHERE session_id = ? AND seq = ?", (session_id, row["seq"]))
        return self._chunk(row)

    def lowest_pending_seq(self, session_id: str) -> int | None:
        return self._query("SELECT MIN(seq) FROM chunks WHERE session_id = ?", (session_id,))[0][0]

    def ack(self, session_id: str, seq: int) -> bool:
        """The server has the chunk durably: forget it. False if it was not here (a repeat ack)."""
        with self._transaction() as db:
            cursor = db.execute("DELETE FROM chunks WHERE session_id = ? AND seq = ?", (session_id, seq))
            return cursor.rowcount > 0

    def pending_count(self, session_id: str | None = None) -> int:
        if session_id is None:
            return self._query("SELECT COUNT(*) FROM chunks")[0][0]
        return self._query("SELECT COUNT(*) FROM chunks WHERE session_id = ?", (session_id,))[0][0]

    def used_bytes(self) -> int:
        return self._query("SELECT COALESCE(SUM(nbytes), 0) FROM chunks")[0][0]
