"""The session calibration fitted on out-of-fold scores: the candidates, the choice and the interval.

The out-of-fold (OOF) set holds every prefix of every training session, scored by a model that never
heard the session's speaker (trainer/crossfit.py), as the session logit's two parts (recurrent,
segment evidence). Each session's prefixes share a weight of 1: a long session does not outweigh a
short one, and a session is one observation, as in the speaker resamples below.

Candidates, as the coefficients (recurrent scale, segment scale, bias) of model/calibration.py:

    none               (1, 1, 0)    the network's own probability
    temperature        (a, a, 0)
    platt              (a, a, b)
    segment-evidence   (0, c, b)    with a skip path only: the averaged segment evidence alone
    platt-parts        (a, c, b)    with a skip path only: the two parts weighed apart

Each is fitted by weighted logistic regression with a penalty of 0.5 * (scale - 1)^2 on each scale
(the strength of scikit-learn's C = 1 against a total weight of one per session; the bias is not
penalised), with the scales kept at or above 0 so that no fit turns the score round. The penalty pulls
towards the network's own scale, not towards 0: with little data a fit stays near the uncalibrated
score, and every candidate that contains (1, 1, 0) fits the OOF set at least as well as no calibration. The choice is the lowest OOF log loss under
speaker-grouped cross-validation over the OOF set (every speaker's rows scored by a fit that did not
see them), so a candidate is not judged on the rows it was fitted to; ties go to fewer parameters.

The interval: the chosen candidate refitted on `replicates` resamples of the OOF set, drawing speakers
with replacement (every session of a drawn speaker comes along), from a fixed seed. When no calibration
is chosen, temperature (the family that holds the uncalibrated score) is refitted instead, so every
cross-fitted checkpoint carries an interval.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# name -> (map from the fitted parameters to (recurrent scale, segment scale, bias), which parameters are scales)
CANDIDATES: dict[str, tuple[np.ndarray, tuple[bool, ...]]] = {
    "none": (np.zeros((3, 0)), ()),
    "temperature": (np.array([[1.0], [1.0], [0.0]]), (True,)),
    "platt": (np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), (True, False)),
    "segment-evidence": (np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), (True, False)),
    "platt-parts": (np.eye(3), (True, True, False)),
}
UNCALIBRATED = np.array([1.0, 1.0, 0.0])
NEEDS_SEGMENT_PART = ("segment-evidence", "platt-parts")
PENALTY = 1.0
SELECTION_FOLDS = 10


@dataclass
class OutOfFold:
    """Per training session: its id, speaker, label and logit parts [prefixes, 2] from a model without its speaker."""

    session_ids: list[str] = field(default_factory=list)
    speakers: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    parts: list[np.ndarray] = field(default_factory=list)

    def add(self, session_id: str, speaker: str, label: int, parts) -> None:
        self.session_ids.append(session_id)
        self.speakers.append(speaker)
        self.labels.append(int(label))
        self.parts.append(np.asarray(parts, dtype=np.float64).reshape(-1, 2))

    def __len__(self) -> int:
        return len(self.session_ids)

    @property
    def has_segment_part(self) -> bool:
        return any(np.any(p[:, 1] != 0) for p in self.parts)

    def rows(self, sessions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(design [N, 3] = recurrent, segment, 1; labels [N]; weights [N]) over the chosen sessions' prefixes."""
        chosen = range(len(self)) if sessions is None else sessions
        design = [np.column_stack([self.parts[i], np.ones(len(self.parts[i]))]) for i in chosen]
        labels = [np.full(len(self.parts[i]), self.labels[i], dtype=np.float64) for i in chosen]
        weights = [np.full(len(self.parts[i]), 1.0 / len(self.parts[i])) for i in chosen]
        if not design:
            return np.zeros((0, 3)), np.zeros(0), np.zeros(0)
        return np.concatenate(design), np.concatenate(labels), np.concatenate(weights)

    def summary(self) -> dict:
        return {"sessions": len(self), "speakers": len(set(self.speakers)), "positives": int(sum(self.labels)),
                "prefixes": int(sum(len(p) for p in self.parts))}


def log_losses(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, logits) - labels * logits


def weighted_log_loss(coefficients: np.ndarray, design: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    return float(np.sum(weights * log_losses(design @ coefficients, labels)) / np.sum(weights))


def fit_candidate(name: str, design: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(recurrent scale, segment scale, bias) of candidate `name` fitted to these weighted rows.

    The objective is convex, so its minimum under "scales >= 0" is the best of the unconstrained minima on
    each face (some scales held at 0) that keeps the other scales >= 0; each is found by damped Newton steps.
    """
    mapping, is_scale = CANDIDATES[name]
    if not is_scale:
        return UNCALIBRATED.copy()
    features = design @ mapping   # the logit is features @ parameters
    scale_at = [i for i, scale in enumerate(is_scale) if scale]
    best, best_loss = None, np.inf
    for held in range(1 << len(scale_at)):
        zeroed = [i for bit, i in enumerate(scale_at) if held >> bit & 1]
        free = [i for i in range(len(is_scale)) if i not in zeroed]
        parameters = np.asarray(is_scale, dtype=np.float64)
        parameters[zeroed] = 0.0
        parameters[free] = _newton(features[:, free], labels, weights, parameters[free],
                                   np.asarray([is_scale[i] for i in free], dtype=np.float64))
        if np.all(parameters[scale_at] >= 0):
            loss = _objective(features, labels, weights, parameters, np.asarray(is_scale, dtype=np.float64))
            if loss < best_loss:
                best, best_loss = parameters, loss
    return mapping @ best


def _objective(features, labels, weights, parameters, scales) -> float:
    return float(np.sum(weights * log_losses(features @ parameters, labels))
                 + 0.5 * PENALTY * np.sum((scales * (parameters - 1.0)) ** 2))


def _newton(features, labels, weights, start, scales, iterations: int = 100) -> np.ndarray:
    """The unconstrained minimum of the penalised weighted log loss over these parameters."""
    parameters = start.copy()
    if not len(parameters):
        return parameters
    current = _objective(features, labels, weights, parameters, scales)
    for _ in range(iterations):
        logits = features @ parameters
        p = 0.5 * (1.0 + np.tanh(0.5 * logits))
        gradient = features.T @ (weights * (p - labels)) + PENALTY * scales * (parameters - 1.0)
        hessian = (features * (weights * p * (1 - p))[:, None]).T @ features + np.diag(PENALTY * scales + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        length = 1.0
        while length > 1e-10:
            candidate = parameters - length * step
            loss = _objective(features, labels, weights, candidate, scales)
            if loss <= current:
                break
            length /= 2
        else:
            break
        parameters, improvement, current = candidate, current - loss, loss
        if improvement < 1e-13 * max(1.0, abs(current)) and np.max(np.abs(length * step)) < 1e-9:
            break
    return parameters


def candidates_for(oof: OutOfFold) -> list[str]:
    """The candidates this OOF set can tell apart (without a skip path the segment part is always 0)."""
    return [name for name in CANDIDATES if oof.has_segment_part or name not in NEEDS_SEGMENT_PART]


def cross_validated_log_losses(oof: OutOfFold, names: list[str], folds: int = SELECTION_FOLDS) -> dict[str, float]:
    """Each candidate's OOF log loss, every speaker's rows scored by a fit on the other speakers' rows.

    Speaker-grouped folds (at most `folds`, one speaker each when there are fewer speakers); a fold whose
    training rows hold one class only is left out for every candidate alike.
    """
    from sklearn.model_selection import GroupKFold

    speakers = np.asarray(oof.speakers)
    groups = len(set(oof.speakers))
    if groups < 2:
        return {}
    totals = {name: 0.0 for name in names}
    weight = 0.0
    splitter = GroupKFold(n_splits=min(folds, groups))
    for train, held_out in splitter.split(np.zeros(len(oof)), groups=speakers):
        design, labels, weights = oof.rows(train)
        if len(set(labels.tolist())) < 2:
            continue
        test_design, test_labels, test_weights = oof.rows(held_out)
        for name in names:
            coefficients = fit_candidate(name, design, labels, weights)
            totals[name] += float(np.sum(test_weights * log_losses(test_design @ coefficients, test_labels)))
        weight += float(np.sum(test_weights))
    if weight == 0:
        return {}
    return {name: total / weight for name, total in totals.items()}


def speaker_resamples(oof: OutOfFold, count: int, seed: int):
    """`count` resamples of the OOF sessions, drawing speakers with replacement; each holds both classes."""
    rng = np.random.default_rng(seed)
    speakers = sorted(set(oof.speakers))
    sessions_of = {s: np.flatnonzero(np.asarray(oof.speakers) == s) for s in speakers}
    labels = np.asarray(oof.labels)
    made = attempts = 0
    while made < count and attempts < 20 * count:
        attempts += 1
        chosen = np.concatenate([sessions_of[s] for s in rng.choice(speakers, size=len(speakers))])
        if len(set(labels[chosen].tolist())) == 2:
            made += 1
            yield chosen


@dataclass
class CalibrationFit:
    chosen: str
    coefficients: np.ndarray                 # (recurrent scale, segment scale, bias)
    replicates: np.ndarray                   # [B, 3]
    held_out_log_loss: dict[str, float]      # speaker-grouped cross-validated, per candidate
    in_sample_log_loss: dict[str, float]     # fitted and scored on the whole OOF set, per candidate
    coefficients_by_candidate: dict[str, list[float]]
    note: str | None = None
    interval_from: str | None = None          # the candidate refitted for the replicates

    def notes(self) -> dict:
        return {"chosen": self.chosen, "coefficients": [float(x) for x in self.coefficients],
                "held_out_log_loss": self.held_out_log_loss, "in_sample_log_loss": self.in_sample_log_loss,
                "coefficients_by_candidate": self.coefficients_by_candidate,
                "replicates": int(len(self.replicates)), "interval_from": self.interval_from,
                **({"note": self.note} if self.note else {})}


def fit_calibration(oof: OutOfFold, replicates: int, seed: int) -> CalibrationFit:
    """Fit every candidate on the OOF set, choose by cross-validated log loss, and make the interval's replicates."""
    design, labels, weights = oof.rows()
    if len(set(labels.tolist())) < 2:
        return CalibrationFit("none", UNCALIBRATED.copy(), np.zeros((0, 3)), {}, {}, {},
                              note="the out-of-fold set holds one class only: left uncalibrated")
    names = candidates_for(oof)
    fitted = {name: fit_candidate(name, design, labels, weights) for name in names}
    in_sample = {name: weighted_log_loss(c, design, labels, weights) for name, c in fitted.items()}
    held_out = cross_validated_log_losses(oof, names)
    note = None
    if not held_out:
        note = "too few speakers to cross-validate the choice: chosen on the out-of-fold set itself"
        scores = in_sample
    else:
        scores = held_out
    chosen = min(names, key=lambda name: (round(scores[name], 12), names.index(name)))
    # No calibration has no parameters to refit: its interval comes from temperature, the family that holds it.
    interval_from = "temperature" if chosen == "none" else chosen
    rows = np.zeros((0, 3))
    if replicates:
        rows = np.asarray([fit_candidate(interval_from, *oof.rows(sample))
                           for sample in speaker_resamples(oof, replicates, seed)]).reshape(-1, 3)
    return CalibrationFit(chosen, fitted[chosen], rows, held_out, in_sample,
                          {name: [float(x) for x in c] for name, c in fitted.items()}, note, interval_from)


def describe(fit: CalibrationFit) -> str:
    """One line for the console and the report."""
    losses = ", ".join(f"{name} {loss:.3f}" for name, loss in (fit.held_out_log_loss or fit.in_sample_log_loss).items())
    r, s, b = fit.coefficients
    return (f"calibration {fit.chosen} (recurrent x {r:.3g}, segment evidence x {s:.3g}, bias {b:+.3g}); "
            f"out-of-fold log loss {losses}" + (f"; {fit.note}" if fit.note else ""))
