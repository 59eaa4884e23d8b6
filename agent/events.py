"""What the agent reports while it runs: one event per thing that happened."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from moodstream import SCREENING_NOTICE
from moodstream.wire import score_to_dict

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


def sentence(event: AgentEvent) -> str:
    """The event as a sentence for people (the demo prints these; --json prints the event's fields)."""
    data = event.data
    speech = f"{data.get('speech_seconds', 0):.1f} s of speech from {data.get('start_seconds', 0):.1f} s"
    waiting = f"{data['pending']} chunk(s) waiting to be sent" if "pending" in data else ""
    kind = event.kind
    if kind == SESSION:
        where = f"participant {data.get('participant_id', '?')}, server {data.get('server', '?')}"
        if data.get("resumed"):
            return f"session {event.session_id} resumed ({where}): {data.get('resume')}"
        return f"session {event.session_id} started ({where})"
    if kind == CHUNK:
        return f"chunk {data.get('seq')} made: {speech}" + (f"; {waiting}" if waiting else "")
    if kind == DROPPED:
        if data.get("drop") == "outbox_evicted":
            return (f"chunk {data.get('seq')} of session {data.get('dropped_session_id', event.session_id)} was "
                    f"dropped unsent from the full outbox ({speech}): {data.get('reason')}")
        return f"the last {speech} will not be scored: {data.get('reason')}"
    if kind == SENT:
        return f"chunk {data.get('seq')} sent"
    if kind == ACK:
        again = " (it had it already: a resend)" if data.get("duplicate") else ""
        return f"chunk {data.get('seq')} stored by the server{again}"
    if kind == SCORE:
        from moodstream import COLLECTING_SPEECH
        from moodstream.wire import interval_text

        label = (COLLECTING_SPEECH if not data.get("evidence_sufficient", True)
                 else "above threshold" if data.get("above_threshold") else "below threshold")
        return f"score after {data.get('segments')} segment(s): p = {interval_text(data)}, {label}"
    if kind == RETRY:
        return (f"cannot reach {data.get('failed_server', data.get('server', '?'))} ({data.get('reason')}); "
                f"trying {data.get('server', '?')} in {data.get('delay_seconds')} s (attempt {data.get('attempt')})"
                + (f", {waiting}" if waiting else ""))
    if kind == ERROR:
        return f"{data.get('stage', 'agent')} failed: {data.get('message')}"
    if kind == WARNING:
        return f"warning ({data.get('stage', 'agent')}): {data.get('message')}"
    if kind == DONE:
        if data.get("completed"):
            return (f"session {event.session_id} delivered: {data.get('chunks_acked')} chunk(s) stored by the "
                    f"server, {data.get('dropped')} dropped")
        return (f"session {event.session_id} not fully delivered: {data.get('chunks_acked')} chunk(s) stored by "
                f"the server; the rest stay in the outbox")
    raise ValueError(f"no sentence for agent event {kind!r}")


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


class Score(dict):
    """A session score from the server, every ScoreUpdate field under its .proto name (also as attributes):
    a screening aid, not a diagnosis."""

    @classmethod
    def from_proto(cls, update) -> "Score":
        score = cls(score_to_dict(update))
        score["notice"] = score["notice"] or SCREENING_NOTICE
        return score

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def event_data(self) -> dict:
        """The score event's fields: the server's time_unix is server_time_unix (the event has a time of its own)."""
        data = dict(self)
        data["server_time_unix"] = data.pop("time_unix")
        return data
