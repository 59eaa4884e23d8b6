"""From a recipe's [data] table to what training and evaluation run on: the data set, its segments (cut by
the agent's speech path) and its splits or cross-validation folds."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from moodstream.trainer.config import TrainConfig
from moodstream.trainer.data import Dataset, read_daic_woz, read_manifest
from moodstream.trainer.folds import Split, cross_validation_splits, predefined_split
from moodstream.trainer.segments import SegmentParams, SegmentStore, build_segments


def detect_format(path: Path) -> str:
    if path.is_file() and path.suffix.lower() == ".csv":
        return "manifest"
    if path.is_dir():
        if (path / "manifest.csv").is_file() and any(path.glob("Actor_*")):
            return "ravdess-standin"
        names = {p.name.lower() for p in path.rglob("*.csv")}
        if "train_split_depression_avec2017.csv" in names or "full_test_split.csv" in names:
            return "daic-woz"
        if "train_split.csv" in names or "dev_split.csv" in names:
            return "e-daic"
    raise ValueError(f"cannot tell the data format of {path}: it is no DAIC-WOZ / E-DAIC folder (split CSVs), "
                     "RAVDESS stand-in folder or manifest CSV; recordings alone carry no labels to score them "
                     "against, so list them in a manifest (docs/training.md), or pass --format")


def load_dataset(config: TrainConfig) -> Dataset:
    data = config.data
    if not data.path:
        raise ValueError("data.path is empty: point it at the data set (folder or manifest CSV)")
    path = config.resolve(data.path)
    if data.format in ("daic-woz", "e-daic"):
        return read_daic_woz(path, label_mode=data.label_from, score_threshold=data.score_threshold,
                             exclude=data.exclude, time_offsets=data.time_offsets,
                             validation_split=data.validation, variant=data.format)
    if data.format == "manifest":
        dataset = read_manifest(path)
    elif data.format == "ravdess-standin":
        from moodstream.trainer.standin import choose_actors, read_ravdess_standin

        dataset = read_ravdess_standin(path)
        if data.train_actors:
            dataset = choose_actors(dataset, data.train_actors, data.validation_actors, data.test_actors)
    else:
        raise ValueError(f"unsupported data.format {data.format!r}")
    excluded = {str(x) for x in data.exclude}
    if excluded:
        for session in dataset.sessions:
            if session.session_id in excluded:
                dataset.skipped[session.session_id] = "excluded by data.exclude"
        dataset.sessions = [s for s in dataset.sessions if s.session_id not in excluded]
    return dataset


def segment_params(config: TrainConfig) -> SegmentParams:
    return SegmentParams(speech=config.speech)


def load_test_set(config: TrainConfig) -> Dataset:
    """data.test_path: every session of another folder or manifest, as the test side (reported only)."""
    path = config.resolve(config.data.test_path)
    data = dataclasses.replace(config.data, path=str(path), format=detect_format(path), test_path="", exclude=[],
                               train_actors=[], validation_actors=[], test_actors=[])
    test_set = load_dataset(dataclasses.replace(config, data=data))
    for session in test_set.sessions:
        session.session_id, session.split, session.fold = f"test-set/{session.session_id}", "test", None
    return test_set


def with_test_set(dataset: Dataset, test_set: Dataset, path: str) -> Dataset:
    own_tests = [s for s in dataset.sessions if s.split == "test"]
    if own_tests:
        dataset.notes.append(f"{len(own_tests)} test sessions of the training data left out: data.test_path "
                             "is the test set")
    dataset.sessions = [s for s in dataset.sessions if s.split != "test"] + test_set.sessions
    dataset.skipped.update({f"test-set/{k}": v for k, v in test_set.skipped.items()})
    dataset.notes.append(f"test set (data.test_path): {len(test_set.sessions)} sessions of {test_set.name} "
                         f"from {path}, reported only")
    return dataset


def prepare_data(config: TrainConfig) -> tuple[Dataset, SegmentStore, list[Split]]:
    dataset = load_dataset(config)
    if config.data.test_path:
        dataset = with_test_set(dataset, load_test_set(config), config.data.test_path)
    if not dataset.sessions:
        raise ValueError(f"no usable sessions in {config.data.path} ({len(dataset.skipped)} skipped: "
                         f"{'; '.join(f'{k}: {v}' for k, v in list(dataset.skipped.items())[:3])})")
    store = build_segments(dataset, segment_params(config),
                           config.resolve(config.data.cache_dir), progress=config.run.progress)
    for session_id, reason in store.failed.items():
        dataset.skipped[session_id] = reason
    usable = [s.session for s in store.sessions]
    dataset.sessions = usable
    if config.data.folds or all(s.fold is not None for s in usable) and not any(s.split for s in usable):
        splits = cross_validation_splits(usable, config.data.folds, config.run.seed)
    else:
        splits = [predefined_split(usable)]
    return dataset, store, splits
