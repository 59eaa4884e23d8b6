"""Downstream, segment level: 3 x [Conv1d(80) -> ReLU -> Dropout], then pooling over time.

The paper's attention pooling: a = softmax(w . C^T) over time, v = a . C, with
one learned vector w. Padded frames get no weight and never reach a convolution.
"""
from __future__ import annotations

import torch
from torch import nn


class SegmentHead(nn.Module):
    def __init__(self, input_size: int, channels: int = 80, kernel_size: int = 3, layers: int = 3,
                 dropout: float = 0.1, pooling: str = "attention", feature_normalization: str = "none") -> None:
        super().__init__()
        self.feature_normalization = feature_normalization
        if feature_normalization == "standardize":
            # Pretrained encoders' summed layers span very different scales per dimension (Whisper
            # tiny.en: means up to 13, std 0.9 to 9); training statistics, set by the trainer.
            self.register_buffer("feature_mean", torch.zeros(input_size))
            self.register_buffer("feature_std", torch.ones(input_size))
        self.convs = nn.ModuleList(
            nn.Conv1d(input_size if index == 0 else channels, channels, kernel_size, padding=kernel_size // 2)
            for index in range(layers)
        )
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.pooling = pooling
        # w in the paper's softmax(w . C^T); only used by attention pooling but
        # always present so every pooling variant shares one weight layout.
        self.attention_vector = nn.Parameter(torch.randn(channels) / channels ** 0.5)
        # Stage 1 trains the encoder on segment labels through this classifier.
        self.segment_classifier = nn.Linear(channels, 1)

    def frame_outputs(self, features: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """features [B, F, H] -> C [B, F, channels], zero on padded frames."""
        keep = frame_mask[:, None, :].to(features.dtype)
        if self.feature_normalization == "standardize":
            features = (features - self.feature_mean) / self.feature_std
        hidden = features.transpose(1, 2)
        for conv in self.convs:
            hidden = self.dropout(self.activation(conv(hidden * keep)))
        return (hidden * keep).transpose(1, 2)

    def attention_weights(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        logits = frames @ self.attention_vector
        logits = logits.masked_fill(~frame_mask, float("-inf"))
        return torch.softmax(logits, dim=1)

    def pool(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "attention":
            weights = self.attention_weights(frames, frame_mask)
            return torch.einsum("bf,bfc->bc", weights, frames)
        if self.pooling == "mean":
            counts = frame_mask.sum(dim=1, keepdim=True).clamp(min=1).to(frames.dtype)
            return frames.sum(dim=1) / counts
        if self.pooling == "max":
            return frames.masked_fill(~frame_mask[:, :, None], float("-inf")).amax(dim=1)
        raise ValueError(f"unknown pooling {self.pooling!r}")

    @torch.no_grad()
    def set_feature_statistics(self, frames: torch.Tensor) -> None:
        """Standardisation statistics from training frames [N, H] (no-op without feature_normalization)."""
        if self.feature_normalization != "standardize":
            return
        frames = frames.to(torch.float64)
        self.feature_mean.copy_(frames.mean(dim=0).to(self.feature_mean.dtype))
        self.feature_std.copy_(frames.std(dim=0).clamp(min=1e-5).to(self.feature_std.dtype))

    def forward(self, features: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """-> segment vectors [B, channels]."""
        return self.pool(self.frame_outputs(features, frame_mask), frame_mask)

    def segment_logits(self, segment_vectors: torch.Tensor) -> torch.Tensor:
        return self.segment_classifier(segment_vectors).squeeze(-1)
