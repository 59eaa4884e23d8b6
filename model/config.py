"""Every hyperparameter of the screening model, in one place.

The defaults are the paper's (Zhang et al., Sci. Rep. 2024): wav2vec 2.0 base,
all transformer layers fine-tuned, frame features = sum of all transformer
layer outputs, 3 x Conv1d(80) + ReLU + Dropout, attention pooling, then an
LSTM + scaled dot-product self-attention session head summed over time.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from moodstream.model_description import check_description

FINE_TUNING_STRATEGIES = ("frozen", "last-n", "all")
FEATURE_NORMALIZATIONS = ("none", "standardize")
POOLINGS = ("attention", "mean", "max")
SESSION_HEADS = ("self-attention", "last-step")
SESSION_TIME_POOLINGS = ("sum", "mean")
SESSION_SKIPS = ("none", "segment-mean")


@dataclass
class ModelConfig:
    # Upstream (SSL backbone). `backbone` is a Hugging Face hub id or a local
    # folder; `backbone_config` (a transformers config dict) builds a randomly
    # initialised backbone instead, as checkpoints and tests do.
    backbone: str = "facebook/wav2vec2-base"
    backbone_config: dict[str, Any] | None = None
    fine_tuning: str = "all"
    fine_tune_last_n: int = 1
    normalize_waveform: bool = True

    # Downstream segment head.
    conv_channels: int = 80
    conv_kernel_size: int = 3
    conv_layers: int = 3
    dropout: float = 0.1
    pooling: str = "attention"

    # Downstream session head.
    lstm_hidden_size: int = 128
    attention_size: int = 128
    session_head: str = "self-attention"
    # "sum" (the paper's) or "mean" of the attended rows over time: a mean keeps the logit's scale
    # independent of the session's length (small-data recipe, docs/training.md).
    session_time_pooling: str = "sum"
    # "segment-mean" (a small-data departure, docs/training.md): the session logit also gets the mean
    # over the session's segments of a linear score of each segment vector, a skip path around the
    # LSTM and attention that the trainer starts from the segment head's own classifier.
    session_skip: str = "none"

    # Audio framing and decision.
    sample_rate: int = 16000
    segment_seconds: float = 7.0
    min_segment_seconds: float = 1.0
    max_segment_seconds: float = 10.0
    decision_threshold: float = 0.5

    # The speech path the model was trained on: the agent's CaptureSettings (VAD,
    # chunk length, last-chunk minimum) as a dict. Servers hand it to agents
    # (GetModelInfo); None for checkpoints that predate it.
    speech: dict[str, Any] | None = None

    # Departures of the small-data recipe (docs/training.md); the defaults are the paper's.
    # "standardize": frame features become (x - mean) / std per dimension, with the training
    # segments' statistics stored in the checkpoint beside the segment head.
    feature_normalization: str = "none"
    # Platt calibration of the session logit, fitted on validation sessions:
    # probability = sigmoid(calibration_scale * logit + calibration_bias). (1, 0) = uncalibrated.
    calibration_scale: float = 1.0
    calibration_bias: float = 0.0
    # Evidence rule: below this many segments of speech a score carries no label
    # (chosen on validation from the prefix curve).
    min_evidence_segments: int = 1

    # Free-form provenance (training data, recipe, date); hashed into model_version.
    notes: dict[str, Any] = field(default_factory=dict)

    # What the probability means, shown beside every score (moodstream.model_description). Written
    # into config.json only when set, so checkpoints saved before these fields keep their model_version.
    training_data: str = ""       # e.g. "interviews of 189 adults (DAIC-WOZ)"
    positive_class: str = ""      # what a high probability stands for, e.g. "PHQ-8 >= 10"
    demo_model: bool = False      # a demonstration model whose scores mean nothing clinically

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def require(condition: bool, message: str) -> None:
            if not condition:
                raise ValueError(f"invalid model config: {message}")

        require(self.fine_tuning in FINE_TUNING_STRATEGIES,
                f"fine_tuning must be one of {FINE_TUNING_STRATEGIES}, got {self.fine_tuning!r}")
        require(self.fine_tune_last_n >= 1, "fine_tune_last_n must be >= 1")
        require(self.pooling in POOLINGS, f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        require(self.session_head in SESSION_HEADS,
                f"session_head must be one of {SESSION_HEADS}, got {self.session_head!r}")
        require(self.session_time_pooling in SESSION_TIME_POOLINGS,
                f"session_time_pooling must be one of {SESSION_TIME_POOLINGS}, got {self.session_time_pooling!r}")
        require(self.session_skip in SESSION_SKIPS,
                f"session_skip must be one of {SESSION_SKIPS}, got {self.session_skip!r}")
        require(self.conv_layers >= 1 and self.conv_channels >= 1, "conv_layers and conv_channels must be >= 1")
        require(self.conv_kernel_size >= 1 and self.conv_kernel_size % 2 == 1,
                "conv_kernel_size must be odd so frames stay aligned with the padding mask")
        require(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        require(self.lstm_hidden_size >= 1 and self.attention_size >= 1, "session head sizes must be >= 1")
        require(self.sample_rate > 0, "sample_rate must be positive")
        require(0 < self.min_segment_seconds <= self.segment_seconds <= self.max_segment_seconds,
                "need 0 < min_segment_seconds <= segment_seconds <= max_segment_seconds")
        require(0.0 < self.decision_threshold < 1.0, "decision_threshold must be in (0, 1)")
        require(self.speech is None or isinstance(self.speech, dict), "speech must be a table of speech settings")
        require(self.feature_normalization in FEATURE_NORMALIZATIONS,
                f"feature_normalization must be one of {FEATURE_NORMALIZATIONS}, got {self.feature_normalization!r}")
        require(math.isfinite(self.calibration_scale) and self.calibration_scale > 0
                and math.isfinite(self.calibration_bias),
                "calibration_scale must be a positive finite number and calibration_bias finite")
        require(self.min_evidence_segments >= 1, "min_evidence_segments must be >= 1")
        for name in ("training_data", "positive_class"):
            try:
                check_description(name, getattr(self, name))
            except ValueError as error:
                require(False, str(error))
        require(isinstance(self.demo_model, bool), "demo_model must be true or false")

    def evidence_sufficient(self, segments: int) -> bool:
        """Whether `segments` of speech are enough for a label (the evidence rule)."""
        return segments >= self.min_evidence_segments

    @property
    def segment_vector_size(self) -> int:
        return self.conv_channels

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        for name, default in _WRITTEN_WHEN_SET.items():
            if values[name] == default:
                del values[name]
        return values

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"invalid model config: unknown keys {unknown}")
        return cls(**values)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def tiny(cls, **overrides: Any) -> "ModelConfig":
        """A few-thousand-parameter model with the paper's structure, for tests and the demo."""
        values: dict[str, Any] = dict(
            backbone="tiny-random-wav2vec2",
            backbone_config=tiny_wav2vec2_config(),
            conv_channels=16,
            lstm_hidden_size=16,
            attention_size=16,
            dropout=0.0,
        )
        values.update(overrides)
        return cls(**values)


# Fields added after checkpoint format 1 was fixed, and their defaults.
_WRITTEN_WHEN_SET = {"training_data": "", "positive_class": "", "demo_model": False, "speech": None,
                     "feature_normalization": "none", "calibration_scale": 1.0, "calibration_bias": 0.0,
                     "min_evidence_segments": 1, "session_time_pooling": "sum",
                     "session_skip": "none"}


def tiny_wav2vec2_config() -> dict[str, Any]:
    """A wav2vec 2.0 config with the real architecture (7 CNN layers, 20 ms frames) at toy width."""
    return {
        "model_type": "wav2vec2",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "conv_dim": [16, 16, 16, 16, 16, 16, 16],
        "conv_stride": [5, 2, 2, 2, 2, 2, 2],
        "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4,
        "feat_extract_norm": "group",
        "do_stable_layer_norm": False,
        "layerdrop": 0.0,
        "mask_time_prob": 0.0,
    }
