"""The dashboard's view of the score streams, fed only through the public gRPC API.

One `Subscribe(participant_id, after_offset)` call per followed participant
replays that participant's history and then stays open for live updates; a
dropped call resumes from the last offset it saw, so nothing is missed or
shown twice; HTTP/2 keepalive ends a call that a dead connection left hanging,
so it resumes too. A health check every few seconds gives the server's
connection state, and GetScore on each quiet session tells whether it finished (End received) or
was interrupted (its stream closed without End).

Without a list of participants, the feed asks the session directory
(ListSessions) every few seconds for the sessions the token may read that had
a score within the recent window, follows each participant found there, and
the overview shows exactly those sessions.

Time on a session's chart is speech time: each score sits at its chunk's
start on the session clock, so scores that waited out an outage land where
their speech was recorded, marked late.

Everything here runs on one asyncio loop (the web server's); listeners get
events synchronously in the order the feed applied them.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from moodstream import SCREENING_NOTICE
from moodstream.ids import ID_RULE, is_id
from moodstream.model_description import ModelDescription
from moodstream.v1 import moodstream_pb2 as pb
from moodstream.v1 import moodstream_pb2_grpc as pb_grpc
from moodstream.wire import Subscription, bearer_metadata, open_channel, score_to_dict, speech_settings_of

log = logging.getLogger("moodstream.dashboard")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Screening"].full_name

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


def check_participant_id(value: str) -> str:
    if not is_id(value):
        raise ValueError(f"participant id {value[:80]!r} is invalid: use {ID_RULE}")
    return value


def read_participants_file(path: str | Path) -> list[str]:
    """One participant id per line; blank lines and `#` comments are ignored."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise ValueError(f"participants file {path} does not exist") from None
    participants = []
    for number, line in enumerate(lines, 1):
        value = line.split("#", 1)[0].strip()
        if value:
            try:
                participants.append(check_participant_id(value))
            except ValueError as error:
                raise ValueError(f"{path}:{number}: {error}") from None
    return participants


@dataclass
class FeedConfig:
    server: str                        # HOST:PORT of any scoring server replica
    token: str                         # read-scoped bearer token
    participants: list[str]            # whom to follow ([] = whoever the session directory lists)
    tls: bool = False                  # TLS with the system's root certificates
    tls_ca: str | Path | None = None   # TLS with this CA bundle (PEM)
    idle_seconds: float = 60.0         # an open session without a score for this long is idle
    gap_seconds: float = 60.0          # more speech time than this between two chunks is drawn as a gap
    late_seconds: float = 30.0         # a score this much later than its speech allows is marked late
    health_interval: float = 5.0
    discover_interval: float = 5.0     # how often the session directory is asked (without participants)
    recent_seconds: float = 3600.0     # without participants: the overview lists sessions with a score this recent
    ref_key: bytes | None = None       # key of the opaque URL ids (default: derived from the token)
    models: list[ModelDescription] = field(default_factory=list)  # what each model's probability means
    record_endpoint: str = ""          # base URL of the server's gRPC-web port, where /record sends speech

    def __post_init__(self) -> None:
        if not self.server or ":" not in self.server:
            raise ValueError(f"--server must be HOST:PORT, not {self.server!r}")
        if not self.token or not self.token.strip():
            raise ValueError("a read token is needed: pass --token, --token-file or set MOODSTREAM_TOKEN")
        self.token = self.token.strip()
        seen = []
        for participant in self.participants:
            check_participant_id(participant)
            if participant not in seen:
                seen.append(participant)
        self.participants = seen
        if self.tls_ca is not None and not Path(self.tls_ca).is_file():
            raise ValueError(f"--tls-ca {self.tls_ca} is not a file")
        if min(self.idle_seconds, self.gap_seconds, self.late_seconds, self.recent_seconds) <= 0:
            raise ValueError("--idle-seconds, --gap-seconds, --late-seconds and --recent-seconds must be > 0")
        if self.discover_interval <= 0:
            raise ValueError(f"discover_interval must be > 0, not {self.discover_interval}")


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
    state: str = CONNECTING
    message: str = ""         # plain words for the page
    details: str = ""         # the server's own error text, shown only on request
    since: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        return {"participant_id": self.participant_id, "ref": self.ref, "state": self.state,
                "message": self.message, "details": self.details, "since": self.since}


class Listener:
    """A bounded event queue for one open event stream; a slow reader gets a resync instead."""

    def __init__(self, limit: int = 2000) -> None:
        self.events: deque = deque()
        self.limit = limit
        self.resync = False
        self.closed = False
        self.ready = asyncio.Event()

    def push(self, event: dict) -> None:
        if len(self.events) >= self.limit:
            self.events.clear()
            self.resync = True
        else:
            self.events.append(event)
        self.ready.set()

    def close(self) -> None:
        self.closed = True
        self.ready.set()

    async def next(self, timeout: float) -> dict | None:
        """The next event, {"type": "resync"} after an overflow, {"type": "close"} once closed, or None
        after `timeout` seconds without one."""
        if self.closed:
            return {"type": "close"}
        if not self.events and not self.resync:
            self.ready.clear()
            try:
                await asyncio.wait_for(self.ready.wait(), timeout)
            except TimeoutError:
                return None
        if self.closed:
            return {"type": "close"}
        if self.resync:
            self.resync = False
            self.events.clear()
            return {"type": "resync"}
        return self.events.popleft()


def make_ref_key(token: str) -> bytes:
    return hashlib.sha256(b"moodstream-dashboard-ref\0" + token.encode()).digest()


def opaque_ref(key: bytes, kind: str, identifier: str) -> str:
    """A stable id for URLs that reveals nothing about `identifier` without the key."""
    return hmac.new(key, f"{kind}\0{identifier}".encode(), hashlib.sha256).hexdigest()[:20]


class ScoreFeed:
    """Follows the configured participants and keeps every session they have in memory."""

    def __init__(self, config: FeedConfig) -> None:
        self.config = config
        self.key = config.ref_key or make_ref_key(config.token)
        self.sessions: dict[str, FollowedSession] = {}
        self.sessions_by_ref: dict[str, FollowedSession] = {}
        self.participants = {p: ParticipantState(p, self.ref("participant", p)) for p in config.participants}
        self.participants_by_ref = {state.ref: state for state in self.participants.values()}
        self.server_state = SERVER_CONNECTING
        self.server_message = ""
        self.server_details = ""
        self.server_since = time.time()
        self.outages: list[list[float]] = []  # [from, to] spans the server was unreachable (to = inf: still)
        self.models = {m.model_version: m for m in config.models}
        self._published_states: dict[str, str] = {}
        self.expected: dict[str, tuple[str, str]] = {}  # ref -> (session id, participant id), no score yet
        self.listeners: set[Listener] = set()
        self._channel: grpc.aio.Channel | None = None
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        self._logged: dict[str, str] = {}
        self.discovering = not config.participants
        self.directory_state = ""   # "" while fine; otherwise why the session directory cannot be read
        self.listed: dict[str, pb.SessionSummary] = {}  # the directory's latest answer, by session id

    # ------------------------------------------------------------ ids
    def ref(self, kind: str, identifier: str) -> str:
        return opaque_ref(self.key, kind, identifier)

    def session_ref(self, session_id: str) -> str:
        return self.ref("session", session_id)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._closing = False
        self._channel = open_channel(self.config.server, tls=self.config.tls, tls_ca=self.config.tls_ca,
                                     asynchronous=True)
        self._stub = pb_grpc.ScreeningStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._tasks = [asyncio.create_task(self._follow(p), name=f"follow-{p}") for p in self.participants]
        self._tasks.append(asyncio.create_task(self._watch_health(), name="server-health"))
        if self.discovering:
            self._tasks.append(asyncio.create_task(self._discover(), name="session-directory"))
        self._tasks.append(asyncio.create_task(self._watch_sessions(), name="session-states"))

    async def stop(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return bearer_metadata(self.config.token)

    async def model_speech_settings(self) -> dict | None:
        """The speech settings the served model was trained with (GetModelInfo); None when the model records
        none or the server cannot be asked now."""
        if self._stub is None:
            return None
        try:
            reply = await self._stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=self.metadata, timeout=5)
        except grpc.RpcError as error:
            log.info("speech settings for the record page: the server's model cannot be asked (%s)", error.code().name)
            return None
        return speech_settings_of(reply)

    # ------------------------------------------------------------ listeners
    def listen(self) -> Listener:
        listener = Listener()
        self.listeners.add(listener)
        return listener

    def unlisten(self, listener: Listener) -> None:
        self.listeners.discard(listener)

    def close_listeners(self) -> None:
        """End every open event stream (the web server is shutting down)."""
        for listener in list(self.listeners):
            listener.close()

    def _publish(self, event: dict) -> None:
        for listener in list(self.listeners):
            listener.push(event)

    # ------------------------------------------------------------ views
    def connection(self) -> dict:
        token_problem = next((p.message for p in self.participants.values() if p.state == TOKEN_REJECTED),
                             self.directory_state)
        return {
            "server": {"target": self.config.server, "state": self.server_state, "message": self.server_message,
                       "details": self.server_details, "since": self.server_since,
                       "tls": bool(self.config.tls or self.config.tls_ca)},
            "token_error": token_problem,
            "participants": [p.to_dict() for p in self.participants.values()],
            "discovering": self.discovering,
        }

    def settings(self) -> dict:
        return {"idle_seconds": self.config.idle_seconds, "gap_seconds": self.config.gap_seconds,
                "late_seconds": self.config.late_seconds, "notice": SCREENING_NOTICE, "now": time.time()}

    def model(self, model_version: str, threshold: float) -> dict:
        """What the probability of `model_version` means (the threshold comes with every score)."""
        description = self.models.get(model_version)
        if description is None:
            return {"model_version": model_version, "threshold": threshold, "described": False, "flag": "",
                    "demo_model": False,
                    "meaning": f"This dashboard was not told what model {model_version}'s probability estimates; "
                               "start it with --checkpoint pointing at that model's folder to show it here."}
        return description.to_dict() | {"threshold": threshold}

    def summary(self, session: FollowedSession) -> dict:
        summary = session.summary(time.time(), self.config.idle_seconds)
        return summary | {"model": self.model(summary["model_version"], summary["threshold"]),
                          "on_overview": self.on_overview(session)}

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

    def _set_participant(self, participant_id: str, state: str, message: str = "", details: str = "") -> None:
        current = self.participants[participant_id]
        if (current.state, current.message, current.details) == (state, message, details):
            return
        current.state, current.message, current.details, current.since = state, message, details, time.time()
        if state in (TOKEN_REJECTED, NOT_PERMITTED, FAILED, RECONNECTING) and message:
            logged = f"{message} ({details})" if details else message
            if self._logged.get(participant_id) != logged:
                self._logged[participant_id] = logged
                log.warning("participant %s: %s: %s", participant_id, state, logged)
        elif self._logged.pop(participant_id, None) is not None:
            log.info("participant %s: %s again", participant_id, state)
        self._publish({"type": "connection", "connection": self.connection()})

    def _set_server(self, state: str, message: str = "", details: str = "") -> None:
        if (self.server_state, self.server_message, self.server_details) == (state, message, details):
            return
        now = time.time()
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

    # ------------------------------------------------------------ background tasks
    async def _follow(self, participant_id: str) -> None:
        subscription = Subscription(self._stub, participant_id, self.metadata,
                                    on_break=lambda error: self._classify(participant_id, error))
        confirm = asyncio.create_task(self._confirm(participant_id, subscription), name=f"confirm-{participant_id}")
        try:
            async for update in subscription:
                self._set_participant(participant_id, FOLLOWING)
                self.apply(update)
        finally:
            confirm.cancel()

    async def _confirm(self, participant_id: str, subscription: Subscription) -> None:
        """Mark a quiet subscription as following once its call has stayed open on a reachable server.

        The server sends nothing (not even headers) until there is an update, but it refuses a bad
        token or a participant outside the token's read scope at once; so a call still open a
        second later, on a server whose health check answers, has been accepted.
        """
        confirmed = None
        while True:
            await asyncio.sleep(1.0)
            call = subscription.call
            if (call is not None and call is not confirmed and not call.done()
                    and time.monotonic() - subscription.call_started >= 1.0
                    and self.server_state == SERVER_CONNECTED):
                confirmed = call
                self._set_participant(participant_id, FOLLOWING)

    def _classify(self, participant_id: str, error: grpc.aio.AioRpcError | None) -> float | None:
        """Set the participant's state for a Subscribe that broke off; seconds until it resumes (None: the
        subscription's backoff)."""
        if error is None:
            # The server ended the stream (it is shutting down): resume from the offset right away.
            self._set_participant(participant_id, RECONNECTING, "the server closed the stream")
            return 0.2
        code = error.code()
        details = f"{code.name}: {error.details()}" if error.details() else code.name
        if code == grpc.StatusCode.UNAUTHENTICATED:
            self._set_participant(participant_id, TOKEN_REJECTED,
                                  "the server rejected the dashboard's token; start the dashboard with a valid "
                                  "read token", details)
            return 30.0
        if code == grpc.StatusCode.PERMISSION_DENIED:
            self._set_participant(participant_id, NOT_PERMITTED,
                                  f"this dashboard's token may not read participant {participant_id}", details)
            return 60.0
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            self._set_participant(participant_id, FAILED, "the server refused the subscription", details)
            return 60.0
        plain = ("the scoring server cannot be reached" if code == grpc.StatusCode.UNAVAILABLE
                 else "the subscription broke off")
        self._set_participant(participant_id, RECONNECTING, plain + "; retrying", details)
        return None

    def follow(self, participant_id: str) -> bool:
        """Start following a participant found in the session directory; False if already followed."""
        if participant_id in self.participants or not is_id(participant_id):
            return False
        state = ParticipantState(participant_id, self.ref("participant", participant_id))
        self.participants[participant_id] = state
        self.participants_by_ref[state.ref] = state
        self._tasks.append(asyncio.create_task(self._follow(participant_id), name=f"follow-{participant_id}"))
        log.info("following participant %s (a recent session in the session directory)", participant_id)
        self._publish({"type": "connection", "connection": self.connection()})
        return True

    async def recent_sessions(self) -> dict[str, pb.SessionSummary]:
        """Every session the directory lists with a score in the last recent_seconds, by session id."""
        found, token = {}, ""
        while True:
            request = pb.ListSessionsRequest(page_size=1000, page_token=token,
                                             active_after_unix=time.time() - self.config.recent_seconds)
            page = await self._stub.ListSessions(request, metadata=self.metadata, timeout=10)
            found.update((session.session_id, session) for session in page.sessions)
            token = page.next_page_token
            if not token:
                return found

    def take_directory(self, listed: dict[str, pb.SessionSummary]) -> None:
        """Adopt a directory answer: follow its participants, take its states, and publish each row
        that joined or left the overview."""
        for participant_id in sorted({entry.participant_id for entry in listed.values()}):
            self.follow(participant_id)
        moved = set(listed) ^ set(self.listed)
        self.listed = listed
        for session_id, entry in listed.items():
            session = self.sessions.get(session_id)
            if session is None:
                continue  # its scores are still on their way (Subscribe replays them)
            session.ended_unix = entry.state_since_unix if entry.state == pb.SESSION_STATE_ENDED else None
            session.interrupted_unix = (entry.state_since_unix if entry.state == pb.SESSION_STATE_INTERRUPTED
                                        else None)
        for session_id in sorted(moved):
            if session_id in self.sessions:
                self._publish_session(self.sessions[session_id], always=True)

    async def _discover(self) -> None:
        while not self._closing:
            try:
                self.take_directory(await self.recent_sessions())
                problem = ""
            except grpc.aio.AioRpcError as error:
                code, details = error.code(), error.details() or error.code().name
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    problem = (f"the server rejected the dashboard's token ({details}); start the dashboard "
                               "with a valid read token")
                elif code == grpc.StatusCode.UNIMPLEMENTED:
                    problem = ("this server has no session directory (ListSessions); name the participants "
                               "to follow with --participant")
                elif code == grpc.StatusCode.PERMISSION_DENIED:
                    problem = f"this dashboard's token may not read any participant ({details})"
                else:
                    problem = ""  # unreachable or restarting: the health check reports it; try again
            if problem != self.directory_state:
                if problem:
                    log.warning("session directory: %s", problem)
                self.directory_state = problem
                self._publish({"type": "connection", "connection": self.connection()})
            await asyncio.sleep(self.config.discover_interval)

    async def _watch_health(self) -> None:
        while not self._closing:
            try:
                reply = await self._health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                                                 timeout=max(1.0, self.config.health_interval))
            except grpc.aio.AioRpcError as error:
                details = f"{error.code().name}: {error.details()}" if error.details() else error.code().name
                if error.code() == grpc.StatusCode.UNAVAILABLE:
                    self._set_server(SERVER_UNREACHABLE, f"the scoring server {self.config.server} cannot be "
                                     "reached", details)
                else:
                    self._set_server(SERVER_UNREACHABLE, f"the scoring server {self.config.server} does not "
                                     "answer its health check", details)
            else:
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    self._set_server(SERVER_CONNECTED)
                else:
                    self._set_server(SERVER_NOT_SERVING, "the server is starting up or shutting down")
            await asyncio.sleep(self.config.health_interval)

    async def _watch_sessions(self) -> None:
        """Keep each session's state current: finished or interrupted (GetScore), idle (no score)."""
        while not self._closing:
            await asyncio.sleep(self.config.health_interval)
            if self.server_state != SERVER_CONNECTED:
                continue
            now = time.time()
            for session in list(self.sessions.values()):
                if session.ended_unix is None and session.next_state_check <= now \
                        and now - session.latest.time_unix >= self.config.health_interval:
                    await self._check_state(session, now)
                self._publish_session(session)

    def _publish_session(self, session: FollowedSession, always: bool = False) -> None:
        """Tell the pages a session's new summary: when its state changed, or always."""
        summary = self.summary(session)
        if always or self._published_states.get(session.ref) != summary["state"]:
            self._published_states[session.ref] = summary["state"]
            self._publish({"type": "session", "participant_id": session.participant_id,
                           "session_ref": session.ref, "session": summary})

    async def _check_state(self, session: FollowedSession, now: float) -> None:
        # Quiet sessions are asked often at first, then less and less (old history: every 5 min).
        age = now - session.latest.time_unix
        session.next_state_check = now + min(300.0, max(self.config.health_interval, age / 10))
        try:
            reply = await self._stub.GetScore(pb.GetScoreRequest(session_id=session.session_id),
                                              metadata=self.metadata, timeout=max(1.0, self.config.health_interval))
        except grpc.aio.AioRpcError as error:
            log.debug("session state of %s unknown: %s", session.session_id, error.code().name)
            return
        session.ended_unix = (reply.session_state_since_unix
                              if reply.session_state == pb.SESSION_STATE_ENDED else None)
        session.interrupted_unix = (reply.session_state_since_unix
                                    if reply.session_state == pb.SESSION_STATE_INTERRUPTED else None)


def participants_from(values: Iterable[str] | None, participants_file: str | Path | None) -> list[str]:
    participants = [check_participant_id(v) for v in values or ()]
    if participants_file:
        listed = read_participants_file(participants_file)
        if not listed:
            raise ValueError(f"participants file {participants_file} names no participant; leave it out to "
                             "follow whoever has a recent session")
        participants.extend(listed)
    return participants
