"""Downstream, session level: LSTM over segment vectors, self-attention, sum over time, linear.

Unidirectional LSTM; scaled dot-product self-attention with Q, K, V
projections of the LSTM outputs, every position attending to every position;
the attended rows are summed over time and a linear layer gives one logit.
The `last-step` variant (the paper's ablation) uses the last LSTM output instead.
`time_pooling = "mean"` (a small-data departure, docs/training.md) averages the attended
rows instead of summing them, so the logit's scale does not grow with the session's length.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from moodstream.model.config import SESSION_TIME_POOLINGS


class SessionHead(nn.Module):
    def __init__(self, input_size: int, hidden_size: int = 128, attention_size: int = 128,
                 variant: str = "self-attention", time_pooling: str = "sum") -> None:
        super().__init__()
        if time_pooling not in SESSION_TIME_POOLINGS:
            raise ValueError(f"time_pooling must be one of {SESSION_TIME_POOLINGS}, got {time_pooling!r}")
        self.input_size = input_size
        self.variant = variant
        self.time_pooling = time_pooling
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.query = nn.Linear(hidden_size, attention_size)
        self.key = nn.Linear(hidden_size, attention_size)
        self.value = nn.Linear(hidden_size, attention_size)
        self.scale = 1.0 / math.sqrt(attention_size)
        self.classifier = nn.Linear(attention_size if variant == "self-attention" else hidden_size, 1)

    def forward(self, segment_vectors: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """segment_vectors [B, N, D] (zero-padded after `lengths`) -> logits [B]."""
        batch, steps, _ = segment_vectors.shape
        if lengths is None:
            lengths = torch.full((batch,), steps, dtype=torch.long, device=segment_vectors.device)
        outputs, _ = self.lstm(segment_vectors)
        valid = torch.arange(steps, device=outputs.device)[None, :] < lengths[:, None]
        if self.variant == "last-step":
            last = outputs[torch.arange(batch, device=outputs.device), lengths - 1]
            return self.classifier(last).squeeze(-1)
        queries, keys, values = self.query(outputs), self.key(outputs), self.value(outputs)
        scores = (queries @ keys.transpose(1, 2)) * self.scale
        scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
        attended = torch.softmax(scores, dim=-1) @ values
        summed = (attended * valid[:, :, None].to(attended.dtype)).sum(dim=1)
        if self.time_pooling == "mean":
            summed = summed / lengths[:, None].to(summed.dtype)
        return self.classifier(summed).squeeze(-1)
