"""What the agent reports while it runs: one event per thing that happened."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from moodstream import SCREENING_NOTICE, evidence_sufficient

# Event kinds.
SESSION = "session"     # the session the agent works on (new or resumed)
CHUNK = "chunk"         # a chunk was made and stored in the outbox
DROPPED = "dropped"     # speech that will not be scored (too-short last chunk, outbox eviction)
SENT = "sent"           # a chunk went on the wire (again, after a reconnect)
ACK = "ack"             # the server stored a chunk durably; it left the outbox
SCORE = "score"         # the server's updated session score
RETRY = "retry"         # the connection failed; the agent waits, then reconnects
ERROR = "error"         # something failed; the message says what and what happens next
WARNING = "warning"     # needs attention, but this session goes on (e.g. other sessions left undelivered)
DONE = "done"           # the session is fully delivered (or the agent gave up)


@dataclass(frozen=True)
class AgentEvent:
    kind: str
    session_id: str
    data: dict = field(default_factory=dict)
    time_unix: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        return {"event": self.kind, "session_id": self.session_id, "time_unix": round(self.time_unix, 3),
                **self.data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)


EventSink = Callable[[AgentEvent], None]


class EventHub:
    """Serialises events from the capture and delivery threads into one sink."""

    def __init__(self, session_id: str, sink: EventSink | None):
        self.session_id = session_id
        self._sink = sink
        self._lock = threading.Lock()

    def emit(self, kind: str, /, **data) -> AgentEvent:
        event = AgentEvent(kind, self.session_id, data)
        if self._sink is not None:
            with self._lock:
                self._sink(event)
        return event


@dataclass(frozen=True)
class Score:
    """A session score from the server: a screening aid, not a diagnosis."""

    session_id: str
    participant_id: str
    segments: int
    probability: float
    above_threshold: bool
    threshold: float
    model_version: str
    seq: int
    speech_seconds: float
    time_unix: float
    offset: str
    notice: str = SCREENING_NOTICE
    evidence_sufficient: bool = True

    @classmethod
    def from_proto(cls, update) -> "Score":
        return cls(
            session_id=update.session_id,
            participant_id=update.participant_id,
            segments=int(update.segments),
            probability=float(update.probability),
            above_threshold=bool(update.above_threshold),
            threshold=float(update.threshold),
            model_version=update.model_version,
            seq=int(update.seq),
            speech_seconds=float(update.speech_seconds),
            time_unix=float(update.time_unix),
            offset=update.offset,
            notice=update.notice or SCREENING_NOTICE,
            evidence_sufficient=evidence_sufficient(update),
        )

    def to_dict(self) -> dict:
        return {
            "probability": self.probability,
            "segments": self.segments,
            "seq": self.seq,
            "above_threshold": self.above_threshold,
            "evidence_sufficient": self.evidence_sufficient,
            "threshold": self.threshold,
            "model_version": self.model_version,
            "speech_seconds": self.speech_seconds,
            "server_time_unix": self.time_unix,
            "offset": self.offset,
            "notice": self.notice,
        }
