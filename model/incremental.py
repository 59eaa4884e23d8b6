"""Exact incremental session scoring.

The LSTM is unidirectional, so its (h, c) carry over. Self-attention is
non-causal and summed over time: a new segment adds one key to every earlier
row and one new row. Per query row i the state keeps an online-softmax triple
(running max m_i, denominator l_i, numerator vector acc_i), plus Q, K, V.
One step costs O(n*d) instead of the O(n^2*d) of recomputing, and the
probability after every step equals the batch forward over the same segments
to float tolerance.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from moodstream.model.errors import StateError
from moodstream.model.session_head import SessionHead

STATE_MAGIC = b"MSSS"
STATE_FORMAT_VERSION = 1
_VARIANT_CODES = {"self-attention": 0, "last-step": 1}
_HEADER = struct.Struct("<4sHBB III")  # magic, format, variant, version length, n, hidden, attention


@dataclass
class ScorerState:
    """Everything needed to add the next segment of one session. float32 throughout."""

    model_version: str
    variant: str
    h: torch.Tensor                 # [hidden]
    c: torch.Tensor                 # [hidden]
    queries: torch.Tensor           # [n, attention]
    keys: torch.Tensor              # [n, attention]
    values: torch.Tensor            # [n, attention]
    row_max: torch.Tensor           # [n]   running max m_i of row i's scores
    row_denominator: torch.Tensor   # [n]   l_i = sum_j exp(s_ij - m_i)
    row_numerator: torch.Tensor     # [n, attention] acc_i = sum_j exp(s_ij - m_i) v_j
    segments: int = 0

    def to_bytes(self) -> bytes:
        version = self.model_version.encode("utf-8")
        if len(version) > 255:
            raise StateError("model_version is too long to serialise (max 255 bytes)")
        header = _HEADER.pack(STATE_MAGIC, STATE_FORMAT_VERSION, _VARIANT_CODES[self.variant], len(version),
                              self.segments, self.h.numel(), self.queries.shape[1])
        arrays = [self.h, self.c, self.queries, self.keys, self.values,
                  self.row_max, self.row_denominator, self.row_numerator]
        body = b"".join(np.ascontiguousarray(a.detach().cpu().numpy(), dtype="<f4").tobytes() for a in arrays)
        payload = header + version + body
        return payload + struct.pack("<I", zlib.crc32(payload))

    @classmethod
    def from_bytes(cls, data: bytes, expected_model_version: str | None = None) -> "ScorerState":
        if len(data) < _HEADER.size + 4:
            raise StateError(f"scorer state is truncated ({len(data)} bytes)")
        payload, (checksum,) = data[:-4], struct.unpack("<I", data[-4:])
        if zlib.crc32(payload) != checksum:
            raise StateError("scorer state is corrupt (checksum mismatch)")
        magic, fmt, variant_code, version_len, n, hidden, attention = _HEADER.unpack_from(payload)
        if magic != STATE_MAGIC:
            raise StateError("bytes are not a moodstream scorer state")
        if fmt != STATE_FORMAT_VERSION:
            raise StateError(f"scorer state format {fmt} is not supported (this build reads {STATE_FORMAT_VERSION})")
        variants = {code: name for name, code in _VARIANT_CODES.items()}
        if variant_code not in variants:
            raise StateError(f"unknown session-head variant code {variant_code}")
        offset = _HEADER.size
        model_version = payload[offset:offset + version_len].decode("utf-8")
        offset += version_len
        if expected_model_version is not None and model_version != expected_model_version:
            raise StateError(f"scorer state belongs to model {model_version!r}, not {expected_model_version!r}")
        shapes = [(hidden,), (hidden,), (n, attention), (n, attention), (n, attention), (n,), (n,), (n, attention)]
        expected = offset + 4 * sum(int(np.prod(s)) for s in shapes)
        if len(payload) != expected:
            raise StateError(f"scorer state has {len(payload)} bytes, expected {expected}")
        arrays = []
        for shape in shapes:
            count = int(np.prod(shape))
            arrays.append(torch.from_numpy(
                np.frombuffer(payload, dtype="<f4", count=count, offset=offset).astype(np.float32).reshape(shape)))
            offset += 4 * count
        return cls(model_version, variants[variant_code], *arrays, segments=n)


class IncrementalScorer:
    """Steps one session's score forward one segment vector at a time."""

    def __init__(self, head: SessionHead, model_version: str = "") -> None:
        self.head = head
        self.model_version = model_version

    @property
    def vector_size(self) -> int:
        return self.head.input_size

    def init_state(self) -> ScorerState:
        hidden = self.head.lstm.hidden_size
        attention = self.head.query.out_features
        empty = torch.zeros(0, attention)
        return ScorerState(
            model_version=self.model_version,
            variant=self.head.variant,
            h=torch.zeros(hidden), c=torch.zeros(hidden),
            queries=empty, keys=empty.clone(), values=empty.clone(),
            row_max=torch.zeros(0), row_denominator=torch.zeros(0), row_numerator=empty.clone(),
        )

    def check_vector(self, vector) -> torch.Tensor:
        tensor = torch.as_tensor(np.asarray(vector, dtype=np.float32) if not torch.is_tensor(vector) else vector)
        tensor = tensor.detach().to(torch.float32).cpu()
        if tensor.ndim != 1 or tensor.shape[0] != self.vector_size:
            raise ValueError(f"segment vector must have shape ({self.vector_size},), got {tuple(tensor.shape)}")
        if not torch.isfinite(tensor).all():
            raise ValueError("segment vector contains NaN or infinite values")
        return tensor

    @torch.no_grad()
    def step(self, state: ScorerState, vector) -> tuple[ScorerState, float]:
        """Add one segment vector; returns the new state and the session probability."""
        if state.variant != self.head.variant:
            raise StateError(f"state is for a {state.variant!r} head, this scorer has {self.head.variant!r}")
        if state.model_version != self.model_version:
            raise StateError(f"state belongs to model {state.model_version!r}, not {self.model_version!r}")
        x = self.check_vector(vector)
        head = self.head
        output, (h, c) = head.lstm(x[None, None, :], (state.h[None, None, :], state.c[None, None, :]))
        out = output[0, 0]
        h, c = h[0, 0], c[0, 0]
        if head.variant == "last-step":
            logit = head.classifier(out)[0]
            new_state = ScorerState(self.model_version, state.variant, h, c, state.queries, state.keys,
                                    state.values, state.row_max, state.row_denominator, state.row_numerator,
                                    segments=state.segments + 1)
            return new_state, float(torch.sigmoid(logit))

        q, k, v = head.query(out), head.key(out), head.value(out)
        # Existing rows gain one key: rescale each row's running sums to the new max.
        old_scores = (state.queries @ k) * head.scale
        new_max = torch.maximum(state.row_max, old_scores)
        keep = torch.exp(state.row_max - new_max)
        add = torch.exp(old_scores - new_max)
        denominators = state.row_denominator * keep + add
        numerators = state.row_numerator * keep[:, None] + add[:, None] * v[None, :]
        # The new row attends to every key, itself included.
        keys = torch.cat([state.keys, k[None]])
        values = torch.cat([state.values, v[None]])
        row_scores = (keys @ q) * head.scale
        row_max = row_scores.max()
        weights = torch.exp(row_scores - row_max)
        new_row_numerator = weights @ values

        row_max_all = torch.cat([new_max, row_max[None]])
        denominators = torch.cat([denominators, weights.sum()[None]])
        numerators = torch.cat([numerators, new_row_numerator[None]])
        summed = (numerators / denominators[:, None]).sum(dim=0)
        logit = head.classifier(summed)[0]
        new_state = ScorerState(self.model_version, state.variant, h, c,
                                torch.cat([state.queries, q[None]]), keys, values,
                                row_max_all, denominators, numerators, segments=state.segments + 1)
        return new_state, float(torch.sigmoid(logit))
