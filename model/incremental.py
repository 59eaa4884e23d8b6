"""Exact incremental session scoring.

The LSTM is unidirectional, so its (h, c) carry over. Self-attention is
non-causal and summed over time: a new segment adds one key to every earlier
row and one new row. Per query row i the state keeps an online-softmax triple
(running max m_i, denominator l_i, numerator vector acc_i), plus Q, K, V.
One step costs O(n*d) instead of the O(n^2*d) of recomputing, and the
probability after every step equals the batch forward over the same segments
to float tolerance.

What a server stores per session is split by how it grows (see
docs/scorer-state.md): the *head* (model version, segment count, the LSTM's
h and c, a checksum of the rows, the running sum of the skip path's segment
scores) is O(d) and rewritten after each segment;
the *rows* (each segment's q, k, v) only ever grow, one O(d) record per
segment. The per-row online-softmax sums change for every row at each step,
so they are not stored: `IncrementalScorer.restore` rebuilds them by running
the same update over the stored rows, which gives the very same numbers.
"""
from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from moodstream.model.calibration import SessionCalibration, SessionScore
from moodstream.model.errors import StateError
from moodstream.model.session_head import SessionHead

STATE_MAGIC = b"MSSS"
STATE_FORMAT_VERSION = 2
# Format 1 whole states (before the skip path's sum was stored) are read as a sum of 0: they were written
# only by releases that could not load a model with a skip path, and a state is pinned to its model.
READABLE_STATE_FORMATS = (1, 2)
_VARIANT_CODES = {"self-attention": 0, "last-step": 1}
_HEADER = struct.Struct("<4sHBB III")  # magic, format, variant, version length, n, hidden, attention
_MAX_WIDTH = 1 << 16  # far above any session head; larger widths in a state are corruption, not a model
HEAD_MAGIC = b"MSSH"
HEAD_FORMAT_VERSION = 3
# Format 2 heads (before the skip path's sum was stored) are read as a sum of 0.
READABLE_HEAD_FORMATS = (2, 3)
_SUM = struct.Struct("<d")
# magic, format, variant, version length, n, hidden, attention, CRC-32 of the rows
_HEAD_HEADER = struct.Struct("<4sHBB IIII")


class _RowBuffer:
    """Append-only rows with spare capacity, shared by successive states of one session.

    A state sees the first `n` rows. Appending to the state that owns the buffer's
    end writes in place (amortised O(d)); appending to an older state (a retried or
    forked step) copies its rows first, so no state ever sees another's rows change.
    """

    __slots__ = ("data", "used")

    def __init__(self, data: np.ndarray, used: int) -> None:
        self.data = data
        self.used = used

    @classmethod
    def of(cls, rows: np.ndarray) -> "_RowBuffer":
        rows = np.asarray(rows, dtype=np.float32)
        data = np.empty((max(2 * rows.shape[0], 16), rows.shape[1]), dtype=np.float32)
        data[: rows.shape[0]] = rows
        return cls(data, rows.shape[0])

    def appended(self, n: int, row: np.ndarray) -> "_RowBuffer":
        buffer = self
        if self.used != n or n == self.data.shape[0]:
            data = np.empty((max(2 * (n + 1), 16), self.data.shape[1]), dtype=np.float32)
            data[:n] = self.data[:n]
            buffer = _RowBuffer(data, n)
        buffer.data[n] = row
        buffer.used = n + 1
        return buffer


@dataclass(eq=False)
class ScorerState:
    """Everything needed to add the next segment of one session. float32 numpy arrays throughout."""

    model_version: str
    variant: str
    h: np.ndarray                   # [hidden]
    c: np.ndarray                   # [hidden]
    row_max: np.ndarray             # [n]   running max m_i of row i's scores
    row_denominator: np.ndarray     # [n]   l_i = sum_j exp(s_ij - m_i)
    row_numerator: np.ndarray       # [n, attention] acc_i = sum_j exp(s_ij - m_i) v_j
    segments: int
    _queries: _RowBuffer
    _keys: _RowBuffer
    _values: _RowBuffer
    rows_checksum: int = 0          # CRC-32 of row_bytes(0), kept up to date one row at a time
    segment_score_sum: float = 0.0  # the skip path's segment scores summed so far (0 without one)

    @classmethod
    def create(cls, model_version: str, variant: str, h, c, queries, keys, values,
               row_max, row_denominator, row_numerator, segments: int | None = None) -> "ScorerState":
        def f32(array) -> np.ndarray:
            if torch.is_tensor(array):
                array = array.detach().cpu().numpy()
            return np.ascontiguousarray(array, dtype=np.float32)

        queries, keys, values = f32(queries), f32(keys), f32(values)
        state = cls(model_version, variant, f32(h), f32(c), f32(row_max), f32(row_denominator),
                    f32(row_numerator), queries.shape[0] if segments is None else segments,
                    _RowBuffer.of(queries), _RowBuffer.of(keys),
                    _RowBuffer.of(values))
        state.rows_checksum = zlib.crc32(state.row_bytes())
        return state

    @property
    def queries(self) -> np.ndarray:   # [n, attention]
        return self._queries.data[: self.rows]

    @property
    def keys(self) -> np.ndarray:      # [n, attention]
        return self._keys.data[: self.rows]

    @property
    def values(self) -> np.ndarray:    # [n, attention]
        return self._values.data[: self.rows]

    @property
    def rows(self) -> int:
        """How many q/k/v rows the state holds (0 for the last-step head, which attends to nothing)."""
        return self.segments if self.variant == "self-attention" else 0

    def row_bytes(self, start: int = 0) -> bytes:
        """Rows start.. as records of q, k, v (little-endian float32): what a store appends."""
        if not 0 <= start <= self.rows:
            raise ValueError(f"row {start} is outside 0..{self.rows}")
        stacked = np.concatenate([self.queries[start:self.rows], self.keys[start:self.rows],
                                  self.values[start:self.rows]], axis=1)
        return np.ascontiguousarray(stacked, dtype="<f4").tobytes()

    def head_bytes(self) -> bytes:
        """The O(d) part: model version, segment count, h, c, the rows' checksum and the skip path's sum;
        versioned and checksummed."""
        version = self._version_bytes()
        header = _HEAD_HEADER.pack(HEAD_MAGIC, HEAD_FORMAT_VERSION, _VARIANT_CODES[self.variant], len(version),
                                   self.segments, self.h.size, self.queries.shape[1], self.rows_checksum)
        payload = b"".join([header, version, np.ascontiguousarray(self.h, dtype="<f4").tobytes(),
                            np.ascontiguousarray(self.c, dtype="<f4").tobytes(), _SUM.pack(self.segment_score_sum)])
        return payload + struct.pack("<I", zlib.crc32(payload))

    def _version_bytes(self) -> bytes:
        version = self.model_version.encode("utf-8")
        if len(version) > 255:
            raise StateError("model_version is too long to serialise (max 255 bytes)")
        return version

    def to_bytes(self) -> bytes:
        """The whole state in one blob (format 2, O(n*d)): a snapshot; servers store head_bytes + row_bytes."""
        version = self._version_bytes()
        header = _HEADER.pack(STATE_MAGIC, STATE_FORMAT_VERSION, _VARIANT_CODES[self.variant], len(version),
                              self.segments, self.h.size, self.queries.shape[1])
        arrays = [self.h, self.c, self.queries, self.keys, self.values,
                  self.row_max, self.row_denominator, self.row_numerator]
        payload = b"".join([header, version, *(np.ascontiguousarray(a, dtype="<f4").tobytes() for a in arrays),
                            _SUM.pack(self.segment_score_sum)])
        return payload + struct.pack("<I", zlib.crc32(payload))

    @staticmethod
    def is_head(data: bytes) -> bool:
        """Whether `data` is a head (magic MSSH) rather than a whole state (magic MSSS)."""
        return data[:4] == HEAD_MAGIC

    @classmethod
    def from_bytes(cls, data: bytes, expected_model_version: str | None = None) -> "ScorerState":
        if cls.is_head(data):
            raise StateError("these bytes are a scorer state head; load them with IncrementalScorer.restore")
        if len(data) < _HEADER.size + 4:
            raise StateError(f"scorer state is truncated ({len(data)} bytes)")
        payload, (checksum,) = data[:-4], struct.unpack("<I", data[-4:])
        if zlib.crc32(payload) != checksum:
            raise StateError("scorer state is corrupt (checksum mismatch)")
        magic, fmt, variant_code, version_len, n, hidden, attention = _HEADER.unpack_from(payload)
        if magic != STATE_MAGIC:
            raise StateError("bytes are not a moodstream scorer state")
        if fmt not in READABLE_STATE_FORMATS:
            raise StateError(f"scorer state format {fmt} is not supported "
                             f"(this build reads {', '.join(map(str, READABLE_STATE_FORMATS))})")
        variants = {code: name for name, code in _VARIANT_CODES.items()}
        if variant_code not in variants:
            raise StateError(f"unknown session-head variant code {variant_code}")
        if not (0 < hidden <= _MAX_WIDTH and 0 < attention <= _MAX_WIDTH):
            # Checked before anything is allocated: a state of 0 segments is short whatever its widths say.
            raise StateError(f"scorer state has implausible widths (hidden {hidden}, attention {attention})")
        model_version, offset = _model_version_at(payload, _HEADER.size, version_len, "scorer state")
        if expected_model_version is not None and model_version != expected_model_version:
            raise StateError(f"scorer state belongs to model {model_version!r}, not {expected_model_version!r}")
        rows = n if variants[variant_code] == "self-attention" else 0  # the last-step head keeps no rows
        shapes = [(hidden,), (hidden,), (rows, attention), (rows, attention), (rows, attention), (rows,), (rows,),
                  (rows, attention)]
        expected = offset + 4 * sum(int(np.prod(s)) for s in shapes) + (_SUM.size if fmt >= 2 else 0)
        if len(payload) != expected:
            raise StateError(f"scorer state has {len(payload)} bytes, expected {expected}")
        arrays = []
        for shape in shapes:
            count = int(np.prod(shape))
            arrays.append(np.frombuffer(payload, dtype="<f4", count=count, offset=offset).reshape(shape))
            offset += 4 * count
        if not all(np.isfinite(array).all() for array in arrays):
            raise StateError("scorer state holds NaN or infinite values")
        score_sum = _SUM.unpack_from(payload, offset)[0] if fmt >= 2 else 0.0
        if not math.isfinite(score_sum):
            raise StateError("scorer state holds NaN or infinite values")
        h, c, queries, keys, values, row_max, row_denominator, row_numerator = arrays
        state = cls.create(model_version, variants[variant_code], h, c, queries, keys, values,
                           row_max, row_denominator, row_numerator, segments=n)
        state.segment_score_sum = score_sum
        return state


class IncrementalScorer:
    """Steps one session's score forward one segment vector at a time.

    The step runs in numpy on a float32 copy of the head's weights taken here
    (a step is a few hundred tiny operations, where torch's per-call overhead
    would dominate); build a new scorer after changing the head's weights.
    """

    def __init__(self, head: SessionHead, model_version: str = "",
                 calibration: SessionCalibration | None = None) -> None:
        self.head = head
        self.model_version = model_version

        def weights(tensor: torch.Tensor) -> np.ndarray:
            return tensor.detach().to("cpu", torch.float32).numpy().copy()

        lstm = head.lstm
        self._w_input = weights(lstm.weight_ih_l0).T.copy()          # [in, 4h], gates i, f, g, o
        self._w_hidden = weights(lstm.weight_hh_l0).T.copy()         # [h, 4h]
        self._gate_bias = weights(lstm.bias_ih_l0) + weights(lstm.bias_hh_l0)
        self._w_qkv = np.concatenate([weights(layer.weight).T for layer in (head.query, head.key, head.value)],
                                     axis=1)                          # [h, 3a]
        self._b_qkv = np.concatenate([weights(layer.bias) for layer in (head.query, head.key, head.value)])
        self.calibration = calibration or SessionCalibration()
        self._w_out = weights(head.classifier.weight)[0]
        self._b_out = float(head.classifier.bias.detach()[0])
        self._scale = np.float32(head.scale)
        self._w_skip = None if head.segment_score is None else weights(head.segment_score.weight)[0]
        self._b_skip = 0.0 if head.segment_score is None else float(head.segment_score.bias.detach()[0])

    @property
    def vector_size(self) -> int:
        return self.head.input_size

    def init_state(self) -> ScorerState:
        hidden = self.head.lstm.hidden_size
        attention = self.head.query.out_features
        empty = np.zeros((0, attention), dtype=np.float32)
        return ScorerState.create(self.model_version, self.head.variant, np.zeros(hidden), np.zeros(hidden),
                                  empty, empty, empty, np.zeros(0), np.zeros(0), empty)

    def check_vector(self, vector) -> np.ndarray:
        if torch.is_tensor(vector):
            vector = vector.detach().cpu().numpy()
        array = np.asarray(vector)
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"segment vector must be numeric, got dtype {array.dtype}")
        array = array.astype(np.float32, copy=False)
        if array.ndim != 1 or array.shape[0] != self.vector_size:
            raise ValueError(f"segment vector must have shape ({self.vector_size},), got {tuple(array.shape)}")
        if not np.isfinite(array).all():
            raise ValueError("segment vector contains NaN or infinite values")
        return array

    def check_state(self, state: ScorerState) -> None:
        """StateError unless `state` can be stepped by this scorer (variant, model, widths)."""
        if state.variant != self.head.variant:
            raise StateError(f"state is for a {state.variant!r} head, this scorer has {self.head.variant!r}")
        if state.model_version != self.model_version:
            raise StateError(f"state belongs to model {state.model_version!r}, not {self.model_version!r}")
        hidden, attention = self._w_hidden.shape[0], self._w_qkv.shape[1] // 3
        widths = (state.h.shape[0], state.c.shape[0], state._queries.data.shape[1], state._keys.data.shape[1],
                  state._values.data.shape[1], state.row_numerator.shape[1])
        if widths != (hidden, hidden, attention, attention, attention, attention):
            raise StateError(f"state widths {widths} do not fit this scorer (hidden {hidden}, attention {attention})")

    def step(self, state: ScorerState, vector) -> tuple[ScorerState, float]:
        """Add one segment vector; returns the new state and the session probability. `state` stays valid."""
        new_state, score = self.step_scored(state, vector)
        return new_state, score.probability

    def step_scored(self, state: ScorerState, vector) -> tuple[ScorerState, SessionScore]:
        """step(), with the probability's interval (docs/calibration.md) beside it."""
        self.check_state(state)
        x = self.check_vector(vector)
        gates = x @ self._w_input + state.h @ self._w_hidden + self._gate_bias
        size = state.h.shape[0]
        i, f, g, o = (gates[j * size:(j + 1) * size] for j in range(4))
        c = _sigmoid(f) * state.c + _sigmoid(i) * np.tanh(g)
        h = (_sigmoid(o) * np.tanh(c)).astype(np.float32)
        c = c.astype(np.float32)
        n = state.segments
        score_sum, segment_evidence = state.segment_score_sum, 0.0
        if self._w_skip is not None:
            score_sum += float(x @ self._w_skip) + self._b_skip
            segment_evidence = score_sum / (n + 1)
        if self.head.variant == "last-step":
            recurrent = float(h @ self._w_out) + self._b_out
            new_state = ScorerState(self.model_version, state.variant, h, c, state.row_max, state.row_denominator,
                                    state.row_numerator, n + 1, state._queries, state._keys, state._values,
                                    segment_score_sum=score_sum)
            return new_state, self.calibration.score(recurrent, segment_evidence)

        projected = h @ self._w_qkv + self._b_qkv
        width = projected.shape[0] // 3
        q, k, v = projected[:width], projected[width:2 * width], projected[2 * width:]
        new_state = self._attend(state, h, c, q, k, v)
        new_state.rows_checksum = zlib.crc32(new_state.row_bytes(n), state.rows_checksum)
        new_state.segment_score_sum = score_sum
        summed = (1.0 / new_state.row_denominator) @ new_state.row_numerator
        if self.head.time_pooling == "mean":
            summed = summed / np.float32(n + 1)
        recurrent = float(summed @ self._w_out) + self._b_out
        return new_state, self.calibration.score(recurrent, segment_evidence)

    def _attend(self, state: ScorerState, h, c, q, k, v) -> ScorerState:
        """`state` plus one row (q, k, v): the one online-softmax update, shared by step and restore."""
        n = state.segments
        # Existing rows gain one key: rescale each row's running sums to the new max.
        old_scores = (state.queries @ k) * self._scale
        new_max = np.maximum(state.row_max, old_scores)
        keep = np.exp(state.row_max - new_max)
        add = np.exp(old_scores - new_max)
        queries = state._queries.appended(n, q)
        keys = state._keys.appended(n, k)
        values = state._values.appended(n, v)
        # The new row attends to every key, itself included.
        row_scores = (keys.data[: n + 1] @ q) * self._scale
        row_max = row_scores.max()
        weights = np.exp(row_scores - row_max)

        row_max_all = np.empty(n + 1, dtype=np.float32)
        row_max_all[:n], row_max_all[n] = new_max, row_max
        denominators = np.empty(n + 1, dtype=np.float32)
        denominators[:n] = state.row_denominator * keep + add
        denominators[n] = weights.sum()
        numerators = np.empty((n + 1, v.shape[0]), dtype=np.float32)
        np.multiply(state.row_numerator, keep[:, None], out=numerators[:n])
        numerators[:n] += add[:, None] * v
        numerators[n] = weights @ values.data[: n + 1]
        return ScorerState(self.model_version, state.variant, h, c, row_max_all, denominators, numerators,
                           n + 1, queries, keys, values)

    def restore(self, head: bytes, rows: bytes = b"") -> ScorerState:
        """The state a server stored as `head_bytes()` plus every `row_bytes()` record, in order.

        Raises StateError when the head is corrupt, from another model or format, or
        disagrees with the rows (count or checksum). The softmax sums are rebuilt by the
        same update `step` runs, so the restored state continues exactly as the original.
        """
        if len(head) < _HEAD_HEADER.size + 4:
            raise StateError(f"scorer state head is truncated ({len(head)} bytes)")
        payload, (checksum,) = head[:-4], struct.unpack("<I", head[-4:])
        if zlib.crc32(payload) != checksum:
            raise StateError("scorer state head is corrupt (checksum mismatch)")
        magic, fmt, variant_code, version_len, n, hidden, attention, rows_checksum = _HEAD_HEADER.unpack_from(payload)
        if magic != HEAD_MAGIC:
            raise StateError("bytes are not a moodstream scorer state head")
        if fmt not in READABLE_HEAD_FORMATS:
            raise StateError(f"scorer state head format {fmt} is not supported "
                             f"(this build reads {', '.join(map(str, READABLE_HEAD_FORMATS))})")
        model_version, offset = _model_version_at(payload, _HEAD_HEADER.size, version_len, "scorer state head")
        variants = {code: name for name, code in _VARIANT_CODES.items()}
        if variants.get(variant_code) != self.head.variant:
            raise StateError(f"state is for session-head variant code {variant_code}, "
                             f"this scorer has {self.head.variant!r}")
        if model_version != self.model_version:
            raise StateError(f"state belongs to model {model_version!r}, not {self.model_version!r}")
        expected_hidden, expected_attention = self._w_hidden.shape[0], self._w_qkv.shape[1] // 3
        if (hidden, attention) != (expected_hidden, expected_attention):
            raise StateError(f"state widths (hidden {hidden}, attention {attention}) do not fit this scorer "
                             f"(hidden {expected_hidden}, attention {expected_attention})")
        expected = offset + 8 * hidden + (_SUM.size if fmt >= 3 else 0)
        if len(payload) != expected:
            raise StateError(f"scorer state head has {len(head)} bytes, expected {expected + 4}")
        h = np.frombuffer(payload, dtype="<f4", count=hidden, offset=offset).astype(np.float32)
        c = np.frombuffer(payload, dtype="<f4", count=hidden, offset=offset + 4 * hidden).astype(np.float32)
        score_sum = _SUM.unpack_from(payload, offset + 8 * hidden)[0] if fmt >= 3 else 0.0
        if not math.isfinite(score_sum):
            raise StateError("scorer state holds NaN or infinite values")
        if fmt < 3 and self._w_skip is not None and n > 0:
            raise StateError(f"a format-{fmt} head has no sum for this model's skip path")
        row_count = n if self.head.variant == "self-attention" else 0
        if len(rows) != row_count * 12 * attention:
            raise StateError(f"scorer state has {len(rows)} bytes of rows for {row_count} rows, "
                             f"expected {row_count * 12 * attention}")
        if zlib.crc32(rows) != rows_checksum:
            raise StateError("scorer state rows are corrupt or do not belong to this head (checksum mismatch)")
        records = np.frombuffer(rows, dtype="<f4").astype(np.float32).reshape(row_count, 3 * attention)
        if not (np.isfinite(h).all() and np.isfinite(c).all() and np.isfinite(records).all()):
            raise StateError("scorer state holds NaN or infinite values")
        state = self.init_state()
        for q, k, v in zip(records[:, :attention], records[:, attention:2 * attention], records[:, 2 * attention:]):
            state = self._attend(state, state.h, state.c, q, k, v)
        state.h, state.c, state.segments = h, c, n
        state.rows_checksum, state.segment_score_sum = rows_checksum, score_sum
        return state


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _model_version_at(payload: bytes, offset: int, length: int, what: str) -> tuple[str, int]:
    """The model version a state or head stores at `offset`, and the offset after it."""
    try:
        return payload[offset:offset + length].decode("utf-8"), offset + length
    except UnicodeDecodeError as error:
        raise StateError(f"{what} has a malformed model version") from error
