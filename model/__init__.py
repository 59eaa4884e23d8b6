"""The paper's networks and the checkpoint format, shared by server and trainer.

Upstream: `Backbone` (wav2vec 2.0 or any HF raw-waveform encoder, summed
transformer layers). Downstream: `SegmentHead` (3 x Conv1d(80) + attention
pooling) and `SessionHead` (LSTM + self-attention). `IncrementalScorer`
updates a session score exactly in O(n*d) per segment.
"""
import importlib

# Each name's module, imported on first use: `moodstream model --help` and the other parsers need no torch.
_HOMES = {
    "BackboneUnavailableError": "errors",
    "CheckpointError": "errors",
    "IncrementalScorer": "incremental",
    "ModelConfig": "config",
    "ScorerState": "incremental",
    "ScreeningModel": "screening_model",
    "StateError": "errors",
    "pick_device": "device",
    "tiny_wav2vec2_config": "config",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
