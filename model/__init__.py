"""The paper's networks and the checkpoint format, shared by server and trainer.

Upstream: `Backbone` (wav2vec 2.0 or any HF raw-waveform encoder, summed
transformer layers). Downstream: `SegmentHead` (3 x Conv1d(80) + attention
pooling) and `SessionHead` (LSTM + self-attention). `IncrementalScorer`
updates a session score exactly in O(n*d) per segment.
"""
from moodstream.model.config import ModelConfig, tiny_wav2vec2_config
from moodstream.model.errors import BackboneUnavailableError, CheckpointError, StateError
from moodstream.model.incremental import IncrementalScorer, ScorerState
from moodstream.model.screening_model import ScreeningModel

__all__ = [
    "BackboneUnavailableError",
    "CheckpointError",
    "IncrementalScorer",
    "ModelConfig",
    "ScorerState",
    "ScreeningModel",
    "StateError",
    "tiny_wav2vec2_config",
]
