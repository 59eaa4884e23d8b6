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
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec

from moodstream.model_description import check_description
from moodstream.settings import SettingError, checked

FineTuning = Literal["frozen", "last-n", "all"]
FeatureNormalization = Literal["none", "standardize"]
Pooling = Literal["attention", "mean", "max"]
SessionHeadKind = Literal["self-attention", "last-step"]
SessionTimePooling = Literal["sum", "mean"]
SessionSkip = Literal["none", "segment-mean"]
WhisperInput = Literal["30s", "chunk"]
SESSION_TIME_POOLINGS = typing.get_args(SessionTimePooling)
SESSION_SKIPS = typing.get_args(SessionSkip)

AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
Positive = Annotated[float, msgspec.Meta(gt=0)]
NotNegative = Annotated[float, msgspec.Meta(ge=0)]
Probability = Annotated[float, msgspec.Meta(gt=0, lt=1)]


@dataclass
class ModelConfig:
    # Upstream (SSL backbone). `backbone` is a Hugging Face hub id or a local
    # folder; `backbone_config` (a transformers config dict) builds a randomly
    # initialised backbone instead, as checkpoints and tests do.
    backbone: str = "facebook/wav2vec2-base"
    backbone_config: dict[str, Any] | None = None
    fine_tuning: FineTuning = "all"
    fine_tune_last_n: AtLeastOne = 1
    normalize_waveform: bool = True
    # A Whisper backbone's input length (docs/model.md): "30s" pads every segment's log-mel to Whisper's
    # 30 s window as it was pretrained; "chunk" runs the encoder on the segment's own frames only.
    # No effect on wav2vec2-family backbones.
    whisper_input: WhisperInput = "30s"

    # Downstream segment head.
    conv_channels: AtLeastOne = 80
    conv_kernel_size: AtLeastOne = 3
    conv_layers: AtLeastOne = 3
    dropout: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.1
    pooling: Pooling = "attention"

    # Downstream session head.
    lstm_hidden_size: AtLeastOne = 128
    attention_size: AtLeastOne = 128
    session_head: SessionHeadKind = "self-attention"
    # "sum" (the paper's) or "mean" of the attended rows over time: a mean keeps the logit's scale
    # independent of the session's length (small-data recipe, docs/training.md).
    session_time_pooling: SessionTimePooling = "sum"
    # "segment-mean" (a small-data departure, docs/training.md): the session logit also gets the mean
    # over the session's segments of a linear score of each segment vector, a skip path around the
    # LSTM and attention that the trainer starts from the segment head's own classifier.
    session_skip: SessionSkip = "none"

    # Audio framing and decision.
    sample_rate: Annotated[int, msgspec.Meta(gt=0)] = 16000
    segment_seconds: float = 7.0
    min_segment_seconds: Positive = 1.0
    max_segment_seconds: float = 10.0
    decision_threshold: Probability = 0.5

    # The speech path the model was trained on: the agent's CaptureSettings (VAD,
    # chunk length, last-chunk minimum) as a dict. Servers hand it to agents
    # (GetModelInfo); None for checkpoints that predate it.
    speech: dict[str, Any] | None = None

    # Departures of the small-data recipe (docs/training.md); the defaults are the paper's.
    # "standardize": frame features become (x - mean) / std per dimension, with the training
    # segments' statistics stored in the checkpoint beside the segment head.
    feature_normalization: FeatureNormalization = "none"
    # Calibration of the session logit (moodstream.model.calibration, docs/calibration.md):
    # probability = sigmoid(calibration_scale * recurrent + calibration_segment_scale * segment evidence
    # + calibration_bias). None for the segment scale: the same scale for both parts (one logit).
    calibration_scale: NotNegative = 1.0
    calibration_bias: float = 0.0
    calibration_segment_scale: float | None = None
    # (recurrent scale, segment scale, bias) refitted on resamples of the out-of-fold set: the interval
    # every score carries, at interval_level. Empty: no interval.
    calibration_replicates: list[list[float]] = field(default_factory=list)
    interval_level: Probability = 0.9
    # Evidence rule: below this many segments of speech a score carries no label
    # (chosen on validation from the prefix curve).
    min_evidence_segments: AtLeastOne = 1

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

        try:
            # The values stay as given: config.json, and the model_version hashed from it, keep their bytes.
            checked({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, ModelConfig)
        except SettingError as error:
            require(False, str(error))
        require(self.conv_kernel_size % 2 == 1,
                "conv_kernel_size must be odd so frames stay aligned with the padding mask")
        require(self.min_segment_seconds <= self.segment_seconds <= self.max_segment_seconds,
                "need 0 < min_segment_seconds <= segment_seconds <= max_segment_seconds")
        for name in ("calibration_scale", "calibration_segment_scale", "calibration_bias"):
            value = getattr(self, name)
            require(value is None or math.isfinite(value), f"{name} must be finite, got {value}")
        require(all(len(row) == 3 and all(isinstance(x, (int, float)) and math.isfinite(x) for x in row)
                    for row in self.calibration_replicates),
                "calibration_replicates must be rows of 3 finite numbers (recurrent scale, segment scale, bias)")
        for name in ("training_data", "positive_class"):
            try:
                check_description(name, getattr(self, name))
            except ValueError as error:
                require(False, str(error))

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
        try:
            checked(values, cls)
        except SettingError as error:
            raise ValueError(f"invalid model config: {error}") from None
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
                     "session_skip": "none", "calibration_segment_scale": None, "calibration_replicates": [],
                     "interval_level": 0.9, "whisper_input": "30s"}


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
