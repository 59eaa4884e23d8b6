"""Cross-fitting: out-of-fold scores of every training speaker, and what is fitted on them (docs/calibration.md).

The checkpoint is trained on every training speaker, so its calibration, decision threshold and evidence
rule cannot be fitted on its training sessions (it has heard them), and the validation sessions are few
and already used for early stopping. So the training sessions are split into k speaker-disjoint inner
folds (`scoring.inner_folds`); for each, the networks are retrained without that fold (the validation
sessions still early-stop them) and score the fold's sessions after every prefix. Every training
session gets the scores of a model that never heard its speaker: the out-of-fold (OOF) set.

On it: the calibration and its interval (trainer/calibration_fit.py); the decision threshold, the one
that maximises F1 over the calibrated OOF whole-session probabilities (trainer/metrics.py
choose_threshold); and the evidence rule over the calibrated OOF prefixes. The final checkpoint,
trained on every training speaker, carries all three.

With fewer training speakers than inner folds, each speaker is its own inner fold (a printed note, and
`notes.calibration.inner_folds` says how many were used); with fewer than 2 it is a one-line error.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moodstream.model.calibration import SessionCalibration
from moodstream.trainer.calibration_fit import CalibrationFit, OutOfFold, describe, fit_calibration
from moodstream.trainer.config import ScoringSection
from moodstream.trainer.dataset import Session, natural_key
from moodstream.trainer.folds import Split, check_disjoint
from moodstream.trainer.metrics import choose_threshold
from moodstream.trainer.prefixes import PrefixScores, choose_min_evidence, prefix_logit_parts, scored_prefixes, sigmoid

# Random streams (run.seed, n) of the inner folds and of the replicates, apart from each other and the epochs'.
FOLD_STREAM, RESAMPLE_STREAM = 5, 7
RECORD = "out_of_fold.json"


def speaker_folds(sessions: list[Session], folds: int, seed: int) -> dict[str, str]:
    """Session id -> inner fold ("1" ...): speakers in a seeded random order, ranked by their share of positive
    sessions and dealt out in turn, so every fold gets its share of each class whatever the counts."""
    speakers = sorted({s.speaker_id for s in sessions}, key=natural_key)
    share = {p: np.mean([s.label for s in sessions if s.speaker_id == p]) for p in speakers}
    shuffled = [speakers[i] for i in np.random.default_rng([seed, FOLD_STREAM]).permutation(len(speakers))]
    fold_of_speaker = {p: str(index % folds + 1) for index, p in enumerate(sorted(shuffled, key=share.get))}
    return {s.session_id: fold_of_speaker[s.speaker_id] for s in sessions}


def inner_splits(split: Split, sessions: dict[str, Session], folds: int, seed: int) -> tuple[list[Split], str | None]:
    """Speaker-disjoint inner folds of `split.train`, balanced by label; each keeps `split.validation`.

    Returns the inner splits and a note when there were fewer speakers than `folds`.
    """
    training = [sessions[s] for s in split.train]
    speakers = sorted({s.speaker_id for s in training})
    if len(speakers) < 2:
        raise ValueError(f'scoring.calibration = "cross-fit" needs at least 2 training speakers, {split.name} has '
                         f'{len(speakers)}: use scoring.calibration = "platt" or "none"')
    note = None
    if len(speakers) < folds:
        note = (f"{split.name}: {len(speakers)} training speakers cannot fill scoring.inner_folds = {folds}; "
                f"cross-fitting with {len(speakers)} inner folds of one speaker each")
        folds = len(speakers)
    fold_of = speaker_folds(training, folds, seed)
    everyone = {s.session_id: s for s in training} | {s: sessions[s] for s in split.validation}
    out = []
    for name in sorted(set(fold_of.values()), key=int):
        held_out = [s for s in split.train if fold_of[s] == name]
        inner = Split(f"{split.name} inner-{name}", [s for s in split.train if fold_of[s] != name],
                      list(split.validation), held_out)
        check_disjoint(inner, everyone)
        out.append(inner)
    return out, note


@dataclass
class CrossFit:
    fit: CalibrationFit
    calibration: SessionCalibration
    threshold: float
    min_evidence: int
    oof: OutOfFold
    scores: PrefixScores           # the OOF set, calibrated by the fit (in sample: the fit saw it)
    notes: dict

    def model_fields(self) -> dict:
        """The ModelConfig fields that carry this calibration."""
        r, s, b = (float(x) for x in self.fit.coefficients)
        return {"calibration_scale": r, "calibration_segment_scale": s, "calibration_bias": b,
                "calibration_replicates": [[float(x) for x in row] for row in self.fit.replicates],
                "interval_level": float(self.calibration.level)}


def decide_on_out_of_fold(oof: OutOfFold, scoring: ScoringSection, seed: int, extra_notes: dict | None = None,
                          uncalibrated: list[np.ndarray] | None = None) -> CrossFit:
    """Calibration, interval, decision threshold and evidence rule from an OOF set.

    `uncalibrated`: the scores before calibration, per session and prefix, where they are not sigmoid(r + s)
    (a baseline's mean segment probability)."""
    fit = fit_calibration(oof, scoring.interval_replicates, [seed, RESAMPLE_STREAM])
    r, s, b = (float(x) for x in fit.coefficients)
    calibration = SessionCalibration(r, s, b, fit.replicates, scoring.interval_level)
    probabilities, low, high = scored_prefixes(calibration, oof.parts)
    labels = np.asarray(oof.labels, dtype=int)
    if uncalibrated is None:
        uncalibrated = [sigmoid(p.sum(axis=1)) for p in oof.parts]
    scores = PrefixScores(labels, probabilities, uncalibrated, low, high, scoring.interval_level)
    threshold = choose_threshold(labels, scores.whole_sessions())
    min_evidence = choose_min_evidence(labels, probabilities, scoring.evidence_auc_tolerance)
    # The OOF scores' metrics at 25/50/75/100 % of each session travel with the checkpoint (moodstream evaluate
    # reports them); the scores themselves stay in the training run's report.
    at_fractions = [{key: (round(value, 4) if math.isfinite(value) else None) if isinstance(value, float) else value
                     for key, value in row.items()} for row in scores.rows() if row["prefix"].endswith("%")]
    notes = {"method": "cross-fit", **(extra_notes or {}), "out_of_fold": oof.summary(),
             "out_of_fold_scores": at_fractions, **fit.notes(),
             "interval_level": scoring.interval_level, "threshold": float(threshold),
             "threshold_rule": "maximum F1 over the calibrated out-of-fold whole-session probabilities",
             "min_evidence_segments": int(min_evidence)}
    return CrossFit(fit, calibration, float(threshold), int(min_evidence), oof, scores, notes)


def _read_record(path: Path, inner: Split) -> dict | None:
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    same = record.get("train") == inner.train and record.get("validation") == inner.validation
    return record if same and sorted(record.get("held_out", {})) == sorted(inner.test) else None


def _write_record(path: Path, record: dict) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(record))
    os.replace(temporary, path)


def out_of_fold_parts(trainer, inner: list[Split], folder: Path) -> OutOfFold:
    """Retrain the networks once per inner split (trainer.inner_trainer) and score each held-out session's prefixes.

    Each inner fold's scores are kept in `folder/inner-N/out_of_fold.json`, so a resumed run skips finished folds.
    """
    oof = OutOfFold()
    config = trainer.config
    for index, split in enumerate(inner, 1):
        path = folder / f"inner-{index}" / RECORD
        record = _read_record(path, split) if config.run.resume else None
        if record is None:
            if config.run.progress:
                print(f"{split.name}: training without {len(split.test)} held-out sessions "
                      f"({index}/{len(inner)})", flush=True)
            inner_trainer = trainer.inner_trainer(split, path.parent)
            vectors = inner_trainer.fit_networks()
            parts = prefix_logit_parts(inner_trainer.model.session_head, [vectors[s] for s in split.test])
            record = {"train": split.train, "validation": split.validation,
                      "held_out": {s: p.tolist() for s, p in zip(split.test, parts)}}
            _write_record(path, record)
        for session_id in split.test:
            session = trainer.sessions[session_id].session
            oof.add(session_id, session.speaker_id, session.label, record["held_out"][session_id])
    return oof


def cross_fit(trainer) -> CrossFit:
    """The trainer's OOF set, and the calibration, interval, threshold and evidence rule fitted on it."""
    config = trainer.config
    sessions = {s: trainer.sessions[s].session for s in trainer.split.train + trainer.split.validation}
    inner, note = inner_splits(trainer.split, sessions, config.scoring.inner_folds, config.run.seed)
    if note:
        print(f"note: {note}")
    oof = out_of_fold_parts(trainer, inner, trainer.run_dir / "crossfit")
    result = decide_on_out_of_fold(oof, config.scoring, config.run.seed,
                                   {"inner_folds": len(inner), **({"inner_folds_note": note} if note else {})})
    if config.run.progress:
        print(f"{trainer.split.name}: {describe(result.fit)}; threshold {result.threshold:.3f}", flush=True)
    return result
