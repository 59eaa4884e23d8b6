"""Paging through one model version's sessions (ListSessions): participant by participant, newest first.

Reads the version's participant directory and each participant's session directory (see
moodstream.server.store_keys), and prunes the entries of sessions whose record expired on the way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from moodstream.ids import ID_PATTERN
from moodstream.server.redis_connection import AnyRedis
from moodstream.server.store_keys import SessionKeys, directory_key, session_index_key
from moodstream.server.store_records import SESSION_STATES, SessionCursor, SessionState, SessionSummary
from moodstream.server.store_scripts import PRUNE_INDEX_SCRIPT
from moodstream.server.store_values import as_text, check_pattern, stored_score

__all__ = ["DIRECTORY_BATCH", "MAX_PAGE_SIZE", "SessionListing"]

MAX_PAGE_SIZE = 1000
DIRECTORY_BATCH = 200


class SessionListing:
    """The sessions of one model version, a page at a time.

    Args:
        client: from connect(); the caller closes it.
        model_version: whose sessions.
        keys: the keys of a session by (participant id, session id), checking both ids.
    """

    def __init__(self, client: AnyRedis, model_version: str, keys: Callable[[str, str], SessionKeys]) -> None:
        self.client = client
        self.model_version = model_version
        self.keys = keys
        self._prune_index = client.register_script(PRUNE_INDEX_SCRIPT)

    async def page(
        self,
        participants: list[str] | None,
        *,
        states: Iterable[str] | None = None,
        active_after: float = 0.0,
        active_before: float = 0.0,
        page_size: int = 100,
        cursor: SessionCursor | None = None,
    ) -> tuple[list[SessionSummary], SessionCursor | None]:
        """One page of sessions and the cursor of the next page (None on the last).

        participants: whose sessions (None = every participant in the
        directory). Order: participant id, then newest start first.
        states: only sessions in these states (OPEN, ENDED, INTERRUPTED;
        None or empty = every state). active_after / active_before (Unix
        seconds, 0 = unbounded): sessions whose latest score is at or after
        active_after and that started at or before active_before.
        """
        wanted = set(states or SESSION_STATES)
        if not wanted <= set(SESSION_STATES):
            raise ValueError(f"states must be among {SESSION_STATES}, not {sorted(wanted)!r}")
        if not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be an int in 1..{MAX_PAGE_SIZE}, not {page_size!r}")
        found: list[SessionSummary] = []
        async for participant in self._directory_from(participants, cursor.participant_id if cursor else None):
            after_cursor = cursor if cursor and cursor.participant_id == participant else None
            async for summary in self._participant_sessions(participant, after_cursor, active_before):
                if summary.state.name not in wanted:
                    continue
                if active_after and summary.last_update_unix < active_after:
                    continue
                if len(found) == page_size:
                    last = found[-1]
                    return found, SessionCursor(last.participant_id, last.started_unix, last.session_id)
                found.append(summary)
        return found, None

    async def _directory_from(self, participants: list[str] | None, first: str | None):
        """Participant ids in lexical order, from `first` (inclusive) on."""
        if participants is not None:
            for participant in sorted(set(participants)):
                check_pattern("participant_id", participant, ID_PATTERN)
                if first is None or participant >= first:
                    yield participant
            return
        start = f"[{first}" if first else "-"
        directory = directory_key(self.model_version)
        while True:
            batch = [as_text(member) for member in
                     await self.client.zrangebylex(directory, start, "+", start=0, num=DIRECTORY_BATCH)]
            for participant in batch:
                yield participant
            if len(batch) < DIRECTORY_BATCH:
                return
            start = f"({batch[-1]}"

    async def _participant_sessions(self, participant: str, cursor: SessionCursor | None, active_before: float):
        """A participant's sessions, newest start first, strictly after `cursor`."""
        index = session_index_key(participant, self.model_version)
        newest = "+inf"
        if active_before:
            newest = repr(active_before)
        if cursor is not None:
            newest = repr(min(cursor.started_unix, active_before or math.inf))
        offset = 0
        while True:
            entries = await self.client.zrevrangebyscore(index, newest, "-inf", start=offset, num=DIRECTORY_BATCH,
                                                         withscores=True)
            candidates = []
            for member, started in entries:
                session_id = as_text(member)
                if cursor is not None and (started, session_id) >= (cursor.started_unix, cursor.session_id):
                    continue  # at or before the cursor in this order (ties on start: session id descending)
                candidates.append((session_id, started))
            summaries, pruned = await self._summaries(participant, index, candidates)
            for summary in summaries:
                yield summary
            if len(entries) < DIRECTORY_BATCH:
                return
            offset += len(entries) - pruned  # pruned entries left the set: the rest moved up

    async def _summaries(self, participant: str, index: str, candidates) -> tuple[list[SessionSummary], int]:
        """Summaries of (session id, start) candidates, and how many stale entries were pruned."""
        fields = ("device", "ended_at", "interrupted_at", "segments", "speech_seconds", "latest", "latest_offset")
        if not candidates:
            return [], 0
        pipeline = self.client.pipeline(transaction=False)  # one round trip per batch, on one slot
        for session_id, _ in candidates:
            pipeline.hmget(self.keys(participant, session_id).session, fields)
        replies = await pipeline.execute()
        summaries, gone = [], []
        for (session_id, started), reply in zip(candidates, replies):
            device, ended_at, interrupted_at, segments, speech, latest, offset = reply
            if device is None:  # every record has a device field (maybe empty): the record is gone
                gone.append(session_id)
                continue
            score = stored_score(latest, offset)
            summaries.append(SessionSummary(
                session_id=session_id, participant_id=participant, device_id=as_text(device or b""),
                model_version=self.model_version, started_unix=started,
                state=SessionState(float(ended_at) if ended_at else None,
                                   float(interrupted_at) if interrupted_at else None),
                segments=int(segments or 0),
                speech_seconds=float(speech or 0.0),
                last_update_unix=float(score["time_unix"]) if score else started, latest=score))
        pruned = 0
        if gone:
            records = [self.keys(participant, session_id).session for session_id in gone]
            pruned = int(await self._prune_index([index, *records], gone))
        return summaries, pruned
