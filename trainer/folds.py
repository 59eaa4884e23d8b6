"""Participant-disjoint splits, and the guard that refuses any split where a speaker is on two sides."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moodstream.trainer.dataset import Session, natural_key


class LeakageError(ValueError):
    """A speaker (participant) appears in more than one side of a split."""


@dataclass
class Split:
    name: str                   # "main" or "fold-3"
    train: list[str]            # session ids
    validation: list[str]
    test: list[str]


def check_disjoint(split: Split, sessions: dict[str, Session]) -> None:
    """Raise LeakageError if a speaker or a session is in two of train/validation/test."""
    sides = {"train": split.train, "validation": split.validation, "test": split.test}
    owner: dict[str, str] = {}
    for side, ids in sides.items():
        seen_here: set[str] = set()
        for session_id in ids:
            if session_id not in sessions:
                raise ValueError(f"split {split.name}: unknown session {session_id!r}")
            if session_id in seen_here:
                raise LeakageError(f"split {split.name}: session {session_id} is listed twice in {side}")
            seen_here.add(session_id)
            speaker = sessions[session_id].speaker_id
            if speaker in owner and owner[speaker] != side:
                raise LeakageError(
                    f"split {split.name} leaks participant {speaker} into both {owner[speaker]} and {side}; "
                    "every participant's sessions must stay on one side")
            owner[speaker] = side


def predefined_split(sessions: list[Session]) -> Split:
    """Use each session's own split (train / validation / test), as DAIC-WOZ and split manifests give it."""
    by = {"train": [], "validation": [], "test": []}
    for session in sessions:
        if session.split not in by:
            raise ValueError(f"session {session.session_id} has no split; give every row a split "
                             "(train/validation/test) or use data.folds for cross-validation")
        by[session.split].append(session.session_id)
    if not by["train"]:
        raise ValueError("no training sessions in the data")
    if not by["validation"]:
        raise ValueError("no validation sessions: thresholds and early stopping need a validation split "
                         "(DAIC-WOZ: the dev split; manifests: split=validation rows)")
    split = Split("main", by["train"], by["validation"], by["test"])
    check_disjoint(split, {s.session_id: s for s in sessions})
    return split


def assign_folds(sessions: list[Session], folds: int, seed: int) -> dict[str, str]:
    """Session id -> fold name. Uses the sessions' own `fold` when all have one, else speaker-grouped,
    label-stratified folds (scikit-learn's StratifiedGroupKFold)."""
    if all(s.fold is not None for s in sessions):
        speaker_folds: dict[str, set[str]] = {}
        for s in sessions:
            speaker_folds.setdefault(s.speaker_id, set()).add(str(s.fold))
        leaking = sorted(sp for sp, f in speaker_folds.items() if len(f) > 1)
        if leaking:
            raise LeakageError(f"participant(s) {', '.join(leaking[:5])} appear in more than one fold; "
                               "every participant's sessions must share one fold")
        return {s.session_id: str(s.fold) for s in sessions}
    if folds < 2:
        raise ValueError("cross-validation needs data.folds >= 2 (or a fold column in the manifest)")
    from sklearn.model_selection import StratifiedGroupKFold

    speakers = sorted({s.speaker_id for s in sessions}, key=natural_key)
    if len(speakers) < folds:
        raise ValueError(f"{len(speakers)} participants cannot fill {folds} participant-disjoint folds")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    labels = np.array([s.label for s in sessions])
    groups = np.array([s.speaker_id for s in sessions])
    result: dict[str, str] = {}
    for index, (_, test) in enumerate(splitter.split(np.zeros(len(sessions)), labels, groups)):
        for row in test:
            result[sessions[row].session_id] = str(index + 1)
    return result


def cross_validation_splits(sessions: list[Session], folds: int, seed: int) -> list[Split]:
    """Fold k is the test set, the next fold the validation set, the rest train."""
    fold_of = assign_folds(sessions, folds, seed)
    names = sorted(set(fold_of.values()), key=natural_key)
    if len(names) < 3:
        raise ValueError(f"cross-validation needs at least 3 folds (test, validation, train); got {len(names)}")
    splits = []
    for index, name in enumerate(names):
        validation_name = names[(index + 1) % len(names)]
        split = Split(f"fold-{name}",
                      train=[s for s, f in fold_of.items() if f not in (name, validation_name)],
                      validation=[s for s, f in fold_of.items() if f == validation_name],
                      test=[s for s, f in fold_of.items() if f == name])
        check_disjoint(split, {s.session_id: s for s in sessions})
        splits.append(split)
    return splits
