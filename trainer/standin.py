"""The stand-in task on RAVDESS (acted emotion, NOT depression; docs/standin-results.md).

Per actor, a "low-mood" session (the actor's 8 sad clips, label 1) and a
"calm" session (the 8 calm clips, label 0): the same 4 normal + 4 strong
intensity structure, so both sessions are about as long and a model cannot
score length instead of voice. Folds are actor-disjoint: 6 folds of 3 actors
(1-3, 4-6, ..., 16-18). The data is read in place and never copied.
"""
from __future__ import annotations

import csv
from pathlib import Path

from moodstream.trainer.data import AudioSpan, Dataset, Session

STANDIN_NOTE = ("Stand-in task: RAVDESS acted speech, sad vs calm sessions per actor. This is acted emotion, "
                "not depression; numbers on it say nothing about clinical screening.")


def read_ravdess_standin(root: str | Path, actors_per_fold: int = 3) -> Dataset:
    root = Path(root).expanduser()
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        raise ValueError(f"no RAVDESS manifest.csv at {root}")
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    dataset = Dataset("ravdess-standin (sad vs calm sessions per actor)", [], notes=[STANDIN_NOTE],
                      positive_class="low-mood (sad) session")
    by_session: dict[tuple[int, str], list[dict]] = {}
    for row in rows:
        if row["emotion"] in ("sad", "calm"):
            by_session.setdefault((int(row["actor"]), row["emotion"]), []).append(row)
    for (actor, emotion), clips in sorted(by_session.items()):
        clips.sort(key=lambda r: (r["intensity"], r["statement"], int(r["repetition"])))
        session = Session(
            session_id=f"actor{actor:02d}-{'low' if emotion == 'sad' else 'calm'}",
            speaker_id=f"actor{actor:02d}", label=1 if emotion == "sad" else 0,
            spans=[AudioSpan(str(root / r["path"])) for r in clips],
            fold=str((actor - 1) // actors_per_fold + 1))
        missing = [s.path for s in session.spans if not Path(s.path).is_file()]
        if missing:
            dataset.skipped[session.session_id] = f"{len(missing)} clips missing (e.g. {missing[0]})"
            continue
        if len(clips) != 8:
            session.warnings.append(f"{len(clips)} clips instead of 8")
        dataset.sessions.append(session)
    if not dataset.sessions:
        raise ValueError(f"no sad/calm clips listed in {manifest}")
    return dataset


def choose_actors(dataset: Dataset, train: list[int], validation: list[int], test: list[int] = ()) -> Dataset:
    """One train / validation (/ test) split by actor instead of the cross-validation folds."""
    side = {a: "train" for a in train} | {a: "validation" for a in validation} | {a: "test" for a in test}
    known = {int(s.speaker_id.removeprefix("actor")) for s in dataset.sessions}
    missing = sorted(set(side) - known)
    if missing:
        raise ValueError(f"actor(s) {missing} have no sessions in the stand-in data "
                         f"(actors: {min(known)}-{max(known)})")
    kept = []
    for session in dataset.sessions:
        actor = int(session.speaker_id.removeprefix("actor"))
        if actor in side:
            session.split, session.fold = side[actor], None
            kept.append(session)
    left_out = len(dataset.sessions) - len(kept)
    dataset.sessions = kept
    dataset.notes.append(f"actors chosen: train {_ranges(train)}, validation {_ranges(validation)}"
                         + (f", test {_ranges(test)}" if test else "") +
                         (f"; {left_out} sessions of other actors left out" if left_out else ""))
    return dataset


def _ranges(actors) -> str:
    actors = sorted(actors)
    out, start = [], None
    for index, actor in enumerate(actors):
        if start is None:
            start = actor
        if index + 1 == len(actors) or actors[index + 1] != actor + 1:
            out.append(str(start) if start == actor else f"{start}-{actor}")
            start = None
    return ", ".join(out)
