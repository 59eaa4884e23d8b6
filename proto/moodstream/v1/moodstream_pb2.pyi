from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AudioEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_ENCODING_UNSPECIFIED: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_PCM_S16LE: _ClassVar[AudioEncoding]

class SessionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_STATE_UNSPECIFIED: _ClassVar[SessionState]
    SESSION_STATE_OPEN: _ClassVar[SessionState]
    SESSION_STATE_ENDED: _ClassVar[SessionState]
    SESSION_STATE_INTERRUPTED: _ClassVar[SessionState]
AUDIO_ENCODING_UNSPECIFIED: AudioEncoding
AUDIO_ENCODING_PCM_S16LE: AudioEncoding
SESSION_STATE_UNSPECIFIED: SessionState
SESSION_STATE_OPEN: SessionState
SESSION_STATE_ENDED: SessionState
SESSION_STATE_INTERRUPTED: SessionState

class SessionHeader(_message.Message):
    __slots__ = ("session_id", "participant_id", "device_id", "sample_rate", "encoding", "model_version", "resume_from_seq")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    participant_id: str
    device_id: str
    sample_rate: int
    encoding: AudioEncoding
    model_version: str
    resume_from_seq: int
    def __init__(self, session_id: _Optional[str] = ..., participant_id: _Optional[str] = ..., device_id: _Optional[str] = ..., sample_rate: _Optional[int] = ..., encoding: _Optional[_Union[AudioEncoding, str]] = ..., model_version: _Optional[str] = ..., resume_from_seq: _Optional[int] = ...) -> None: ...

class SpeechStats(_message.Message):
    __slots__ = ("speech_seconds", "dropped_seconds", "vad_frames")
    SPEECH_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    VAD_FRAMES_FIELD_NUMBER: _ClassVar[int]
    speech_seconds: float
    dropped_seconds: float
    vad_frames: int
    def __init__(self, speech_seconds: _Optional[float] = ..., dropped_seconds: _Optional[float] = ..., vad_frames: _Optional[int] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("seq", "start_seconds", "pcm", "speech")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    START_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    SPEECH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    start_seconds: float
    pcm: bytes
    speech: SpeechStats
    def __init__(self, seq: _Optional[int] = ..., start_seconds: _Optional[float] = ..., pcm: _Optional[bytes] = ..., speech: _Optional[_Union[SpeechStats, _Mapping]] = ...) -> None: ...

class End(_message.Message):
    __slots__ = ("last_seq",)
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    last_seq: int
    def __init__(self, last_seq: _Optional[int] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("header", "chunk", "end")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    header: SessionHeader
    chunk: Chunk
    end: End
    def __init__(self, header: _Optional[_Union[SessionHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., end: _Optional[_Union[End, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("seq", "duplicate")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    duplicate: bool
    def __init__(self, seq: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class ScoreUpdate(_message.Message):
    __slots__ = ("session_id", "participant_id", "segments", "probability", "above_threshold", "threshold", "model_version", "time_unix", "seq", "offset", "device_id", "speech_seconds", "notice", "start_seconds", "session_state", "session_state_since_unix", "evidence_sufficient", "probability_low", "probability_high", "interval_level")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    ABOVE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SPEECH_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    START_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SESSION_STATE_FIELD_NUMBER: _ClassVar[int]
    SESSION_STATE_SINCE_UNIX_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_SUFFICIENT_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_LOW_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_HIGH_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_LEVEL_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    participant_id: str
    segments: int
    probability: float
    above_threshold: bool
    threshold: float
    model_version: str
    time_unix: float
    seq: int
    offset: str
    device_id: str
    speech_seconds: float
    notice: str
    start_seconds: float
    session_state: SessionState
    session_state_since_unix: float
    evidence_sufficient: bool
    probability_low: float
    probability_high: float
    interval_level: float
    def __init__(self, session_id: _Optional[str] = ..., participant_id: _Optional[str] = ..., segments: _Optional[int] = ..., probability: _Optional[float] = ..., above_threshold: _Optional[bool] = ..., threshold: _Optional[float] = ..., model_version: _Optional[str] = ..., time_unix: _Optional[float] = ..., seq: _Optional[int] = ..., offset: _Optional[str] = ..., device_id: _Optional[str] = ..., speech_seconds: _Optional[float] = ..., notice: _Optional[str] = ..., start_seconds: _Optional[float] = ..., session_state: _Optional[_Union[SessionState, str]] = ..., session_state_since_unix: _Optional[float] = ..., evidence_sufficient: _Optional[bool] = ..., probability_low: _Optional[float] = ..., probability_high: _Optional[float] = ..., interval_level: _Optional[float] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "seq")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    seq: int
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("ack", "score", "error")
    ACK_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ack: Ack
    score: ScoreUpdate
    error: Error
    def __init__(self, ack: _Optional[_Union[Ack, _Mapping]] = ..., score: _Optional[_Union[ScoreUpdate, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("session_id", "participant_id", "after_offset")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_OFFSET_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    participant_id: str
    after_offset: str
    def __init__(self, session_id: _Optional[str] = ..., participant_id: _Optional[str] = ..., after_offset: _Optional[str] = ...) -> None: ...

class GetScoreRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ("participant_id", "states", "active_after_unix", "active_before_unix", "page_size", "page_token")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_AFTER_UNIX_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_BEFORE_UNIX_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    states: _containers.RepeatedScalarFieldContainer[SessionState]
    active_after_unix: float
    active_before_unix: float
    page_size: int
    page_token: str
    def __init__(self, participant_id: _Optional[str] = ..., states: _Optional[_Iterable[_Union[SessionState, str]]] = ..., active_after_unix: _Optional[float] = ..., active_before_unix: _Optional[float] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class SessionSummary(_message.Message):
    __slots__ = ("session_id", "participant_id", "device_id", "model_version", "state", "started_unix", "last_update_unix", "state_since_unix", "segments", "speech_seconds", "latest")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_FIELD_NUMBER: _ClassVar[int]
    LAST_UPDATE_UNIX_FIELD_NUMBER: _ClassVar[int]
    STATE_SINCE_UNIX_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    SPEECH_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    participant_id: str
    device_id: str
    model_version: str
    state: SessionState
    started_unix: float
    last_update_unix: float
    state_since_unix: float
    segments: int
    speech_seconds: float
    latest: ScoreUpdate
    def __init__(self, session_id: _Optional[str] = ..., participant_id: _Optional[str] = ..., device_id: _Optional[str] = ..., model_version: _Optional[str] = ..., state: _Optional[_Union[SessionState, str]] = ..., started_unix: _Optional[float] = ..., last_update_unix: _Optional[float] = ..., state_since_unix: _Optional[float] = ..., segments: _Optional[int] = ..., speech_seconds: _Optional[float] = ..., latest: _Optional[_Union[ScoreUpdate, _Mapping]] = ...) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions", "next_page_token")
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[SessionSummary]
    next_page_token: str
    def __init__(self, sessions: _Optional[_Iterable[_Union[SessionSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PutChunkRequest(_message.Message):
    __slots__ = ("header", "chunk", "end")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    header: SessionHeader
    chunk: Chunk
    end: End
    def __init__(self, header: _Optional[_Union[SessionHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., end: _Optional[_Union[End, _Mapping]] = ...) -> None: ...

class PutChunkResponse(_message.Message):
    __slots__ = ("ack", "score", "ended")
    ACK_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    ack: Ack
    score: ScoreUpdate
    ended: bool
    def __init__(self, ack: _Optional[_Union[Ack, _Mapping]] = ..., score: _Optional[_Union[ScoreUpdate, _Mapping]] = ..., ended: _Optional[bool] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("model_version",)
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    def __init__(self, model_version: _Optional[str] = ...) -> None: ...

class SpeechSettings(_message.Message):
    __slots__ = ("chunk_seconds", "min_last_chunk_seconds", "vad_aggressiveness", "frame_ms", "hangover_ms", "onset_ms", "warmup_ms", "echo_tail_seconds")
    CHUNK_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MIN_LAST_CHUNK_SECONDS_FIELD_NUMBER: _ClassVar[int]
    VAD_AGGRESSIVENESS_FIELD_NUMBER: _ClassVar[int]
    FRAME_MS_FIELD_NUMBER: _ClassVar[int]
    HANGOVER_MS_FIELD_NUMBER: _ClassVar[int]
    ONSET_MS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_MS_FIELD_NUMBER: _ClassVar[int]
    ECHO_TAIL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    chunk_seconds: float
    min_last_chunk_seconds: float
    vad_aggressiveness: int
    frame_ms: int
    hangover_ms: int
    onset_ms: int
    warmup_ms: int
    echo_tail_seconds: float
    def __init__(self, chunk_seconds: _Optional[float] = ..., min_last_chunk_seconds: _Optional[float] = ..., vad_aggressiveness: _Optional[int] = ..., frame_ms: _Optional[int] = ..., hangover_ms: _Optional[int] = ..., onset_ms: _Optional[int] = ..., warmup_ms: _Optional[int] = ..., echo_tail_seconds: _Optional[float] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_version", "threshold", "sample_rate", "speech", "min_chunk_seconds", "max_chunk_seconds", "notice", "min_evidence_segments", "training_data", "positive_class", "demo_model", "versions", "interval_level")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    SPEECH_FIELD_NUMBER: _ClassVar[int]
    MIN_CHUNK_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    MIN_EVIDENCE_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_DATA_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_CLASS_FIELD_NUMBER: _ClassVar[int]
    DEMO_MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_LEVEL_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    threshold: float
    sample_rate: int
    speech: SpeechSettings
    min_chunk_seconds: float
    max_chunk_seconds: float
    notice: str
    min_evidence_segments: int
    training_data: str
    positive_class: str
    demo_model: bool
    versions: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    interval_level: float
    def __init__(self, model_version: _Optional[str] = ..., threshold: _Optional[float] = ..., sample_rate: _Optional[int] = ..., speech: _Optional[_Union[SpeechSettings, _Mapping]] = ..., min_chunk_seconds: _Optional[float] = ..., max_chunk_seconds: _Optional[float] = ..., notice: _Optional[str] = ..., min_evidence_segments: _Optional[int] = ..., training_data: _Optional[str] = ..., positive_class: _Optional[str] = ..., demo_model: _Optional[bool] = ..., versions: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., interval_level: _Optional[float] = ...) -> None: ...

class EnrolRequest(_message.Message):
    __slots__ = ("code", "device_claim")
    CODE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_CLAIM_FIELD_NUMBER: _ClassVar[int]
    code: str
    device_claim: str
    def __init__(self, code: _Optional[str] = ..., device_claim: _Optional[str] = ...) -> None: ...

class EnrolResponse(_message.Message):
    __slots__ = ("participant_id", "token", "token_name")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKEN_NAME_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    token: str
    token_name: str
    def __init__(self, participant_id: _Optional[str] = ..., token: _Optional[str] = ..., token_name: _Optional[str] = ...) -> None: ...
