"""The session directory's pages: ListSessions filters, page tokens, and the merge across model versions."""
from __future__ import annotations

import base64
import hashlib
import json
import math

import grpc

from moodstream.ids import ID_PATTERN
from moodstream.server.rpc_errors import StreamAbort
from moodstream.server.store_records import ENDED, INTERRUPTED, OPEN, SessionCursor, SessionSummary
from moodstream.v1 import moodstream_pb2 as pb
from moodstream.wire import score_from_dict


DEFAULT_PAGE_SIZE = 100
SESSION_STATE_MESSAGES = {OPEN: pb.SESSION_STATE_OPEN, ENDED: pb.SESSION_STATE_ENDED,
                          INTERRUPTED: pb.SESSION_STATE_INTERRUPTED}
SESSION_STATE_NAMES = {number: name for name, number in SESSION_STATE_MESSAGES.items()}


def summary_message(summary: SessionSummary) -> pb.SessionSummary:
    message = pb.SessionSummary(
        session_id=summary.session_id, participant_id=summary.participant_id, device_id=summary.device_id,
        model_version=summary.model_version,
        state=SESSION_STATE_MESSAGES[summary.state.name], state_since_unix=summary.state.since or 0.0,
        started_unix=summary.started_unix, last_update_unix=summary.last_update_unix, segments=summary.segments,
        speech_seconds=summary.speech_seconds)
    if summary.latest is not None:
        message.latest.CopyFrom(score_from_dict(summary.latest))
    return message


def _query_fingerprint(request: pb.ListSessionsRequest) -> str:
    query = [request.participant_id, sorted(set(request.states)), request.active_after_unix,
             request.active_before_unix]
    return hashlib.sha256(json.dumps(query).encode()).hexdigest()[:16]


def encode_page_token(cursor: SessionCursor | None, request: pb.ListSessionsRequest) -> str:
    if cursor is None:
        return ""
    payload = json.dumps([_query_fingerprint(request), *cursor], separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_page_token(token: str, request: pb.ListSessionsRequest) -> SessionCursor | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        fingerprint, participant, started, session = json.loads(raw)
        cursor = SessionCursor(participant, float(started), session)
        valid = ID_PATTERN.fullmatch(participant) and ID_PATTERN.fullmatch(session) and math.isfinite(started)
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT,
                          "page_token is malformed: pass the next_page_token of the previous page as it was")
    if fingerprint != _query_fingerprint(request):
        raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT,
                          "page_token belongs to a query with other filters: keep the filters while paging")
    return cursor


def time_bound(name: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise StreamAbort(grpc.StatusCode.INVALID_ARGUMENT, f"{name} must be a Unix time >= 0 (0 = unbounded)")
    return value


def merge_version_pages(pages: list[tuple[list[SessionSummary], SessionCursor | None]],
                        page_size: int) -> tuple[list[SessionSummary], SessionCursor | None]:
    """One directory page from each model version's page, all read with the same cursor: merged in the
    directory's order (participant, newest start, session id descending); the first page_size are the page."""
    found = [summary for page, _ in pages for summary in page]
    more = any(next_cursor is not None for _, next_cursor in pages)
    found.sort(key=lambda summary: (summary.started_unix, summary.session_id), reverse=True)
    found.sort(key=lambda summary: summary.participant_id)
    more = more or len(found) > page_size
    page = found[:page_size]
    if not more or not page:
        return page, None
    last = page[-1]
    return page, SessionCursor(last.participant_id, last.started_unix, last.session_id)
