"""`moodstream export`: every session's segment vectors and their context, out of Redis (single or Cluster).

The stored model versions come from moodstream.server.session_directory, each version's sessions from
its SessionStore's session directory, their vectors from each session's vectors hash and their
per-segment times and scores from its score stream; moodstream.field_export writes them. Nothing is
changed in Redis.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from moodstream.field_export import ExportedSession
from moodstream.server.session_directory import SessionDirectory
from moodstream.server.session_listing import MAX_PAGE_SIZE
from moodstream.server.store import MAX_READ_COUNT, SessionStore
from moodstream.server.store_records import SessionSummary


async def stored_versions(client) -> set[str]:
    return set(await SessionDirectory(client).stored_model_versions(scan=True))


async def collect_sessions(client, participants: list[str] | None = None, since: float = 0.0,
                           progress=None, model_versions: list[str] | None = None) -> list[ExportedSession]:
    """Every session (of the participants, active at or after `since`; 0 = all; under `model_versions`,
    None = every version) with its segments."""
    versions = await stored_versions(client)
    if model_versions is not None:
        versions &= set(model_versions)
    found: list[tuple[SessionStore, SessionSummary]] = []
    for version in sorted(versions):
        store = SessionStore(client, model_version=version)
        cursor = None
        while True:
            page, cursor = await store.list_sessions(participants, active_after=since, page_size=MAX_PAGE_SIZE,
                                                     cursor=cursor)
            found += [(store, summary) for summary in page]
            if cursor is None:
                break
    if progress is not None:
        progress.reset(total=len(found))
    sessions = []
    for store, summary in sorted(found, key=lambda item: (item[1].participant_id, item[1].started_unix)):
        sessions.append(await _session(store, summary))
        if progress is not None:
            progress.update(1)
    return sessions


async def _updates(store: SessionStore, summary: SessionSummary) -> dict[int, dict]:
    by_seq, offset = {}, ""
    while True:
        batch = await store.read_updates(session_id=summary.session_id, participant_id=summary.participant_id,
                                         after_offset=offset, count=MAX_READ_COUNT)
        for update in batch.updates:
            by_seq[int(update["seq"])] = update
        if not batch.updates:
            return by_seq
        offset = batch.next_offset


async def _session(store: SessionStore, summary: SessionSummary) -> ExportedSession:
    vectors = await store.vectors_by_seq(summary.session_id, summary.participant_id)
    updates = await _updates(store, summary)
    latest = summary.latest or {}
    session = ExportedSession(
        session_id=summary.session_id, participant_id=summary.participant_id, device_id=summary.device_id,
        model_version=summary.model_version, started_unix=summary.started_unix, ended_unix=summary.state.ended_at,
        state=summary.state.name, segments=summary.segments, speech_seconds=summary.speech_seconds,
        probability=_number(latest.get("probability")))
    for seq, raw in vectors.items():
        update = updates.get(seq, {})
        session.seqs.append(seq)
        session.vectors.append(np.frombuffer(raw, dtype="<f4"))
        session.start_seconds.append(_number(update.get("start_seconds")))
        session.cumulative_speech.append(_number(update.get("speech_seconds")))
        session.times.append(_number(update.get("time_unix")))
        session.probabilities.append(_number(update.get("probability")))
    return session


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def parse_since(text: str) -> float:
    """Unix seconds, or an ISO 8601 date or date-time (UTC unless it names its offset)."""
    import datetime

    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"--since {text!r} is neither Unix seconds nor an ISO 8601 date such as 2026-11-01 "
                             "or 2026-11-01T08:00") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        return moment.timestamp()
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"--since {text!r} must be a Unix time >= 0")
    return value


def hours_of_speech(sessions: Iterable[ExportedSession]) -> float:
    return sum(s.speech_seconds for s in sessions) / 3600
