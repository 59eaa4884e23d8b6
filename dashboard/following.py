"""Following the scoring server over its public gRPC API, into the dashboard's view.

One `Subscribe(participant_id, after_offset)` call per followed participant replays that participant's
history and then stays open for live updates; a dropped call resumes from the last offset it saw, so
nothing is missed or shown twice; HTTP/2 keepalive ends a call that a dead connection left hanging, so it
resumes too. A health check every few seconds gives the server's connection state, and GetScore on each
quiet session tells whether it finished (End received) or was interrupted (its stream closed without End).

Without a list of participants, the follower asks the session directory (ListSessions) every few seconds
for the sessions the token may read that had a score within the recent window, and follows each
participant found there.

What "now" is for the view (a quiet session's age, the directory's recent window) comes from the view's
clock; the pauses between polls and the age of a gRPC call are the event loop's own real time, since they
pace calls on a real connection.
"""
from __future__ import annotations

import asyncio
import logging
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from moodstream.dashboard.feed_config import FeedConfig
from moodstream.dashboard.view_state import (FAILED, FOLLOWING, NOT_PERMITTED, RECONNECTING, SERVER_CONNECTED,
                                             SERVER_NOT_SERVING, SERVER_UNREACHABLE, TOKEN_REJECTED, FeedView,
                                             FollowedSession)
from moodstream.v1 import moodstream_pb2 as pb
from moodstream.v1 import moodstream_pb2_grpc as pb_grpc
from moodstream.wire import Subscription, bearer_metadata, open_channel, speech_settings_of

log = logging.getLogger("moodstream.dashboard")

MODEL_INFO_SECONDS = 30.0
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Screening"].full_name


class ServerFollower:
    """The background calls to the scoring server that keep a FeedView current."""

    def __init__(self, config: FeedConfig, view: FeedView) -> None:
        self.config = config
        self.view = view
        self.clock = view.clock
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.ScreeningStub | None = None
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        self._next_model_info = 0.0  # monotonic time GetModelInfo is next asked
        self.directory_answers = 0  # session directory answers taken so far: tells a caller a round went by

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._closing = False
        self._channel = open_channel(self.config.server, tls=self.config.tls, tls_ca=self.config.tls_ca,
                                     asynchronous=True)
        self._stub = pb_grpc.ScreeningStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._tasks = [asyncio.create_task(self._follow(p), name=f"follow-{p}") for p in self.view.participants]
        self._tasks.append(asyncio.create_task(self._watch_health(), name="server-health"))
        if self.view.discovering:
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

    async def _ask_model_info(self) -> None:
        """Keep the view's models current (threshold, meaning, evidence rule), so pages show them before any
        score: asked once the server answers, then every MODEL_INFO_SECONDS, since a rollout changes them."""
        now = time.monotonic()
        if now < self._next_model_info:
            return
        try:
            reply = await self._stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=self.metadata,
                                                  timeout=max(1.0, self.config.health_interval))
        except grpc.aio.AioRpcError as error:
            # A rejected token shows on the subscriptions and the session directory; ask again soon.
            log.debug("model info unavailable: %s", error.code().name)
            self._next_model_info = now + self.config.health_interval
            return
        self._next_model_info = now + MODEL_INFO_SECONDS
        self.view.take_model_info(reply)

    # ------------------------------------------------------------ participants
    async def _follow(self, participant_id: str) -> None:
        subscription = Subscription(self._stub, participant_id, self.metadata,
                                    on_break=lambda error: self._classify(participant_id, error))
        confirm = asyncio.create_task(self._confirm(participant_id, subscription), name=f"confirm-{participant_id}")
        try:
            async for update in subscription:
                self.view.set_participant(participant_id, FOLLOWING)
                self.view.apply(update)
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
                    and self.view.server_state == SERVER_CONNECTED):
                confirmed = call
                self.view.set_participant(participant_id, FOLLOWING)

    def _classify(self, participant_id: str, error: grpc.aio.AioRpcError | None) -> float | None:
        """Set the participant's state for a Subscribe that broke off; seconds until it resumes (None: the
        subscription's backoff)."""
        if error is None:
            # The server ended the stream (it is shutting down): resume from the offset right away.
            self.view.set_participant(participant_id, RECONNECTING, "the server closed the stream")
            return 0.2
        code = error.code()
        details = f"{code.name}: {error.details()}" if error.details() else code.name
        if code == grpc.StatusCode.UNAUTHENTICATED:
            self.view.set_participant(participant_id, TOKEN_REJECTED,
                                      "the server rejected the dashboard's token; start the dashboard with a "
                                      "valid read token", details)
            return 30.0
        if code == grpc.StatusCode.PERMISSION_DENIED:
            self.view.set_participant(participant_id, NOT_PERMITTED,
                                      f"this dashboard's token may not read participant {participant_id}", details)
            return 60.0
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            self.view.set_participant(participant_id, FAILED, "the server refused the subscription", details)
            return 60.0
        plain = ("the scoring server cannot be reached" if code == grpc.StatusCode.UNAVAILABLE
                 else "the subscription broke off")
        self.view.set_participant(participant_id, RECONNECTING, plain + "; retrying", details)
        return None

    def follow(self, participant_id: str) -> bool:
        """Start following a participant found in the session directory; False if already followed."""
        if not self.view.add_participant(participant_id):
            return False
        self._tasks.append(asyncio.create_task(self._follow(participant_id), name=f"follow-{participant_id}"))
        log.info("following participant %s (a recent session in the session directory)", participant_id)
        return True

    # ------------------------------------------------------------ session directory
    async def recent_sessions(self) -> dict[str, pb.SessionSummary]:
        """Every session the directory lists with a score in the last recent_seconds, by session id."""
        found, token = {}, ""
        while True:
            request = pb.ListSessionsRequest(page_size=1000, page_token=token,
                                             active_after_unix=self.clock() - self.config.recent_seconds)
            page = await self._stub.ListSessions(request, metadata=self.metadata, timeout=10)
            found.update((session.session_id, session) for session in page.sessions)
            token = page.next_page_token
            if not token:
                return found

    def take_directory(self, listed: dict[str, pb.SessionSummary]) -> None:
        """Adopt a directory answer: follow its participants, then show its sessions and their states."""
        for participant_id in sorted({entry.participant_id for entry in listed.values()}):
            self.follow(participant_id)
        self.view.take_listing(listed)
        self.directory_answers += 1

    async def _discover(self) -> None:
        while not self._closing:
            try:
                self.take_directory(await self.recent_sessions())
                problem, rejected = "", False
            except grpc.aio.AioRpcError as error:
                code, details = error.code(), error.details() or error.code().name
                rejected = code == grpc.StatusCode.UNAUTHENTICATED
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
            self.view.set_directory_problem(problem, token_rejected=rejected)
            await asyncio.sleep(self.config.discover_interval)

    # ------------------------------------------------------------ server and session states
    async def _watch_health(self) -> None:
        while not self._closing:
            try:
                reply = await self._health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                                                 timeout=max(1.0, self.config.health_interval))
            except grpc.aio.AioRpcError as error:
                details = f"{error.code().name}: {error.details()}" if error.details() else error.code().name
                self._next_model_info = 0.0  # a server back from an outage may hold other models: ask again
                if error.code() == grpc.StatusCode.UNAVAILABLE:
                    self.view.set_server(SERVER_UNREACHABLE, f"the scoring server {self.config.server} cannot be "
                                         "reached", details)
                else:
                    self.view.set_server(SERVER_UNREACHABLE, f"the scoring server {self.config.server} does not "
                                         "answer its health check", details)
            else:
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    self.view.set_server(SERVER_CONNECTED)
                    await self._ask_model_info()
                else:
                    self.view.set_server(SERVER_NOT_SERVING, "the server is starting up or shutting down")
            await asyncio.sleep(self.config.health_interval)

    async def _watch_sessions(self) -> None:
        """Keep each session's state current: finished or interrupted (GetScore), idle (no score)."""
        while not self._closing:
            await asyncio.sleep(self.config.health_interval)
            if self.view.server_state != SERVER_CONNECTED:
                continue
            now = self.clock()
            for session in list(self.view.sessions.values()):
                if session.ended_unix is None and session.next_state_check <= now \
                        and now - session.latest.time_unix >= self.config.health_interval:
                    await self._check_state(session, now)
                self.view.publish_session(session)

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
        session.take_server_state(reply.session_state, reply.session_state_since_unix)
