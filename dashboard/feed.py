"""The dashboard's view of the score streams, fed only through the public gRPC API.

Three parts, tied together by ScoreFeed:
- view_state.py: what the pages show, built from the ScoreUpdates and connection states;
- following.py: the calls to the scoring server (Subscribe per participant, the session directory,
  the health check, each quiet session's state) that keep that view current;
- fanout.py: the events of each change, to every open event stream.

Everything here runs on one asyncio loop (the web server's); listeners get events synchronously in the
order the feed applied them.
"""
from __future__ import annotations

import time

from moodstream.dashboard.fanout import Fanout, Listener
from moodstream.dashboard.feed_config import (FeedConfig, check_participant_id, participants_from,
                                              read_participants_file)
from moodstream.dashboard.following import ServerFollower
from moodstream.dashboard.view_state import (CAUSE_DELAYED, CAUSE_NO_SPEECH, CAUSE_SERVER_DOWN, Clock, FeedView,
                                             ParticipantState)

__all__ = ["CAUSE_DELAYED", "CAUSE_NO_SPEECH", "CAUSE_SERVER_DOWN", "Clock", "FeedConfig", "Listener",
           "ScoreFeed", "check_participant_id", "participants_from", "read_participants_file"]


class ScoreFeed:
    """Follows the configured participants and keeps every session they have in memory.

    `clock` is the wall clock the view compares with the server's score times (idle, recent, since);
    tests pass one they can move.
    """

    def __init__(self, config: FeedConfig, clock: Clock = time.time) -> None:
        self.config = config
        self.fanout = Fanout()
        self.view = FeedView(config, self.fanout.publish, clock)
        self.following = ServerFollower(config, self.view)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.following.start()

    async def stop(self) -> None:
        await self.following.stop()

    async def model_speech_settings(self) -> dict | None:
        return await self.following.model_speech_settings()

    # ------------------------------------------------------------ event streams
    def listen(self) -> Listener:
        return self.fanout.listen()

    def unlisten(self, listener: Listener) -> None:
        self.fanout.unlisten(listener)

    def close_listeners(self) -> None:
        self.fanout.close_listeners()

    # ------------------------------------------------------------ views
    @property
    def participants_by_ref(self) -> dict[str, ParticipantState]:
        return self.view.participants_by_ref

    def session_ref(self, session_id: str) -> str:
        return self.view.session_ref(session_id)

    def expect_session(self, session_id: str, participant_id: str) -> str:
        return self.view.expect_session(session_id, participant_id)

    def connection(self) -> dict:
        return self.view.connection()

    def settings(self) -> dict:
        return self.view.settings()

    def overview(self) -> dict:
        return self.view.overview()

    def session_detail(self, ref: str) -> dict | None:
        return self.view.session_detail(ref)

    def participant_detail(self, ref: str) -> dict | None:
        return self.view.participant_detail(ref)
