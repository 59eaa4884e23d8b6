"""Baselines on the model's own segments and splits: features per segment + logistic regression.

Two kinds of features:

* openSMILE functionals, the paper's baseline. Evaluation-only (the `eval`
  extra: `pip install 'moodstream[eval]'`); the agent and server never import
  it. The feature set defaults to IS09_emotion (384 functionals, what the
  paper used; the `opensmile` package ships it as FeatureSet.IS09).
* `linear-probe`: the recipe's own frozen encoder (its [model] table, pretrained
  weights when model.pretrained is set), the model's frame features (the sum
  of the transformer layers), mean and standard deviation over each segment's
  frames. It is the bar the paper's heads on the same encoder must clear.

A session's score is the mean of its segments' probabilities (after each prefix: the mean so far).
With `scoring.calibration = "cross-fit"` (the default) it is calibrated, given an interval and
thresholded exactly as the model is (trainer/crossfit.py): the logistic regression is refitted on inner
folds of the training speakers, and the candidates are fitted to the logit of its out-of-fold scores.
Otherwise the threshold is chosen on validation and the score stays uncalibrated.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from moodstream.trainer.config import TrainConfig
from moodstream.trainer.evaluate import Predictions, cross_validation_markdown, summarize_folds, write_evaluation
from moodstream.model.calibration import SessionCalibration
from moodstream.trainer.metrics import choose_threshold
from moodstream.trainer.prefixes import PROBABILITY_FLOOR, scored_prefixes
from moodstream.trainer.segments import SegmentStore

LINEAR_PROBE = "linear-probe"

# names accepted on the command line -> opensmile.FeatureSet member
FEATURE_SETS = {
    "is09_emotion": "IS09", "is09": "IS09", "is10_paraling": "IS10", "is10": "IS10",
    "egemapsv02": "eGeMAPSv02", "egemaps": "eGeMAPSv02", "gemapsv01b": "GeMAPSv01b",
    "compare_2016": "ComParE_2016", "emobase": "emobase",
}


def opensmile_extractor(feature_set: str):
    try:
        import opensmile
    except ModuleNotFoundError as error:
        raise ValueError("the openSMILE baseline needs the `opensmile` package: pip install 'moodstream[eval]'") \
            from error
    member = FEATURE_SETS.get(feature_set.lower())
    if member is None or not hasattr(opensmile.FeatureSet, member):
        raise ValueError(f"unknown openSMILE feature set {feature_set!r}; use one of "
                         f"{', '.join(sorted(set(FEATURE_SETS)))}")
    return opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, member),
                           feature_level=opensmile.FeatureLevel.Functionals)


def segment_features(store: SegmentStore, feature_set: str, progress: bool = True) -> np.ndarray:
    """[segments, D] functionals, cached beside the segments (keyed by the segment cache and the set)."""
    path = store.folder / f"opensmile-{feature_set.lower()}.npz"
    cached: dict[int, np.ndarray] = {}
    if path.is_file():
        saved = np.load(path)
        cached = {int(o): row for o, row in zip(saved["offsets"], saved["features"])}
    missing = [i for i in range(len(store)) if int(store.offsets[i]) not in cached]
    if missing:
        from tqdm import tqdm

        smile = opensmile_extractor(feature_set)
        for index in tqdm(missing, desc=f"openSMILE {feature_set}", disable=not progress):
            row = smile.process_signal(store.waveform(index), store.params.sample_rate).to_numpy()[0]
            cached[int(store.offsets[index])] = np.asarray(row, dtype=np.float64)
        offsets = np.asarray(sorted(cached), dtype=np.int64)
        np.savez(path, offsets=offsets, features=np.stack([cached[int(o)] for o in offsets]))
    return np.stack([cached[int(o)] for o in store.offsets])


def probe_features(store: SegmentStore, config: TrainConfig) -> np.ndarray:
    """[segments, 2H]: mean and std over frames of the frozen encoder's summed layers.

    The frame features come from (and go to) the trainer's on-disk cache of frozen features, so the
    probe and a model trained on the same frozen encoder compute them once between them.
    """
    import torch

    from moodstream.model import ScreeningModel, pick_device
    from moodstream.trainer.loop import seed_everything
    from moodstream.trainer.train import frozen_frame_features

    device = pick_device(config.run.device, option="run.device =")
    seed_everything(config.run.seed)  # a randomly initialised encoder is the one training with this seed starts from
    model = ScreeningModel(config.model_config(), load_pretrained_backbone=config.pretrained).to(device).eval()
    frames = frozen_frame_features(model, store, range(len(store)), device, config.stage1.batch_size,
                                   "linear probe: encoder features", config.run.progress)
    return np.stack([torch.cat([f.double().mean(0), f.double().std(0, correction=0)]).numpy() for f in frames])


def run_baseline(config: TrainConfig, feature_set: str = "IS09_emotion", output: str | Path | None = None) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from moodstream.trainer.prepare import prepare_data

    started = time.monotonic()
    if config.run.threads:
        import torch

        torch.set_num_threads(config.run.threads)
    dataset, store, splits = prepare_data(config)
    probe = feature_set.lower() == LINEAR_PROBE
    if probe:
        features = probe_features(store, config)
        described = (f"linear probe: {config.model_config().backbone} "
                     f"({'pretrained' if config.pretrained else 'randomly initialised'}, frozen), summed layers, "
                     f"mean + std over frames ({features.shape[1]} per segment)")
        title = "linear probe on the frozen encoder + logistic regression"
    else:
        features = segment_features(store, feature_set, progress=config.run.progress)
        described = f"openSMILE {feature_set}, {features.shape[1]} functionals per segment"
        title = f"openSMILE {feature_set} + logistic regression"
    features = np.nan_to_num(features, nan=0.0, posinf=0.0, neginf=0.0)
    sessions = store.by_id()
    output = Path(output) if output else config.output_dir.with_name(
        f"{config.output_dir.name}-baseline-{feature_set.lower()}")
    output.mkdir(parents=True, exist_ok=True)

    def rows(ids):
        return np.asarray([i for s in ids for i in sessions[s].segments], dtype=np.int64)

    labels = np.asarray([store.label(int(i)) for i in range(len(store))])

    def fitted_on(ids):
        classifier = make_pipeline(StandardScaler(), LogisticRegression(
            C=1.0, max_iter=5000, class_weight="balanced" if config.stage1.imbalance != "none" else None))
        return classifier.fit(features[rows(ids)], labels[rows(ids)])

    def prefix_means(classifier, ids) -> list[np.ndarray]:
        """Per session, the mean of its segments' probabilities after each prefix (the baseline's session score)."""
        out = []
        for session_id in ids:
            p = classifier.predict_proba(features[np.asarray(sessions[session_id].segments)])[:, 1]
            out.append(np.cumsum(p) / np.arange(1, len(p) + 1))
        return out

    results = {}
    for split in splits:
        classifier = fitted_on(split.train)
        crossfit = None
        if config.scoring.calibration == "cross-fit":
            crossfit = cross_fitted(config, split, sessions, fitted_on, prefix_means)
        calibration = crossfit.calibration if crossfit else SessionCalibration()

        def predict(ids) -> Predictions:
            seg = rows(ids)
            probabilities = classifier.predict_proba(features[seg])[:, 1]
            owner = [store.session_of(int(i)).session_id for i in seg]
            means = prefix_means(classifier, ids)
            scored, low, high = scored_prefixes(calibration, [mean_logit_parts(m) for m in means])
            if crossfit is None:  # uncalibrated: the mean probability itself, as the baseline always scored
                scored = means
            return Predictions(list(ids), np.asarray([sessions[s].session.label for s in ids]),
                               np.asarray([p[-1] for p in scored]), owner, labels[seg], probabilities,
                               segment_vectors=None, session_prefix_probabilities=scored,
                               session_prefix_uncalibrated=means, session_prefix_low=low, session_prefix_high=high,
                               interval_level=calibration.level)

        validation = predict(split.validation)
        threshold = crossfit.threshold if crossfit else choose_threshold(validation.session_labels,
                                                                         validation.session_probabilities)
        segment_threshold = choose_threshold(validation.segment_labels, validation.segment_probabilities)
        predictions = {"validation": validation}
        if split.test:
            predictions["test"] = predict(split.test)
        folder = output if len(splits) == 1 else output / split.name
        results[split.name] = write_evaluation(
            folder, predictions, threshold, segment_threshold,
            title=f"{title} ({split.name})", extra={"features": described}, tsne=False,
            positive_class=dataset.positive_class, out_of_fold=crossfit.scores if crossfit else None,
            calibration=crossfit.notes if crossfit else {"method": "none"},
            threshold_chosen_on="out-of-fold training sessions" if crossfit else "validation")
        if len(splits) > 1:  # every fold's predictions, as training writes them (the stand-in's bootstrap reads them)
            (folder / "result.json").write_text(json.dumps(results[split.name], indent=2, default=float))
    if len(splits) == 1:
        result = results[splits[0].name]
    else:
        result = summarize_folds(results)
        (output / "report.md").write_text(cross_validation_markdown(
            f"{title}: cross-validation", result, dataset.summary_markdown()))
    result["feature_set"] = feature_set
    result["feature_dimensions"] = int(features.shape[1])
    result["seconds"] = time.monotonic() - started
    (output / "result.json").write_text(json.dumps(result, indent=2, default=float))
    return result


def mean_logit_parts(means: np.ndarray) -> np.ndarray:
    """A mean probability as the calibration's two parts: its logit as the first, 0 as the second."""
    p = np.clip(np.asarray(means, dtype=np.float64), PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    return np.column_stack([np.log(p) - np.log1p(-p), np.zeros(len(p))])


def cross_fitted(config: TrainConfig, split, sessions, fitted_on, prefix_means):
    """The baseline calibrated as the model is (trainer/crossfit.py): refitted on inner folds of the training
    speakers, its out-of-fold scores calibrated (the logit of the mean probability) and thresholded."""
    from moodstream.trainer.calibration_fit import OutOfFold
    from moodstream.trainer.crossfit import decide_on_out_of_fold, inner_splits

    known = {s: sessions[s].session for s in split.train + split.validation}
    inner, note = inner_splits(split, known, config.scoring.inner_folds, config.run.seed)
    if note:
        print(f"note: {note}")
    oof, uncalibrated = OutOfFold(), []
    for inner_split in inner:
        for session_id, means in zip(inner_split.test, prefix_means(fitted_on(inner_split.train), inner_split.test)):
            oof.add(session_id, known[session_id].speaker_id, known[session_id].label, mean_logit_parts(means))
            uncalibrated.append(means)
    return decide_on_out_of_fold(oof, config.scoring, config.run.seed,
                                 {"inner_folds": len(inner), **({"inner_folds_note": note} if note else {})},
                                 uncalibrated=uncalibrated)


def run_baseline_from_config(path: str, overrides: list[str], feature_set: str, output: str | None) -> dict:
    return run_baseline(TrainConfig.load(path, overrides), feature_set, output)
