"""Downstream, session level: LSTM over segment vectors, self-attention, sum over time, linear.

Unidirectional LSTM; scaled dot-product self-attention with Q, K, V
projections of the LSTM outputs, every position attending to every position;
the attended rows are summed over time and a linear layer gives one logit.
The `last-step` variant (the paper's ablation) uses the last LSTM output instead.
`time_pooling = "mean"` (a small-data departure, docs/training.md) averages the attended
rows instead of summing them, so the logit's scale does not grow with the session's length.
`skip = "segment-mean"` (another small-data departure) adds the mean over the session's segments
of a linear score of each segment vector: a path around the LSTM and attention, which the
trainer starts from the segment head's classifier, so training begins at the averaged segment
evidence and the recurrent part learns what it adds to that.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from moodstream.model.config import SESSION_SKIPS, SESSION_TIME_POOLINGS, ModelConfig


class SessionHead(nn.Module):
    def __init__(self, input_size: int, hidden_size: int = 128, attention_size: int = 128,
                 variant: str = "self-attention", time_pooling: str = "sum", skip: str = "none") -> None:
        super().__init__()
        if time_pooling not in SESSION_TIME_POOLINGS:
            raise ValueError(f"time_pooling must be one of {SESSION_TIME_POOLINGS}, got {time_pooling!r}")
        if skip not in SESSION_SKIPS:
            raise ValueError(f"skip must be one of {SESSION_SKIPS}, got {skip!r}")
        self.input_size = input_size
        self.variant = variant
        self.time_pooling = time_pooling
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.query = nn.Linear(hidden_size, attention_size)
        self.key = nn.Linear(hidden_size, attention_size)
        self.value = nn.Linear(hidden_size, attention_size)
        self.scale = 1.0 / math.sqrt(attention_size)
        self.classifier = nn.Linear(attention_size if variant == "self-attention" else hidden_size, 1)
        self.segment_score = nn.Linear(input_size, 1) if skip == "segment-mean" else None

    @classmethod
    def from_config(cls, config: ModelConfig) -> "SessionHead":
        return cls(config.segment_vector_size, config.lstm_hidden_size, config.attention_size,
                   config.session_head, config.session_time_pooling, config.session_skip)

    @torch.no_grad()
    def start_from_segment_classifier(self, segment_classifier: nn.Linear) -> None:
        """The skip path takes the segment classifier's weights and the recurrent path's output starts at 0."""
        if self.segment_score is None:
            raise ValueError("this session head has no skip path")
        self.segment_score.load_state_dict(segment_classifier.state_dict())
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, segment_vectors: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """segment_vectors [B, N, D] (zero-padded after `lengths`) -> logits [B]."""
        recurrent, segment = self.logit_parts(segment_vectors, lengths)
        return recurrent + segment

    def logit_parts(self, segment_vectors: torch.Tensor,
                    lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The logit's two parts [B] each: the recurrent path's, and the skip path's mean segment score
        (the segment evidence; zeros without a skip path). The calibration weighs them apart."""
        batch, steps, _ = segment_vectors.shape
        if lengths is None:
            lengths = torch.full((batch,), steps, dtype=torch.long, device=segment_vectors.device)
        valid = torch.arange(steps, device=segment_vectors.device)[None, :] < lengths[:, None]
        recurrent = self.recurrent_logits(segment_vectors, lengths, valid)
        if self.segment_score is None:
            return recurrent, torch.zeros_like(recurrent)
        scores = self.segment_score(segment_vectors).squeeze(-1) * valid.to(segment_vectors.dtype)
        return recurrent, scores.sum(dim=1) / lengths.to(scores.dtype)

    def recurrent_logits(self, segment_vectors: torch.Tensor, lengths: torch.Tensor,
                         valid: torch.Tensor) -> torch.Tensor:
        batch, steps, _ = segment_vectors.shape
        outputs, _ = self.lstm(segment_vectors)
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
