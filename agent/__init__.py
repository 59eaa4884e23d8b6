"""The edge agent: keeps a subject's speech, chunks it, and streams it to a server.

It never imports torch (nor moodstream.model / moodstream.server): it has to run
on phones, kiosks and laptops. Programmatic use::

    from moodstream.agent import FileSource, run_agent
    result = run_agent(FileSource("interview.wav"), server="127.0.0.1:50051",
                       participant_id="p1", outbox="/tmp/outbox")
    result.final_score.probability   # a screening aid, not a diagnosis
"""
from moodstream.speech import (CaptureResult, CaptureSettings, Chunker, DroppedTail, PromptGate, SpeechChunk,
                               SpeechFilter, capture_chunks, load_prompt_intervals)

from .client import (AgentError, DeliveryAborted, DeliveryGaveUp, ModelInfo, RetryPolicy, ServerRefused,
                     ServerTarget, SessionDelivery, fetch_model_info)
from .events import AgentEvent, Score
from .outbox import Outbox, OutboxFull, default_outbox_dir
from .pipeline import AgentResult, deliver_outbox, new_session_id, run_agent
from .sources import (SAMPLE_RATE, FileSource, MicrophoneSource, MicrophoneUnavailable, PcmStreamSource,
                      SourceError, open_source)

__all__ = [
    "AgentError", "AgentEvent", "AgentResult", "CaptureResult", "CaptureSettings", "Chunker",
    "DeliveryAborted", "DeliveryGaveUp", "DroppedTail", "FileSource", "MicrophoneSource", "ModelInfo",
    "MicrophoneUnavailable", "Outbox", "OutboxFull", "PcmStreamSource", "PromptGate", "RetryPolicy",
    "SAMPLE_RATE", "Score", "ServerRefused", "ServerTarget", "SessionDelivery", "SourceError",
    "SpeechChunk", "SpeechFilter", "capture_chunks", "default_outbox_dir", "deliver_outbox",
    "fetch_model_info", "load_prompt_intervals", "new_session_id", "open_source", "run_agent",
]
