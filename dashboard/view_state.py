"""What the dashboard shows: every session of the followed participants with its points and state, the
connection states around them, and the views the pages and event streams are built from.

Time on a session's chart is speech time: each score sits at its chunk's start on the session clock, so
scores that waited out an outage land where their speech was recorded, marked late.

The view takes the time from its clock (seconds since the epoch, like the server's score times it is
compared with), never from the system directly, so what "idle", "since" and "recent" mean follows that clock.
Every change is handed to `publish` as an event, in the order it was applied.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

from moodstream import SCREENING_NOTICE
from moodstream.dashboard.feed_config import FeedConfig
from moodstream.dashboard.model_catalog import ModelCatalog
from moodstream.ids import is_id
from moodstream.v1 import moodstream_pb2 as pb
from moodstream.wire import score_to_dict

log = logging.getLogger("moodstream.dashboard")

Clock = Callable[[], float]  # wall time, seconds since the epoch

# Participant subscription states.
CONNECTING = "connecting"
FOLLOWING = "following"
RECONNECTING = "reconnecting"
TOKEN_REJECTED = "token rejected"
NOT_PERMITTED = "not permitted"
FAILED = "error"

# Server connection states.
SERVER_CONNECTED = "connected"
SERVER_CONNECTING = "connecting"
SERVER_UNREACHABLE = "unreachable"
SERVER_NOT_SERVING = "not serving"

# Session states, as a clinician reads them.
STREAMING = "streaming"      # scores are arriving
IDLE = "idle"                # open, but no score for idle_seconds
FINISHED = "finished"        # the agent sent End: no more speech will come
INTERRUPTED = "interrupted"  # the agent's stream closed without End; it may still resume

# Why a score was late or the chart has a gap, where the dashboard knows it.
CAUSE_SERVER_DOWN = "scoring server unreachable"
CAUSE_DELAYED = "delivered late (agent offline or catching up)"
CAUSE_NO_SPEECH = "no speech kept"


@dataclass
class Point:
    seq: int
    segments: int
    probability: float
    above_threshold: bool
    threshold: float
    model_version: str
    time_unix: float            # when the server scored it
    speech_seconds: float
    start_seconds: float        # when its speech was recorded, on the session clock
    delay_seconds: float = 0.0  # how much later it was scored than its speech allows
    late_cause: str = ""        # set when delay_seconds passed the late threshold
    gap_before: str = ""        # cause of a gap in speech time before this point
    evidence_sufficient: bool = True  # False: below the checkpoint's evidence rule, no label
    # The interval around probability at interval_level; None when the checkpoint carries none.
    probability_low: float | None = None
    probability_high: float | None = None
    interval_level: float | None = None

    @classmethod
    def from_update(cls, update: pb.ScoreUpdate) -> "Point":
        values = score_to_dict(update)
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    def to_dict(self) -> dict:
        return asdict(self) | {"delay_seconds": round(self.delay_seconds, 3), "late": bool(self.late_cause)}


@dataclass
class FollowedSession:
    """A session of a followed participant, with every score the dashboard has seen of it."""

    session_id: str
    participant_id: str
    ref: str
    participant_ref: str
    device_id: str = ""
    points: list[Point] = field(default_factory=list)
    # Earliest "scored at minus recorded at" so far: the session's on-time pace.
    prompt_offset: float | None = None
    ended_unix: float | None = None
    interrupted_unix: float | None = None
    next_state_check: float = 0.0

    @property
    def latest(self) -> Point:
        return self.points[-1]

    def take_server_state(self, state: int, since: float) -> None:
        """Adopt the session state the server reports (GetScore or the session directory)."""
        self.ended_unix = since if state == pb.SESSION_STATE_ENDED else None
        self.interrupted_unix = since if state == pb.SESSION_STATE_INTERRUPTED else None

    def state(self, now: float, idle_seconds: float) -> tuple[str, float]:
        """(state, since when) of the session as far as the dashboard knows."""
        if self.ended_unix is not None:
            return FINISHED, self.ended_unix
        if self.interrupted_unix is not None and self.interrupted_unix >= self.latest.time_unix:
            return INTERRUPTED, self.interrupted_unix
        if now - self.latest.time_unix > idle_seconds:
            return IDLE, self.latest.time_unix
        return STREAMING, self.points[0].time_unix

    def summary(self, now: float, idle_seconds: float) -> dict:
        latest = self.latest
        versions = list(dict.fromkeys(p.model_version for p in self.points))
        state, since = self.state(now, idle_seconds)
        return {
            "ref": self.ref, "session_id": self.session_id, "participant_id": self.participant_id,
            "participant_ref": self.participant_ref, "device_id": self.device_id,
            "segments": latest.segments, "probability": latest.probability,
            "probability_low": latest.probability_low, "probability_high": latest.probability_high,
            "interval_level": latest.interval_level,
            "above_threshold": latest.above_threshold, "evidence_sufficient": latest.evidence_sufficient,
            "threshold": latest.threshold,
            "model_version": latest.model_version, "model_versions": versions,
            "speech_seconds": latest.speech_seconds, "started_unix": self.points[0].time_unix,
            "last_update_unix": latest.time_unix, "late_points": sum(1 for p in self.points if p.late_cause),
            "state": state, "state_since": since,
        }


@dataclass
class ParticipantState:
    participant_id: str
    ref: str
    since: float
    state: str = CONNECTING
    message: str = ""         # plain words for the page
    details: str = ""         # the server's own error text, shown only on request

    def to_dict(self) -> dict:
        return {"participant_id": self.participant_id, "ref": self.ref, "state": self.state,
                "message": self.message, "details": self.details, "since": self.since}


def make_ref_key(token: str) -> bytes:
    return hashlib.sha256(b"moodstream-dashboard-ref\0" + token.encode()).digest()


def opaque_ref(key: bytes, kind: str, identifier: str) -> str:
    """A stable id for URLs that reveals nothing about `identifier` without the key."""
    return hmac.new(key, f"{kind}\0{identifier}".encode(), hashlib.sha256).hexdigest()[:20]


class FeedView:
    """Every session of the followed participants, in memory, and the connection states around them."""

    def __init__(self, config: FeedConfig, publish: Callable[[dict], None], clock: Clock = time.time) -> None:
        self.config = config
        self.clock = clock
        self._publish = publish
        self.key = config.ref_key or make_ref_key(config.token)
        self.sessions: dict[str, FollowedSession] = {}
        self.sessions_by_ref: dict[str, FollowedSession] = {}
        self.participants: dict[str, ParticipantState] = {}
        self.participants_by_ref: dict[str, ParticipantState] = {}
        for participant_id in config.participants:
            self._register(participant_id)
        self.server_state = SERVER_CONNECTING
        self.server_message = ""
        self.server_details = ""
        self.server_since = clock()
        self.outages: list[list[float]] = []  # [from, to] spans the server was unreachable (to = inf: still)
        self.catalog = ModelCatalog(config.models)
        self._published_states: dict[str, str] = {}
        self.expected: dict[str, tuple[str, str]] = {}  # ref -> (session id, participant id), no score yet
        self._logged: dict[str, str] = {}
        self.discovering = not config.participants
        self.directory_state = ""   # "" while fine; otherwise why the session directory cannot be read
        self.directory_token_rejected = False  # the directory refused the token itself (not its scope)
        self.listed: dict[str, pb.SessionSummary] = {}  # the directory's latest answer, by session id

    # ------------------------------------------------------------ ids
    def ref(self, kind: str, identifier: str) -> str:
        return opaque_ref(self.key, kind, identifier)

    def session_ref(self, session_id: str) -> str:
        return self.ref("session", session_id)

    # ------------------------------------------------------------ participants
    def _register(self, participant_id: str) -> None:
        state = ParticipantState(participant_id, self.ref("participant", participant_id), self.clock())
        self.participants[participant_id] = state
        self.participants_by_ref[state.ref] = state

    def add_participant(self, participant_id: str) -> bool:
        """Show a participant found in the session directory; False if already shown or not a valid id."""
        if participant_id in self.participants or not is_id(participant_id):
            return False
        self._register(participant_id)
        self._publish({"type": "connection", "connection": self.connection()})
        return True

    # ------------------------------------------------------------ views
    def connection(self) -> dict:
        rejected = [p.message for p in self.participants.values() if p.state == TOKEN_REJECTED]
        token_problem = rejected[0] if rejected else self.directory_state
        return {
            "server": {"target": self.config.server, "state": self.server_state, "message": self.server_message,
                       "details": self.server_details, "since": self.server_since,
                       "tls": bool(self.config.tls or self.config.tls_ca)},
            "token_error": token_problem,
            # The server refused the token itself (unknown, revoked): nothing can be read with it.
            "token_rejected": bool(rejected) or self.directory_token_rejected,
            "models": self.catalog.models(),
            "participants": [p.to_dict() for p in self.participants.values()],
            "discovering": self.discovering,
        }

    def settings(self) -> dict:
        return {"idle_seconds": self.config.idle_seconds, "gap_seconds": self.config.gap_seconds,
                "late_seconds": self.config.late_seconds, "notice": SCREENING_NOTICE, "now": self.clock()}

    def model(self, model_version: str, threshold: float) -> dict:
        """What `model_version`'s probability means and its evidence rule (the threshold comes with every score)."""
        return self.catalog.describe(model_version, threshold)

    def take_model_info(self, reply: pb.ModelInfo) -> None:
        """Adopt the server's GetModelInfo answer, telling the pages if it changed."""
        if self.catalog.take_info(reply):
            self._publish({"type": "connection", "connection": self.connection()})

    def summary(self, session: FollowedSession) -> dict:
        summary = session.summary(self.clock(), self.config.idle_seconds)
        # Whether a model's scores carry an interval is read off its scores: the pages say so once per model.
        model = self.model(summary["model_version"], summary["threshold"])
        model["interval_level"] = summary["interval_level"]
        return summary | {"model": model, "on_overview": self.on_overview(session)}

    def on_overview(self, session: FollowedSession) -> bool:
        return not self.discovering or session.session_id in self.listed

    def summaries(self, participant_id: str | None = None) -> list[dict]:
        chosen = [s for s in self.sessions.values() if participant_id in (None, s.participant_id)]
        chosen.sort(key=lambda s: s.latest.time_unix, reverse=True)
        return [self.summary(s) for s in chosen]

    def overview_sessions(self) -> list[dict]:
        """The overview's rows, newest first: every session of the participants named at start, or,
        without names, the sessions of the session directory's latest answer (those with a score in
        the last recent_seconds) once their scores have arrived.
        """
        return [row for row in self.summaries() if row["on_overview"]]

    def overview(self) -> dict:
        return {"view": "overview", "settings": self.settings(), "connection": self.connection(),
                "sessions": self.overview_sessions()}

    def expect_session(self, session_id: str, participant_id: str) -> str:
        """Give a session that has no score yet a page (it waits for the first one); returns its ref."""
        if participant_id not in self.participants:
            raise ValueError(f"participant {participant_id!r} is not followed by this dashboard")
        ref = self.session_ref(session_id)
        self.expected[ref] = (session_id, participant_id)
        return ref

    def session_detail(self, ref: str) -> dict | None:
        session = self.sessions_by_ref.get(ref)
        if session is None:
            if ref not in self.expected:
                return None
            session_id, participant_id = self.expected[ref]
            waiting = {"ref": ref, "session_id": session_id, "participant_id": participant_id,
                       "participant_ref": self.participants[participant_id].ref, "waiting": True}
            return {"view": "session", "settings": self.settings(), "connection": self.connection(),
                    "session": waiting, "points": []}
        return {"view": "session", "settings": self.settings(), "connection": self.connection(),
                "session": self.summary(session), "points": [p.to_dict() for p in session.points]}

    def participant_detail(self, ref: str) -> dict | None:
        state = self.participants_by_ref.get(ref)
        if state is None:
            return None
        visible = state.state not in (TOKEN_REJECTED, NOT_PERMITTED)
        return {"view": "participant", "settings": self.settings(), "connection": self.connection(),
                "participant": state.to_dict(),
                "sessions": self.summaries(state.participant_id) if visible else []}

    # ------------------------------------------------------------ applying updates
    def apply(self, update: pb.ScoreUpdate) -> bool:
        """Add one ScoreUpdate; False if it was already known (a resumed stream's overlap)."""
        participant = self.participants.get(update.participant_id)
        if participant is None:
            return False
        session = self.sessions.get(update.session_id)
        if session is None:
            session = FollowedSession(update.session_id, update.participant_id,
                                      self.session_ref(update.session_id), participant.ref, update.device_id)
            self.sessions[update.session_id] = session
            self.sessions_by_ref[session.ref] = session
        if session.points and update.seq <= session.latest.seq:
            return False
        point = Point.from_update(update)
        self._place(session, point)
        session.points.append(point)
        session.next_state_check = 0.0
        if update.device_id:
            session.device_id = update.device_id
        summary = self.summary(session)
        self._published_states[session.ref] = summary["state"]
        self._publish({"type": "score", "participant_id": session.participant_id, "session_ref": session.ref,
                       "session": summary, "point": point.to_dict()})
        return True

    def _place(self, session: FollowedSession, point: Point) -> None:
        """Mark a late score and a gap in speech before it, each with its cause where known.

        A score is late when it was scored more than late_seconds after the session's
        best pace so far ("scored at" minus "recorded at"): a stream faster than real
        time (a file) never looks late, a backlog sent after an outage does.
        """
        offset = point.time_unix - point.start_seconds
        best = offset if session.prompt_offset is None else min(session.prompt_offset, offset)
        session.prompt_offset = best
        point.delay_seconds = offset - best
        if point.delay_seconds > self.config.late_seconds:
            recorded = point.time_unix - point.delay_seconds
            down = any(start < point.time_unix and end > recorded for start, end in self.outages)
            point.late_cause = CAUSE_SERVER_DOWN if down else CAUSE_DELAYED
        if session.points:
            previous = session.points[-1]
            chunk = previous.speech_seconds - (session.points[-2].speech_seconds if len(session.points) > 1 else 0)
            if point.start_seconds - (previous.start_seconds + chunk) > self.config.gap_seconds:
                point.gap_before = CAUSE_NO_SPEECH

    def set_participant(self, participant_id: str, state: str, message: str = "", details: str = "") -> None:
        current = self.participants[participant_id]
        if (current.state, current.message, current.details) == (state, message, details):
            return
        current.state, current.message, current.details, current.since = state, message, details, self.clock()
        if state in (TOKEN_REJECTED, NOT_PERMITTED, FAILED, RECONNECTING) and message:
            logged = f"{message} ({details})" if details else message
            if self._logged.get(participant_id) != logged:
                self._logged[participant_id] = logged
                log.warning("participant %s: %s: %s", participant_id, state, logged)
        elif self._logged.pop(participant_id, None) is not None:
            log.info("participant %s: %s again", participant_id, state)
        self._publish({"type": "connection", "connection": self.connection()})

    def set_server(self, state: str, message: str = "", details: str = "") -> None:
        if (self.server_state, self.server_message, self.server_details) == (state, message, details):
            return
        now = self.clock()
        if state != self.server_state:
            log.log(logging.INFO if state == SERVER_CONNECTED else logging.WARNING, "scoring server %s: %s%s",
                    self.config.server, state, f" ({details or message})" if details or message else "")
            if state == SERVER_CONNECTED:
                if self.outages and self.outages[-1][1] == math.inf:
                    self.outages[-1][1] = now
            elif not self.outages or self.outages[-1][1] != math.inf:
                # Down since the last time it answered (the dashboard checks every health_interval).
                self.outages.append([now - self.config.health_interval, math.inf])
            self.server_since = now
        self.server_state, self.server_message, self.server_details = state, message, details
        self._publish({"type": "connection", "connection": self.connection()})

    def set_directory_problem(self, problem: str, token_rejected: bool = False) -> None:
        """Why the session directory cannot be read ("" once it can); token_rejected: it refused the token."""
        if (problem, token_rejected) == (self.directory_state, self.directory_token_rejected):
            return
        self.directory_token_rejected = token_rejected
        if problem:
            log.warning("session directory: %s", problem)
        self.directory_state = problem
        self._publish({"type": "connection", "connection": self.connection()})

    def take_listing(self, listed: dict[str, pb.SessionSummary]) -> None:
        """Adopt the session directory's answer: its states, and the overview's rows, publishing each row
        that joined or left the overview."""
        moved = set(listed) ^ set(self.listed)
        self.listed = listed
        for session_id, entry in listed.items():
            session = self.sessions.get(session_id)
            if session is None:
                continue  # its scores are still on their way (Subscribe replays them)
            session.take_server_state(entry.state, entry.state_since_unix)
        for session_id in sorted(moved):
            if session_id in self.sessions:
                self.publish_session(self.sessions[session_id], always=True)

    def publish_session(self, session: FollowedSession, always: bool = False) -> None:
        """Tell the pages a session's new summary: when its state changed, or always."""
        summary = self.summary(session)
        if always or self._published_states.get(session.ref) != summary["state"]:
            self._published_states[session.ref] = summary["state"]
            self._publish({"type": "session", "participant_id": session.participant_id,
                           "session_ref": session.ref, "session": summary})
