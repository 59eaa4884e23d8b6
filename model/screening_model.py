"""The whole screening model: upstream backbone + downstream segment and session heads.

    model = ScreeningModel(ModelConfig.tiny())              # random, for tests
    model = ScreeningModel.from_pretrained("checkpoints/x") # a saved checkpoint
    vectors = model.encode_segments([wave1, wave2])         # [2, 80] segment vectors
    probability = model.score(vectors)                      # batch session score
    scorer = model.incremental_scorer()                     # exact O(n*d) updates
    state = scorer.init_state(); state, p = scorer.step(state, vectors[0])
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from moodstream.model.backbone import Backbone, build_backbone_module
from moodstream.model.calibration import SessionCalibration, SessionScore
from moodstream.model.config import ModelConfig
from moodstream.model.incremental import IncrementalScorer
from moodstream.model.segment_head import SegmentHead
from moodstream.model.session_head import SessionHead


class ScreeningModel(nn.Module):
    def __init__(self, config: ModelConfig, load_pretrained_backbone: bool = False) -> None:
        super().__init__()
        encoder, hf_config = build_backbone_module(config.backbone, config.backbone_config, load_pretrained_backbone)
        # The resolved transformers config is kept so a checkpoint rebuilds the
        # backbone offline, without the hub.
        config = config.replace(backbone_config=hf_config)
        self.config = config
        self.backbone = Backbone(encoder, config.fine_tuning, config.fine_tune_last_n, config.normalize_waveform,
                                 config.whisper_input)
        self.segment_head = SegmentHead(self.backbone.hidden_size, config.conv_channels, config.conv_kernel_size,
                                        config.conv_layers, config.dropout, config.pooling,
                                        config.feature_normalization)
        self.session_head = SessionHead.from_config(config)
        self.eval()

    # ----------------------------------------------------------------- checkpoints
    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "ScreeningModel":
        from moodstream.model.checkpoint import load_checkpoint

        return load_checkpoint(directory, map_location=map_location)

    def save_pretrained(self, directory: str | Path) -> Path:
        from moodstream.model.checkpoint import save_checkpoint

        return save_checkpoint(self, directory)

    @property
    def model_version(self) -> str:
        """A stable id of config + weights (hashes every weight: call once and keep it)."""
        from moodstream.model.checkpoint import compute_model_version

        return compute_model_version(self)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def with_whisper_input(self, whisper_input: str) -> "ScreeningModel":
        """A copy with the same weights whose Whisper encoder takes another input length (ModelConfig.whisper_input):
        another model, with its own model_version, for timing the two lengths on one checkpoint. Its scores are
        not the trained model's: the heads learned the features of the checkpoint's own setting."""
        if not self.backbone.is_whisper:
            raise ValueError("whisper_input applies to Whisper backbones only")
        model = copy.deepcopy(self)
        model.config = self.config.replace(whisper_input=whisper_input)
        model.backbone.whisper_input = model.config.whisper_input
        return model

    # ----------------------------------------------------------------- segments
    def prepare_waveforms(self, waveforms: Sequence, sample_rate: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate and zero-pad 1-D waveforms -> ([B, T] float32, lengths [B])."""
        config = self.config
        if sample_rate is not None and sample_rate != config.sample_rate:
            raise ValueError(f"audio must be sampled at {config.sample_rate} Hz, got {sample_rate} Hz; resample it first")
        if isinstance(waveforms, (np.ndarray, torch.Tensor)) and waveforms.ndim == 1:
            waveforms = [waveforms]
        if len(waveforms) == 0:
            raise ValueError("no waveforms given: pass at least one segment")
        min_samples = int(round(config.min_segment_seconds * config.sample_rate))
        max_samples = int(round(config.max_segment_seconds * config.sample_rate))
        arrays = []
        for index, wave in enumerate(waveforms):
            array = wave.detach().cpu().numpy() if torch.is_tensor(wave) else np.asarray(wave)
            if array.ndim != 1:
                raise ValueError(f"segment {index} must be 1-D mono audio, got shape {array.shape}")
            if array.dtype == np.int16:
                array = array.astype(np.float32) / 32768.0
            elif not np.issubdtype(array.dtype, np.floating):
                raise ValueError(f"segment {index} has dtype {array.dtype}; use float32 in [-1, 1] or int16")
            array = array.astype(np.float32, copy=False)
            if array.shape[0] < min_samples:
                raise ValueError(f"segment {index} is too short: {array.shape[0] / config.sample_rate:.2f} s, "
                                 f"the minimum is {config.min_segment_seconds} s")
            if array.shape[0] > max_samples:
                raise ValueError(f"segment {index} is too long: {array.shape[0] / config.sample_rate:.2f} s, "
                                 f"the maximum is {config.max_segment_seconds} s")
            if not np.isfinite(array).all():
                raise ValueError(f"segment {index} contains NaN or infinite samples")
            arrays.append(array)
        lengths = torch.tensor([a.shape[0] for a in arrays], dtype=torch.long)
        batch = torch.zeros(len(arrays), int(lengths.max()))
        for row, array in enumerate(arrays):
            batch[row, : array.shape[0]] = torch.from_numpy(array)
        return batch, lengths

    def segment_vectors(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Differentiable path used in training: padded waveforms -> segment vectors [B, D]."""
        features, frame_mask = self.backbone(waveforms, lengths)
        return self.segment_head(features, frame_mask)

    @torch.inference_mode()
    def encode_segments(self, waveforms: Sequence, sample_rate: int | None = None) -> torch.Tensor:
        """Mono waveforms (float in [-1, 1] or int16) at the model's rate -> segment vectors [B, D] (float32, CPU)."""
        batch, lengths = self.prepare_waveforms(waveforms, sample_rate)
        device = self.device
        vectors = self.segment_vectors(batch.to(device), lengths.to(device))
        return vectors.float().cpu()

    # ----------------------------------------------------------------- sessions
    def check_vectors(self, vectors) -> torch.Tensor:
        tensor = vectors if torch.is_tensor(vectors) else torch.as_tensor(np.asarray(vectors, dtype=np.float32))
        tensor = tensor.detach().to(torch.float32)
        width = self.config.segment_vector_size
        if tensor.ndim != 2 or tensor.shape[1] != width:
            raise ValueError(f"segment vectors must have shape (n, {width}), got {tuple(tensor.shape)}")
        if tensor.shape[0] == 0:
            raise ValueError("a session needs at least one segment vector")
        if not torch.isfinite(tensor).all():
            raise ValueError("segment vectors contain NaN or infinite values")
        return tensor

    def score(self, vectors) -> float:
        """Batch session probability over segment vectors [n, D] (the reference for incremental scoring)."""
        return self.session_score(vectors).probability

    @torch.inference_mode()
    def session_score(self, vectors) -> SessionScore:
        """The batch session probability and its interval (docs/calibration.md) over segment vectors [n, D]."""
        tensor = self.check_vectors(vectors).to(self.device)
        recurrent, segment = self.session_head.logit_parts(tensor[None])
        return self.calibration.score(float(recurrent[0]), float(segment[0]))

    @property
    def calibration(self) -> SessionCalibration:
        """The checkpoint's calibration of the session logit's two parts, with its interval's replicates."""
        return SessionCalibration.of(self.config)

    def incremental_scorer(self, model_version: str | None = None) -> IncrementalScorer:
        # The scorer runs on the CPU (its per-step work is tiny) on its own copy,
        # so the model can stay on an accelerator.
        head = copy.deepcopy(self.session_head).to("cpu").eval()
        return IncrementalScorer(head, self.model_version if model_version is None else model_version,
                                 calibration=self.calibration)

    def parameter_counts(self) -> dict[str, int]:
        def count(module: nn.Module, trainable_only: bool = False) -> int:
            return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)

        return {
            "backbone": count(self.backbone),
            "backbone_trainable": count(self.backbone, True),
            "feature_encoder": count(self.backbone.feature_encoder),
            "segment_head": count(self.segment_head),
            "session_head": count(self.session_head),
            "total": count(self),
        }
