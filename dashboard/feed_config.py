"""The feed's settings (which server and participants it follows, when a session reads idle or a score late)
and the participant lists they are made from."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from moodstream.ids import ID_RULE, is_id
from moodstream.model_description import ModelDescription


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


def participants_from(values: Iterable[str] | None, participants_file: str | Path | None) -> list[str]:
    participants = [check_participant_id(v) for v in values or ()]
    if participants_file:
        listed = read_participants_file(participants_file)
        if not listed:
            raise ValueError(f"participants file {participants_file} names no participant; leave it out to "
                             "follow whoever has a recent session")
        participants.extend(listed)
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
