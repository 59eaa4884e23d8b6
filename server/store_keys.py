"""The Redis key schema of the session store: every key a session, a participant or a model version uses.

P = participant id, S = session id, V = model version (ids are
``[A-Za-z0-9_.-]{1,64}``, versions ``[A-Za-z0-9_.+-]{1,128}``, so none holds
``:``, ``{``, ``}`` or a glob character)::

    ms:{p:P}:V:s:S            hash    participant, session, model_version,
                                      device, started_at, ended_at (once
                                      ended), applied (last applied seq),
                                      state (scorer state head: O(d),
                                      rewritten per segment), segments,
                                      speech_seconds, latest (score JSON),
                                      latest_offset, interrupted_at (while
                                      its last stream broke off without End)
    ms:{p:P}:V:s:S:vectors    hash    seq -> segment vector (float32 bytes)
    ms:{p:P}:V:s:S:audio      hash    seq -> PCM s16le (only with store_audio)
    ms:{p:P}:V:s:S:rows       string  the scorer's rows, one fixed-size record
                                      appended per segment (APPEND)
    ms:{p:P}:V:s:S:updates    stream  one entry per applied segment: score=JSON
    ms:{p:P}:updates          stream  the same entries for all of P's sessions,
                                      of every model version (each entry
                                      names its model_version)
    ms:{p:P}:V:sessions       zset    P's session directory: session id ->
                                      started_at; the apply script adds a
                                      session with its first segment
    ms:{directory}:V          zset    participants with an applied segment
                                      (score 0, read in lexical order)
    ms:session:{S}:owner      string  P; set once (SET NX), so a session id
                                      can never be taken over by another
                                      participant
    ms:session:{S}:model      string  V, the model version the session
                                      started under; set once (SET NX), so
                                      every replica keeps the session on it
    ms:{versions}             set     every model version that stored a
                                      session (for the session directory;
                                      its TTL is refreshed like the
                                      participant directory's)
    ms:enrol:{D}:used         string  D = sha256 of an enrolment code: set
                                      once (SET NX) when the code is
                                      redeemed, holding the sha256 of the
                                      redeeming device's claim; expires with
                                      the code (server/enrol_rpc.py)

The hash tag ``{p:P}`` puts a participant's sessions and its score stream on
one cluster slot, which is what lets one script update the session and the
participant stream atomically. The owner key is tagged by session instead,
because it must be found from a session id alone; it is only touched on
claim, the first segment, end and forget, never inside the apply script.
The participant directory holds every participant on one slot; it is
touched with a session's first segment and its end. The model version in
every key keeps a new model from ever mixing with an old model's vectors or
state.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DIRECTORY_PREFIX",
    "VERSIONS_KEY",
    "SessionKeys",
    "directory_key",
    "enrolment_used_key",
    "owner_key",
    "participant_prefix",
    "participant_updates_key",
    "session_id_in_participant_key",
    "session_index_key",
    "session_model_key",
]

VERSIONS_KEY = "ms:{versions}"
DIRECTORY_PREFIX = "ms:{directory}:"


@dataclass(frozen=True)
class SessionKeys:
    """All keys of one session under one model version (see the module docstring)."""

    session: str
    vectors: str
    audio: str
    updates: str
    participant_updates: str
    owner: str
    index: str  # the participant's session directory (shared by their sessions)
    rows: str
    model: str  # the session's model version (set by the server that starts the session)

    @classmethod
    def build(cls, participant_id: str, session_id: str, model_version: str) -> SessionKeys:
        session = f"{participant_prefix(participant_id)}{model_version}:s:{session_id}"
        return cls(
            session=session,
            vectors=f"{session}:vectors",
            audio=f"{session}:audio",
            updates=f"{session}:updates",
            # One stream for every version, so a participant's subscriber follows a rollout.
            participant_updates=participant_updates_key(participant_id),
            owner=owner_key(session_id),
            index=session_index_key(participant_id, model_version),
            rows=f"{session}:rows",
            model=session_model_key(session_id),
        )

    def script_keys(self) -> list[str]:
        """The keys the apply script touches, in its KEYS order; all on one slot."""
        return [self.session, self.vectors, self.updates, self.participant_updates, self.audio, self.rows]

    def all(self) -> list[str]:
        return [*self.script_keys(), self.owner]


def participant_prefix(participant_id: str) -> str:
    return f"ms:{{p:{participant_id}}}:"


def owner_key(session_id: str) -> str:
    return f"ms:session:{{{session_id}}}:owner"


def session_model_key(session_id: str) -> str:
    return f"ms:session:{{{session_id}}}:model"


def participant_updates_key(participant_id: str) -> str:
    return f"{participant_prefix(participant_id)}updates"


def session_index_key(participant_id: str, model_version: str) -> str:
    """The participant's session directory under one model version."""
    return f"{participant_prefix(participant_id)}{model_version}:sessions"


def enrolment_used_key(code_digest: str) -> str:
    """Marks an enrolment code used, on every replica: tagged by the code's digest, which holds no `{}:`."""
    return f"ms:enrol:{{{code_digest}}}:used"


def directory_key(model_version: str) -> str:
    return f"{DIRECTORY_PREFIX}{model_version}"


def session_id_in_participant_key(key_rest: str) -> str | None:
    """Session id from a participant key without its prefix ("V:s:S[:suffix]"); None for other keys."""
    parts = key_rest.split(":")
    if len(parts) >= 3 and parts[1] == "s":
        return parts[2]
    return None
