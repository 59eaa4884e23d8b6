"""The session probability's calibration and the interval around it (docs/calibration.md).

The session head's logit has two parts: the recurrent part (LSTM + self-attention) and, with the
small-data recipe's skip path, the mean of the session's segment scores (the segment evidence). The
calibration weighs them separately::

    probability = sigmoid(recurrent_scale * recurrent + segment_scale * segment + bias)

so a fit on speakers the model never saw can decide how much the recurrent part's certainty is worth
against the averaged segment evidence. (1, 1, 0) is uncalibrated; a checkpoint calibrated before the
two parts were weighed apart stores one scale for both.

The interval: the trainer refits the same calibration on resamples of its out-of-fold set (the
`replicates`); the interval is the central `level` share of the probabilities they give, widened to hold
the probability itself. The batch scorer and the incremental scorer both call this module with the two
parts, so they compute the same interval.

numpy only: the server's incremental scorer calls it on every segment.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

DEFAULT_INTERVAL_LEVEL = 0.9


@dataclass(frozen=True)
class SessionScore:
    """The session probability after some segments, and its interval (None without replicates)."""

    probability: float
    low: float | None = None
    high: float | None = None
    level: float | None = None

    @property
    def has_interval(self) -> bool:
        return self.low is not None


@dataclass(frozen=True)
class SessionCalibration:
    recurrent_scale: float = 1.0
    segment_scale: float = 1.0
    bias: float = 0.0
    # [K, 3]: (recurrent_scale, segment_scale, bias) refitted on resamples of the out-of-fold set.
    replicates: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    level: float = DEFAULT_INTERVAL_LEVEL

    @classmethod
    def of(cls, config) -> "SessionCalibration":
        """The calibration a ModelConfig carries."""
        segment_scale = config.calibration_segment_scale
        return cls(recurrent_scale=float(config.calibration_scale),
                   segment_scale=float(config.calibration_scale if segment_scale is None else segment_scale),
                   bias=float(config.calibration_bias),
                   replicates=np.asarray(config.calibration_replicates, dtype=np.float64).reshape(-1, 3),
                   level=float(config.interval_level))

    def logit(self, recurrent: float, segment: float) -> float:
        return self.recurrent_scale * recurrent + self.segment_scale * segment + self.bias

    def probability(self, recurrent: float, segment: float) -> float:
        return _sigmoid(self.logit(recurrent, segment))

    def probabilities(self, recurrent: np.ndarray, segment: np.ndarray) -> np.ndarray:
        """probability() over arrays of the two parts (every prefix of a session, say)."""
        logits = self.recurrent_scale * np.asarray(recurrent, np.float64) + \
            self.segment_scale * np.asarray(segment, np.float64) + self.bias
        return 0.5 * (1.0 + np.tanh(0.5 * logits))

    def score(self, recurrent: float, segment: float) -> SessionScore:
        probability = self.probability(recurrent, segment)
        if not len(self.replicates):
            return SessionScore(probability)
        logits = self.replicates @ np.array([recurrent, segment, 1.0])
        probabilities = 0.5 * (1.0 + np.tanh(0.5 * logits))
        tail = (1.0 - self.level) / 2
        low, high = np.quantile(probabilities, [tail, 1.0 - tail])
        return SessionScore(probability, min(float(low), probability), max(float(high), probability), self.level)


def _sigmoid(logit: float) -> float:
    return 0.5 * (1.0 + math.tanh(0.5 * logit))
