"""The one speech path, shared by the agent, the trainer and the server (docs/speech-path.md).

Which audio is kept (webrtcvad with hangover and prompt gating), how it is cut into
the model's 7 s segments, and how a recording is read onto the 16 kHz mono clock.
Torch-free: it imports no part of moodstream, only the wire facts.
"""
from .audio_file import FileSource, SourceError, float_to_int16
from .chunker import Chunker, DroppedTail, SpeechChunk
from .path import CaptureResult, CaptureSettings, capture_chunks, make_gate
from .vad import PromptGate, SpeechFilter, load_prompt_intervals

__all__ = [
    "CaptureResult", "CaptureSettings", "Chunker", "DroppedTail", "FileSource", "PromptGate", "SourceError",
    "SpeechChunk", "SpeechFilter", "capture_chunks", "float_to_int16", "load_prompt_intervals", "make_gate",
]
