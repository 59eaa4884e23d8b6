"""Checks and conversions of the values the session store writes and reads: ids, seqs, scores, offsets."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from moodstream.ids import DEVICE_PATTERN
from moodstream.v1 import moodstream_pb2 as pb
from moodstream.wire import INTERVAL_FIELDS

__all__ = [
    "MAX_SEQ",
    "MAX_STREAM_ID_PART",
    "MODEL_VERSION_PATTERN",
    "OFFSET_PATTERN",
    "REQUIRED_SCORE_FIELDS",
    "SCORE_FIELDS",
    "UNSTORED_SCORE_FIELDS",
    "as_text",
    "check_pattern",
    "check_seq",
    "checked_score_update",
    "decode_entry",
    "finite",
    "missed_removed_entries",
    "nonempty_bytes",
    "optional_int",
    "parse_offset",
    "stored_score",
    "stream_entries",
]

# Lua numbers are doubles: seqs above 2**53 would silently lose precision.
MAX_SEQ = 2**53 - 1
MAX_STREAM_ID_PART = 2**64 - 1

MODEL_VERSION_PATTERN = re.compile(r"[A-Za-z0-9_.+-]{1,128}")
OFFSET_PATTERN = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")

# A stored score holds ScoreUpdate's fields but these: the offset is its stream entry id (added on read),
# and the notice and session state are the server's to add when it answers.
UNSTORED_SCORE_FIELDS = frozenset({"offset", "notice", "session_state", "session_state_since_unix"})
SCORE_FIELDS = tuple(field.name for field in pb.ScoreUpdate.DESCRIPTOR.fields
                     if field.name not in UNSTORED_SCORE_FIELDS)
REQUIRED_SCORE_FIELDS = ("probability", "above_threshold", "threshold", "speech_seconds")


def checked_score_update(score: Mapping[str, Any], *, session_id: str, participant_id: str, seq: int,
                         model_version: str, clock: Callable[[], float]) -> dict:
    """The score JSON stored for segment `seq`: `score` checked, with the identity fields the store sets."""
    unknown = set(score) - set(SCORE_FIELDS)
    if unknown:
        raise ValueError(f"unknown score fields {sorted(unknown)}; allowed: {', '.join(SCORE_FIELDS)}")
    missing = [name for name in REQUIRED_SCORE_FIELDS if name not in score]
    if missing:
        raise ValueError(f"score is missing {', '.join(missing)}")
    # Identity fields are the store's to set: a caller can confirm them, not change them.
    authoritative = {
        "session_id": session_id,
        "participant_id": participant_id,
        "seq": seq,
        # Seqs start at 0 and gaps are refused, so seq n is the (n+1)-th segment.
        "segments": seq + 1,
        "model_version": model_version,
    }
    for name, value in authoritative.items():
        if name in score and score[name] != value:
            raise ValueError(f"score[{name!r}] is {score[name]!r} but the store has {value!r}")
    probability = finite("probability", score["probability"])
    threshold = finite("threshold", score["threshold"])
    speech_seconds = finite("speech_seconds", score["speech_seconds"])
    if not 0.0 <= probability <= 1.0 or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"probability ({probability}) and threshold ({threshold}) must lie in [0, 1]")
    start_seconds = finite("start_seconds", score.get("start_seconds", 0.0))
    if speech_seconds < 0 or start_seconds < 0:
        raise ValueError(f"speech_seconds ({speech_seconds}) and start_seconds ({start_seconds}) must be >= 0")
    above = score["above_threshold"]
    evidence = score.get("evidence_sufficient", True)
    if not isinstance(evidence, bool):
        raise ValueError(f"evidence_sufficient must be a bool, not {evidence!r}")
    if not isinstance(above, bool) or above != (evidence and probability >= threshold):
        raise ValueError(
            f"above_threshold must be the bool evidence_sufficient and probability >= threshold "
            f"({evidence} and {probability} >= {threshold}), not {above!r}"
        )
    device_id = score.get("device_id", "")
    check_pattern("device_id", device_id, DEVICE_PATTERN)
    time_unix = finite("time_unix", score.get("time_unix", clock()))
    return {
        **authoritative,
        **checked_interval(score, probability),
        "probability": probability,
        "above_threshold": above,
        "evidence_sufficient": evidence,
        "threshold": threshold,
        "time_unix": time_unix,
        "device_id": device_id,
        "speech_seconds": speech_seconds,
        "start_seconds": start_seconds,
    }


def checked_interval(score: Mapping[str, Any], probability: float) -> dict:
    """The score's interval fields, all three or none, with low <= probability <= high and a level in (0, 1)."""
    given = [name for name in INTERVAL_FIELDS if name in score]
    if not given:
        return {}
    if len(given) != len(INTERVAL_FIELDS):
        raise ValueError(f"an interval needs all of {', '.join(INTERVAL_FIELDS)}, got {', '.join(given)}")
    low, high, level = (finite(name, score[name]) for name in INTERVAL_FIELDS)
    if not 0.0 <= low <= probability <= high <= 1.0:
        raise ValueError(f"the interval must hold the probability within [0, 1]: {low} <= {probability} <= {high}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval_level must lie in (0, 1), got {level}")
    return {"probability_low": low, "probability_high": high, "interval_level": level}


def parse_offset(offset: str) -> str:
    """Validate a Subscribe offset; returns "$" or a full stream id "ms-seq"."""
    if not isinstance(offset, str):
        raise ValueError(f"offset must be a string, not {type(offset).__name__}")
    if offset == "":
        return "0-0"
    if offset in ("$", "0"):
        return "0-0" if offset == "0" else "$"
    match = OFFSET_PATTERN.fullmatch(offset)
    if not match or any(int(part) > MAX_STREAM_ID_PART for part in match.groups()):
        raise ValueError(f"malformed offset {offset!r}: expected '', '$' or an offset from a score update")
    return offset


def missed_removed_entries(after: str, info: Mapping[str, Any]) -> bool:
    """Whether entries newer than `after` may have been removed from the stream.

    Trimming (the MAXLEN cap) removes the oldest entries, so a reader is
    behind it when its offset lies before the first entry still there and
    some entries were removed. At the exact boundary (the reader's last seen
    entry was the last one trimmed) this says True though nothing was
    missed: Redis keeps no record of the last trimmed id. XDEL'd entries are
    covered by max-deleted-entry-id.
    """
    if not info:
        return False
    position = _offset_key(after)
    if position < _offset_key(info.get("max-deleted-entry-id", "0-0")):
        return True
    some_removed = int(info.get("entries-added", 0)) > int(info.get("length", 0))
    first_kept = info.get("recorded-first-entry-id", "0-0")
    return some_removed and position < _offset_key(first_kept)


def _offset_key(offset: str) -> tuple[int, int]:
    ms, _, seq = offset.partition("-")
    return int(ms), int(seq or 0)


def check_pattern(name: str, value: Any, pattern: re.Pattern) -> None:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{name} must match {pattern.pattern}, got {value!r}")


def check_seq(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQ:
        raise ValueError(f"{name} must be an int in 0..{MAX_SEQ}, got {value!r}")


def nonempty_bytes(name: str, value: Any) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ValueError(f"{name} must be bytes, not {type(value).__name__}")
    value = bytes(value)
    if not value:
        raise ValueError(f"{name} is empty")
    return value


def finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def optional_int(value: bytes | None) -> int | None:
    return int(value) if value not in (None, False, b"") else None


def stored_score(latest: bytes | None, offset: bytes | None) -> dict[str, Any] | None:
    """A session's latest score from its record's latest and latest_offset fields (None before any)."""
    if not latest:
        return None
    return {**json.loads(latest), "offset": as_text(offset)}


def stream_entries(reply: Any) -> Iterable[tuple[Any, Mapping]]:
    """Entries of a one-stream XREAD reply, in RESP2 (list) or RESP3 (dict) shape."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return next(iter(reply.values()))[0] if reply else []
    return reply[0][1]


def decode_entry(entry_id: bytes | str, fields: Mapping) -> dict[str, Any]:
    payload = fields.get(b"score", fields.get("score"))
    return {**json.loads(payload), "offset": as_text(entry_id)}
