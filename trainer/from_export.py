"""Session-head-only retraining and evaluation from a field export (`moodstream export`) plus labels.

    moodstream train --from-export EXPORT --labels labels.csv --base CHECKPOINT --output runs/field
    moodstream evaluate CHECKPOINT EXPORT --labels labels.csv

The export holds the segment vectors the served model's encoder made; the labels CSV, collected later,
ties session or participant ids to a PHQ-8 score or a binary label. Training is the recipe's stage 2
unchanged (moodstream.trainer.train.SplitTrainer: the session head on each session's vector sequence,
early stopping, prefix training when the recipe asks), on participant-disjoint train / validation
sides, followed by the same calibration, decision threshold and evidence rule (by default cross-fitted:
the session head is retrained on inner folds of the training participants, docs/calibration.md). The
new checkpoint keeps the base checkpoint's encoder byte for byte, so live sessions can move to it
without re-encoding; vectors of another encoder are refused.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from moodstream import SCREENING_NOTICE
from moodstream.field_export import ExportedSession, read_export
from moodstream.model import ScreeningModel
from moodstream.model.checkpoint import ENCODER_FILE, encoder_fingerprint
from moodstream.model.session_head import SessionHead
from moodstream.trainer.config import TrainConfig
from moodstream.trainer.data import Session
from moodstream.trainer.evaluate import Predictions, write_evaluation
from moodstream.trainer.folds import Split, assign_folds, check_disjoint
from moodstream.trainer.metrics import choose_threshold
from moodstream.trainer.loop import seed_everything
from moodstream.trainer.train import SplitTrainer
from moodstream.user_files import read_csv

ID_COLUMNS = ("session_id", "participant_id")
SCORE_COLUMNS = ("phq8_score", "phq8", "phq_score", "score")
LABEL_COLUMNS = ("label", "phq8_binary", "binary")
DEFAULT_FOLDS = 5
# Checkpoint note: model versions whose segment vectors this checkpoint's encoder made too.
SAME_ENCODER_NOTE = "same_encoder_as"


def read_labels(path: str | Path, score_threshold: float) -> tuple[dict[str, int], dict[str, int]]:
    """(labels by session id, labels by participant id) from a CSV with an id column and a score or label.

    A PHQ-8 score becomes label 1 at or above `score_threshold` (data.score_threshold, 10 by default).
    """
    path = Path(path)
    names, rows = read_csv(path, delimiter=",")
    columns = {name.lower(): name for name in names}
    id_column = next((c for c in ID_COLUMNS if c in columns), None)
    score_column = next((c for c in SCORE_COLUMNS if c in columns), None)
    label_column = next((c for c in LABEL_COLUMNS if c in columns), None)
    if id_column is None or (score_column is None and label_column is None):
        raise ValueError(f"{path} needs a session_id or participant_id column and a PHQ-8 score "
                         f"({', '.join(SCORE_COLUMNS)}) or a 0/1 label ({', '.join(LABEL_COLUMNS)}) column")
    by_session, by_participant = {}, {}
    for line, row in rows:
        identifier = row[columns[id_column]]
        raw = row[columns[label_column or score_column]]
        if not identifier or not raw:
            continue  # not labelled (yet)
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{path} line {line}: {raw!r} is not a number") from None
        if label_column is not None:
            if value not in (0, 1):
                raise ValueError(f"{path} line {line}: label must be 0 or 1, not {raw!r}")
            label = int(value)
        else:
            if not 0 <= value <= 24:
                raise ValueError(f"{path} line {line}: a PHQ-8 score is 0-24, not {raw!r}")
            label = int(value >= score_threshold)
        target = by_session if id_column == "session_id" else by_participant
        target[identifier] = label
    return by_session, by_participant


def labelled_sessions(export: str | Path, labels: str | Path, score_threshold: float) -> tuple[
        list[ExportedSession], dict[str, int], dict]:
    """The export's sessions that have a label and segments, their labels, and what was left out."""
    manifest, sessions = read_export(export)
    by_session, by_participant = read_labels(labels, score_threshold)
    kept, label_of = [], {}
    unlabelled = empty = 0
    for session in sessions:
        label = by_session.get(session.session_id, by_participant.get(session.participant_id))
        if label is None:
            unlabelled += 1
        elif not session.seqs:
            empty += 1
        else:
            kept.append(session)
            label_of[session.session_id] = label
    known = {s.session_id for s in sessions} | {s.participant_id for s in sessions}
    unmatched = sorted((set(by_session) | set(by_participant)) - known)
    if not kept:
        raise ValueError(f"no session of {export} has a label in {labels}: the labels CSV's ids must be the "
                         "session or participant ids the agents sent")
    return kept, label_of, {"export_sessions": len(sessions), "unlabelled": unlabelled, "without_segments": empty,
                            "labels_without_session": unmatched[:20], "labels_without_session_count": len(unmatched),
                            "exported_unix": manifest["exported_unix"]}


def check_encoder(model: ScreeningModel, sessions: list[ExportedSession], others: dict[str, str]) -> None:
    """Refuse vectors that the model's encoder did not make.

    others: model version -> encoder fingerprint of further checkpoints known to the caller.
    """
    own = encoder_fingerprint(model)
    known = {**others, **{version: own for version in same_encoder_versions(model)}}
    counts: dict[str, int] = {}
    for session in sessions:
        counts[session.model_version] = counts.get(session.model_version, 0) + 1
    for version, count in sorted(counts.items()):
        if version not in known:
            raise ValueError(f"{count} labelled session(s) were encoded by model {version}, not by the base "
                             f"checkpoint's model {model.model_version}: pass that version's checkpoint as --base "
                             "(or a model folder holding it)")
        if known[version] != own:
            raise ValueError(f"{count} labelled session(s) were encoded by model {version}, whose encoder differs "
                             f"from the base checkpoint's: a session head trained on those vectors would not fit "
                             f"its encoder. Export only sessions of one encoder, or use that version as --base")


def same_encoder_versions(model: ScreeningModel) -> list[str]:
    """The model's own version and those a session-head retraining recorded as sharing its encoder."""
    recorded = (model.config.notes or {}).get(SAME_ENCODER_NOTE, [])
    return sorted({model.model_version, *recorded})


def load_base(base: str | Path) -> tuple[Path, ScreeningModel, dict[str, str]]:
    """The base checkpoint folder and model, and the encoder fingerprints of the other versions beside it.

    `base` is a checkpoint folder, or a model folder (server --models) whose `current` names the base.
    """
    from moodstream.model.checkpoint import CONFIG_FILE

    base = Path(base)
    if (base / CONFIG_FILE).is_file():
        return base, ScreeningModel.from_pretrained(base), {}
    folders = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")) if base.is_dir() else []
    if not folders:
        raise ValueError(f"--base {base} is neither a checkpoint folder nor a model folder")
    models = {folder: ScreeningModel.from_pretrained(folder) for folder in folders}
    current_file = base / "current"
    named = current_file.read_text().strip() if current_file.is_file() else ""
    chosen = next((f for f, m in models.items() if named in (f.name, m.model_version)), None)
    if chosen is None:
        if len(models) > 1:
            raise ValueError(f"--base {base} holds several versions and its current file names none of them")
        chosen = folders[0]
    others = {m.model_version: encoder_fingerprint(m) for f, m in models.items() if f != chosen}
    return chosen, models[chosen], others


class ExportTrainer(SplitTrainer):
    """SplitTrainer's stage 2, calibration and thresholds on exported vectors (no audio, no stage 1)."""

    def __init__(self, config: TrainConfig, model: ScreeningModel, sessions: list[ExportedSession],
                 labels: dict[str, int], split: Split, run_dir: Path, positive_class: str) -> None:
        self.start_run(config, split, run_dir, None, positive_class)
        self.model = model.to(self.device)
        self.exported = {s.session_id: s for s in sessions}
        self.sessions = {s.session_id: SimpleNamespace(session=Session(s.session_id, s.participant_id,
                                                                       labels[s.session_id], []))
                         for s in sessions}
        self.vectors = {s.session_id: torch.from_numpy(s.vector_matrix()) for s in sessions}
        self.same_encoder_as = sorted({*same_encoder_versions(model), *(s.model_version for s in sessions)})

    def segment_rows(self, ids: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(session id, label, segment-classifier probability) of every segment of these sessions."""
        owners, labels, probabilities = [], [], []
        head = self.model.segment_head.eval()
        with torch.inference_mode():
            for session_id in ids:
                vectors = self.vectors[session_id].to(self.device)
                probabilities.append(torch.sigmoid(head.segment_logits(vectors)).cpu().numpy().astype(float))
                owners += [session_id] * len(vectors)
                labels += [self.sessions[session_id].session.label] * len(vectors)
        return owners, np.asarray(labels), np.concatenate(probabilities) if probabilities else np.zeros(0)

    def predictions(self, ids: list[str]):
        owners, segment_labels, segment_probabilities = self.segment_rows(ids)
        scores = self.prefix_scores(self.vectors, ids)
        return Predictions(
            session_ids=list(ids),
            session_labels=np.asarray([self.sessions[s].session.label for s in ids]),
            session_probabilities=self.session_probabilities(self.vectors, ids),
            segment_session_ids=owners, segment_labels=segment_labels, segment_probabilities=segment_probabilities,
            segment_vectors=torch.cat([self.vectors[s] for s in ids]).numpy(),
            session_prefix_probabilities=scores.probabilities, session_prefix_uncalibrated=scores.uncalibrated,
            session_prefix_low=scores.low, session_prefix_high=scores.high, interval_level=scores.level)

    def fit_networks(self) -> dict[str, torch.Tensor]:
        """A fresh session head trained by the recipe's stage 2 on this split; the vectors are the export's."""
        seed_everything(self.config.run.seed)
        self.model.session_head = SessionHead.from_config(self.model.config).to(self.device)
        self.stage2(self.vectors, self.split.train, self.split.validation)
        return self.vectors

    def inner_trainer(self, split: Split, run_dir: Path) -> "ExportTrainer":
        """The same export on an inner split, on a copy of the model that shares its (unchanged) encoder."""
        model = copy.deepcopy(self.model, memo={id(self.model.backbone): self.model.backbone})
        inner = ExportTrainer.__new__(ExportTrainer)
        inner.start_run(self.config, split, run_dir, None, self.positive_class)
        inner.keeps_resume_files = False
        inner.model, inner.exported, inner.sessions = model, self.exported, self.sessions
        inner.vectors, inner.same_encoder_as = self.vectors, self.same_encoder_as
        return inner

    def run(self) -> dict:
        config, split = self.config, self.split
        started = time.monotonic()
        model_config = self.model.config
        # Calibration is fitted anew below, for the new session head.
        self.model.config = model_config.replace(calibration_scale=1.0, calibration_bias=0.0,
                                                 calibration_segment_scale=None, calibration_replicates=[])
        self.fit_networks()
        decisions = self.decide(self.vectors)
        threshold = decisions.threshold
        _, val_segment_labels, val_segment_probabilities = self.segment_rows(split.validation)
        segment_threshold = choose_threshold(val_segment_labels, val_segment_probabilities)
        notes = {**(model_config.notes or {}), "trained": True, "screening_notice": SCREENING_NOTICE,
                 "session_head_retrained_from": "field export", "train_sessions": len(split.train),
                 "validation_sessions": len(split.validation), "threshold_chosen_on": decisions.chosen_on,
                 "segment_threshold": segment_threshold, "stage2_best_epoch": self.stage2_state.best_epoch,
                 "calibration": decisions.calibration, SAME_ENCODER_NOTE: self.same_encoder_as}
        self.model.config = self.model.config.replace(
            decision_threshold=float(np.clip(threshold, 1e-4, 1 - 1e-4)), min_evidence_segments=decisions.min_evidence,
            notes=notes)
        checkpoint = self.model.to("cpu").save_pretrained(self.run_dir / "checkpoint")
        self.model.to(self.device)
        result = write_evaluation(self.run_dir, {"validation": self.predictions(split.validation)}, threshold,
                                  segment_threshold, title="moodstream session-head retraining from a field export",
                                  extra={"seconds": time.monotonic() - started,
                                         "stage2_epochs": self.stage2_state.epoch,
                                         "min_evidence_segments": decisions.min_evidence},
                                  tsne=config.run.tsne, seed=config.run.seed, positive_class=self.positive_class,
                                  out_of_fold=decisions.out_of_fold, calibration=decisions.calibration,
                                  threshold_chosen_on=decisions.chosen_on)
        result["checkpoint"] = str(checkpoint)
        return result


def participant_split(sessions: list[ExportedSession], labels: dict[str, int], folds: int, seed: int) -> Split:
    """One participant-disjoint, label-stratified fold for validation, the rest for training."""
    items = [Session(s.session_id, s.participant_id, labels[s.session_id], []) for s in sessions]
    fold_of = assign_folds(items, folds, seed)
    validation = sorted(s for s, fold in fold_of.items() if fold == "1")
    split = Split("field", sorted(s for s, fold in fold_of.items() if fold != "1"), validation, [])
    check_disjoint(split, {s.session_id: s for s in items})
    for side, ids in (("training", split.train), ("validation", split.validation)):
        if len({labels[s] for s in ids}) < 2:
            raise ValueError(f"the {side} participants' sessions all have one label: session-head training needs "
                             "both classes on each side (label more participants, or change data.folds)")
    return split


def train_from_export(export: str | Path, labels: str | Path, base: str | Path, output: str | Path,
                      overrides: list[str] | None = None) -> dict:
    """Retrain the base checkpoint's session head on an export; writes OUTPUT/checkpoint and a report."""
    config = TrainConfig.from_dict({})
    if overrides:
        from moodstream.trainer.config import apply_overrides

        values: dict = {}
        apply_overrides(values, overrides)
        config = TrainConfig.from_dict(values)
    base_folder, model, others = load_base(base)
    sessions, label_of, left_out = labelled_sessions(export, labels, config.data.score_threshold)
    config = config.with_recipe(len(sessions))
    check_encoder(model, sessions, others)
    base_version = model.model_version  # the trainer replaces this model's session head
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    folds = config.data.folds or DEFAULT_FOLDS
    participants = len({s.participant_id for s in sessions})
    if participants < folds:
        raise ValueError(f"{participants} labelled participant(s) cannot fill {folds} participant-disjoint folds "
                         "(one for validation): label more participants, or --set data.folds=N with N >= 3")
    split = participant_split(sessions, label_of, folds, config.run.seed)
    output = Path(output)
    trainer = ExportTrainer(config, model, sessions, label_of, split, output,
                            positive_class=f"PHQ-8 >= {config.data.score_threshold:g} (labels from {Path(labels).name})")
    result = trainer.run()
    written = Path(result["checkpoint"])
    if (written / ENCODER_FILE).read_bytes() != (base_folder / ENCODER_FILE).read_bytes():
        raise RuntimeError(f"{written / ENCODER_FILE} differs from {base_folder / ENCODER_FILE}; this is a bug")
    result.update(left_out=left_out, base=str(base_folder), base_model_version=base_version,
                  model_version=ScreeningModel.from_pretrained(written).model_version)
    (output / "result.json").write_text(json.dumps(result, indent=2, default=float))
    return result


def evaluate_on_export(checkpoint: str | Path, export: str | Path, labels: str | Path, output: str | Path,
                       score_threshold: float = 10.0) -> dict:
    """Score an export's labelled sessions with a checkpoint at the thresholds it carries."""
    model = ScreeningModel.from_pretrained(checkpoint)
    sessions, label_of, left_out = labelled_sessions(export, labels, score_threshold)
    check_encoder(model, sessions, {})
    config = TrainConfig.from_dict({})
    ids = sorted(label_of)
    split = Split("evaluation", [], [], ids)
    trainer = ExportTrainer(config, model, sessions, label_of, split, Path(output), positive_class="label 1")
    segment_threshold = float((model.config.notes or {}).get("segment_threshold", 0.5))
    result = write_evaluation(Path(output), {"test": trainer.predictions(ids)}, model.config.decision_threshold,
                              segment_threshold, title=f"moodstream evaluation of {model.model_version} on a field export",
                              extra={"left_out": json.dumps(left_out)}, tsne=False)
    result["split"] = "test"
    (Path(output) / "result.json").write_text(json.dumps(result, indent=2, default=float))
    return result
