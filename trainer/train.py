"""The paper's two-stage training (DESIGN.md §1), resumable, one run per split or fold.

Stage 1: backbone + segment head on segment labels (each segment carries its
participant's label) through the segment classifier; Adam with one learning
rate for the backbone and one for the head, weight decay, early stopping on
validation. Stage 2: segment vectors from the frozen stage-1 encoder, then the
session head (LSTM + self-attention) on each participant's sequence.

The decision threshold is chosen on validation sessions, written into the
checkpoint, and applied unchanged to the test sessions. Every epoch ends with
an atomic resume file, so a run that is interrupted continues where it
stopped when started again with the same output folder.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from moodstream import SCREENING_NOTICE
from moodstream.model import ScreeningModel
from moodstream.trainer.config import StageSection, TrainConfig
from moodstream.trainer.data import Dataset, read_daic_woz, read_manifest
from moodstream.trainer.folds import Split, cross_validation_splits, predefined_split
from moodstream.trainer.metrics import binary_metrics, choose_threshold, mean_std
from moodstream.trainer.prefixes import choose_min_evidence, fit_platt, prefix_logits, sigmoid
from moodstream.trainer.segments import SegmentParams, SegmentStore, build_segments

EpochCallback = Callable[[str, int, dict], None]


# --------------------------------------------------------------------------- data
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
    from moodstream.trainer.evaluate import detect_format

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


# --------------------------------------------------------------------------- helpers
def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"run.device = {name!r} but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def atomic_torch_save(obj, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save(obj, temporary)
    os.replace(temporary, path)


def pos_weight_for(labels: np.ndarray, stage: StageSection) -> float:
    positives = int(labels.sum())
    negatives = int(len(labels) - positives)
    if stage.imbalance != "weighted-loss" or positives == 0 or negatives == 0:
        return 1.0
    return negatives / positives


def epoch_order(labels: np.ndarray, stage: StageSection, seed: int, stage_name: str, epoch: int) -> np.ndarray:
    """Indices (into `labels`) for one epoch: a fixed function of (seed, stage, epoch), so resuming repeats it."""
    rng = np.random.default_rng([seed, 1 if stage_name == "stage1" else 2, epoch])
    if stage.imbalance == "balanced-sampling" and 0 < labels.sum() < len(labels):
        counts = np.bincount(labels, minlength=2).astype(float)
        weights = 1.0 / counts[labels]
        return rng.choice(len(labels), size=len(labels), replace=True, p=weights / weights.sum())
    return rng.permutation(len(labels))


def frozen_frame_features(model: ScreeningModel, store: SegmentStore, indices, device: torch.device, step: int,
                          description: str, progress: bool) -> list[torch.Tensor | None]:
    """Frame features [frames, H] (fp16, CPU) of the segments `indices` through the model's frozen backbone.

    Every fold (and every run or baseline on the same frozen encoder) sees the same features, so they are
    kept on disk beside the segments, keyed by the encoder's weights, once every segment has them.
    """
    from tqdm import tqdm

    saved_path = store.folder / f"frames-{backbone_digest(model)}.pt"
    if saved_path.is_file():
        saved = torch.load(saved_path, map_location="cpu", weights_only=True)
        if torch.equal(saved["offsets"], torch.as_tensor(store.offsets)):
            return list(saved["frames"])
    cache: list[torch.Tensor | None] = [None] * len(store)
    model.backbone.eval()
    order = sorted(set(int(i) for i in indices))
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), step), desc=description, disable=not progress):
            rows = order[start:start + step]
            batch, lengths = model.prepare_waveforms([store.waveform(i) for i in rows], model.config.sample_rate)
            features, mask = model.backbone(batch.to(device), lengths.to(device))
            for row, index in enumerate(rows):
                cache[index] = features[row, : int(mask[row].sum())].to("cpu", torch.float16).clone()
    if all(item is not None for item in cache):
        atomic_torch_save({"offsets": torch.as_tensor(store.offsets), "frames": cache}, saved_path)
    return cache


def backbone_digest(model: ScreeningModel) -> str:
    """A short hash of what makes the frozen backbone's features: its weights and the waveform normalisation."""
    import hashlib

    digest = hashlib.sha256(f"normalize={model.config.normalize_waveform}".encode())
    for name, tensor in sorted(model.backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def is_better(monitor: str, value: float, best: float | None) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return best is None
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return True
    return value < best - 1e-9 if monitor == "loss" else value > best + 1e-9


class CsvLog:
    FIELDS = ["split", "stage", "epoch", "train_loss", "val_loss", "val_auc", "val_f1", "best", "seconds"]

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            with open(path, "w", newline="") as handle:
                csv.writer(handle).writerow(self.FIELDS)

    def write(self, **row) -> None:
        with open(self.path, "a", newline="") as handle:
            csv.writer(handle).writerow([_fmt(row.get(f)) for f in self.FIELDS])


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


# --------------------------------------------------------------------------- early-stopping loop
@dataclass
class LoopState:
    epoch: int = 0                      # epochs completed
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    done: bool = False
    history: list[dict] = field(default_factory=list)


def run_loop(name: str, stage: StageSection, modules: nn.Module, optimizer: torch.optim.Optimizer,
             train_epoch: Callable[[int], float], validate: Callable[[], dict], resume_path: Path,
             log: CsvLog, split_name: str, resume: bool, on_epoch_end: EpochCallback | None,
             judge_start: bool = False) -> LoopState:
    """Epochs with early stopping on validation; resumable after every epoch.

    `judge_start`: the weights before the first epoch (a warm start) are a candidate too, logged as epoch 0.
    """
    state = LoopState()
    best_weights = None
    if resume and resume_path.is_file():
        saved = torch.load(resume_path, map_location="cpu", weights_only=False)
        modules.load_state_dict(saved["weights"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["torch_rng"])
        np.random.set_state(saved["numpy_rng"])  # wav2vec2's time masking draws from numpy
        random.setstate(saved["python_rng"])
        state = LoopState(**saved["loop"])
        best_weights = saved["best_weights"]
        if not state.done:
            print(f"{split_name} {name}: resuming after epoch {state.epoch}")
    elif judge_start:
        metrics = validate()
        state.best = metrics[stage.monitor]
        best_weights = {k: v.detach().cpu().clone() for k, v in modules.state_dict().items()}
        log.write(split=split_name, stage=name, epoch=0, train_loss=None, val_loss=metrics["loss"],
                  val_auc=metrics["auc"], val_f1=metrics["f1"], best=True, seconds=0.0)
    while not state.done and state.epoch < stage.epochs:
        epoch = state.epoch + 1
        started = time.monotonic()
        train_loss = train_epoch(epoch)
        metrics = validate()
        value = metrics[stage.monitor]
        improved = is_better(stage.monitor, value, state.best)
        if improved:
            state.best, state.best_epoch, state.bad_epochs = value, epoch, 0
            best_weights = {k: v.detach().cpu().clone() for k, v in modules.state_dict().items()}
        else:
            state.bad_epochs += 1
        state.epoch = epoch
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": metrics["loss"], "val_auc": metrics["auc"],
               "val_f1": metrics["f1"], "best": improved, "seconds": time.monotonic() - started}
        state.history.append(row)
        log.write(split=split_name, stage=name, **row)
        if state.bad_epochs >= stage.patience or state.epoch >= stage.epochs:
            state.done = True
        atomic_torch_save({"weights": modules.state_dict(), "optimizer": optimizer.state_dict(),
                           "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
                           "python_rng": random.getstate(), "loop": state.__dict__, "best_weights": best_weights},
                          resume_path)
        if on_epoch_end is not None:
            on_epoch_end(name, epoch, row)
    if best_weights is not None:
        modules.load_state_dict(best_weights)
    return state


# --------------------------------------------------------------------------- one split
class SplitTrainer:
    def __init__(self, config: TrainConfig, store: SegmentStore, split: Split, run_dir: Path,
                 on_epoch_end: EpochCallback | None = None, positive_class: str = "depressed") -> None:
        self.start_run(config, split, run_dir, on_epoch_end, positive_class)
        self.store = store
        self.sessions = store.by_id()
        self.feature_cache: list[torch.Tensor] | None = None

    def start_run(self, config: TrainConfig, split: Split, run_dir: Path, on_epoch_end: EpochCallback | None,
                  positive_class: str) -> None:
        """What every trainer of one split holds, whatever its data: settings, device, run folder and log."""
        self.config = config
        self.positive_class = positive_class
        self.split = split
        self.run_dir = run_dir
        self.on_epoch_end = on_epoch_end
        self.device = pick_device(config.run.device)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.log = CsvLog(run_dir / "log.csv")

    # ..................................................................... segments
    def segment_indices(self, session_ids: list[str]) -> np.ndarray:
        return np.asarray([i for s in session_ids for i in self.sessions[s].segments], dtype=np.int64)

    def segment_labels(self, indices: np.ndarray) -> np.ndarray:
        return np.asarray([self.store.label(int(i)) for i in indices], dtype=np.int64)

    def waveforms(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        batch, lengths = self.model.prepare_waveforms([self.store.waveform(int(i)) for i in indices],
                                                      self.model.config.sample_rate)
        return batch.to(self.device), lengths.to(self.device)

    def build_feature_cache(self, indices: np.ndarray) -> None:
        """Frozen backbone: its frame features never change, so compute them once (fp16, CPU)."""
        model = self.model
        frames = model.backbone.frame_lengths(torch.as_tensor(self.store.lengths)).sum().item()
        gigabytes = frames * model.backbone.hidden_size * 2 / 1e9
        if gigabytes > self.config.stage1.feature_cache_max_gb:
            print(f"{self.split.name}: frozen-feature cache would take {gigabytes:.1f} GB "
                  f"(> stage1.feature_cache_max_gb): computing features every step instead")
            return
        step = max(1, self.config.stage1.batch_size // self.config.stage1.gradient_accumulation)
        self.feature_cache = frozen_frame_features(model, self.store, indices, self.device, step,
                                                   f"{self.split.name} backbone features", self.config.run.progress)

    @torch.inference_mode()
    def training_frames(self, indices: np.ndarray) -> torch.Tensor:
        """Every frame feature of these (training) segments, as the backbone gives them before training."""
        if self.feature_cache is not None and all(self.feature_cache[int(i)] is not None for i in indices):
            return torch.cat([self.feature_cache[int(i)].float() for i in indices])
        self.model.backbone.eval()
        frames = []
        step = max(1, self.config.stage1.batch_size // self.config.stage1.gradient_accumulation)
        for start in range(0, len(indices), step):
            features, mask = self.model.backbone(*self.waveforms(indices[start:start + step]))
            frames.append(features[mask].float().cpu())
        return torch.cat(frames)

    def segment_vectors(self, indices) -> torch.Tensor:
        items = None if self.feature_cache is None else [self.feature_cache[int(i)] for i in indices]
        if items is not None and all(item is not None for item in items):
            width = max(item.shape[0] for item in items)
            features = torch.zeros(len(items), width, items[0].shape[1], device=self.device)
            mask = torch.zeros(len(items), width, dtype=torch.bool, device=self.device)
            for row, item in enumerate(items):
                features[row, : item.shape[0]] = item.to(self.device, torch.float32)
                mask[row, : item.shape[0]] = True
            return self.model.segment_head(features, mask)
        return self.model.segment_vectors(*self.waveforms(indices))

    # ..................................................................... stage 1
    def stage1(self, train_ids: list[str], val_ids: list[str]) -> None:
        config, model = self.config.stage1, self.model
        train_idx, val_idx = self.segment_indices(train_ids), self.segment_indices(val_ids)
        train_labels, val_labels = self.segment_labels(train_idx), self.segment_labels(val_idx)
        frozen = model.config.fine_tuning == "frozen"
        if frozen and config.cache_frozen_features:
            self.build_feature_cache(self.segment_indices(self.split.train + self.split.validation + self.split.test))
        if model.config.feature_normalization != "none":
            model.segment_head.set_feature_statistics(self.training_frames(train_idx))
        weight = torch.tensor(pos_weight_for(train_labels, config), device=self.device)
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=weight)
        backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
        groups = [{"params": list(model.segment_head.parameters()), "lr": config.lr_head}]
        if backbone_params:
            groups.append({"params": backbone_params, "lr": config.lr_backbone})
        optimizer = torch.optim.Adam(groups, weight_decay=config.weight_decay)
        trained = nn.ModuleDict({"backbone": model.backbone, "segment_head": model.segment_head})
        micro = config.batch_size // config.gradient_accumulation
        from tqdm import tqdm

        def train_epoch(epoch: int) -> float:
            model.segment_head.train()
            model.backbone.train(not frozen)
            order = train_idx[epoch_order(train_labels, config, self.config.run.seed, "stage1", epoch)]
            total, count = 0.0, 0
            batches = range(0, len(order), config.batch_size)
            for start in tqdm(batches, desc=f"{self.split.name} stage 1 epoch {epoch}", leave=False,
                              disable=not self.config.run.progress):
                batch = order[start:start + config.batch_size]
                optimizer.zero_grad(set_to_none=True)
                for micro_start in range(0, len(batch), micro):
                    rows = batch[micro_start:micro_start + micro]
                    labels = torch.as_tensor(self.segment_labels(rows), dtype=torch.float32, device=self.device)
                    logits = model.segment_head.segment_logits(self.segment_vectors(rows))
                    loss = loss_fn(logits, labels)
                    (loss * len(rows) / len(batch)).backward()
                    total += float(loss.detach()) * len(rows)
                    count += len(rows)
                if config.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], config.max_grad_norm)
                optimizer.step()
            return total / max(1, count)

        def validate() -> dict:
            probabilities = self.segment_probabilities(val_idx)
            return self.scores(val_labels, probabilities, weight)

        state = run_loop("stage1", config, trained, optimizer, train_epoch, validate, self.run_dir / "stage1.pt",
                         self.log, self.split.name, self.config.run.resume, self.on_epoch_end)
        self.stage1_state = state

    @torch.inference_mode()
    def segment_probabilities(self, indices: np.ndarray) -> np.ndarray:
        self.model.eval()
        out = []
        step = self.config.stage1.batch_size
        for start in range(0, len(indices), step):
            rows = indices[start:start + step]
            out.append(torch.sigmoid(self.model.segment_head.segment_logits(self.segment_vectors(rows))).cpu())
        return torch.cat(out).numpy().astype(float) if out else np.zeros(0)

    @staticmethod
    def scores(labels: np.ndarray, probabilities: np.ndarray, pos_weight: torch.Tensor) -> dict:
        p = torch.as_tensor(probabilities, dtype=torch.float64).clamp(1e-7, 1 - 1e-7)
        y = torch.as_tensor(labels, dtype=torch.float64)
        w = float(pos_weight)
        loss = float(-(w * y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean())
        metrics = binary_metrics(labels, probabilities, 0.5)
        return {"loss": loss, "auc": metrics["auc"], "f1": metrics["f1"]}

    # ..................................................................... vectors
    @torch.inference_mode()
    def session_vectors(self, session_ids: list[str]) -> dict[str, torch.Tensor]:
        self.model.eval()
        out = {}
        step = self.config.stage1.batch_size
        for session_id in session_ids:
            indices = self.sessions[session_id].segments
            parts = [self.segment_vectors(indices[s:s + step]).float().cpu() for s in range(0, len(indices), step)]
            out[session_id] = torch.cat(parts)
        return out

    # ..................................................................... stage 2
    def stage2(self, vectors: dict[str, torch.Tensor], train_ids: list[str], val_ids: list[str]) -> None:
        config, head = self.config.stage2, self.model.session_head
        if head.segment_score is not None:
            head.start_from_segment_classifier(self.model.segment_head.segment_classifier)
        train_labels = np.asarray([self.sessions[s].session.label for s in train_ids])
        val_labels = np.asarray([self.sessions[s].session.label for s in val_ids])
        weight = torch.tensor(pos_weight_for(train_labels, config), device=self.device)
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=weight)
        optimizer = torch.optim.Adam(head.parameters(), lr=config.lr_head, weight_decay=config.weight_decay)
        micro = config.batch_size // config.gradient_accumulation

        def batch_of(ids, keep=None):
            sequences = [vectors[s] if keep is None else vectors[s][:n] for s, n in zip(ids, keep or ids)]
            lengths = torch.tensor([len(v) for v in sequences], device=self.device)
            padded = nn.utils.rnn.pad_sequence(sequences, batch_first=True).to(self.device)
            return padded, lengths

        def prefixes_for(epoch: int, ids: list[str]) -> list[int]:
            """Segments each item keeps: whole sessions, then (prefix training) one random prefix of each."""
            whole = [len(vectors[s]) for s in ids]
            if not config.prefix_training:
                return whole
            rng = np.random.default_rng([self.config.run.seed, 3, epoch])
            return whole + [int(rng.integers(1, n + 1)) for n in whole]

        def train_epoch(epoch: int) -> float:
            head.train()
            keep = prefixes_for(epoch, train_ids)
            items = [train_ids[i % len(train_ids)] for i in range(len(keep))]
            item_labels = np.asarray([self.sessions[s].session.label for s in items])
            order = epoch_order(item_labels, config, self.config.run.seed, "stage2", epoch)
            total, count = 0.0, 0
            for start in range(0, len(order), config.batch_size):
                batch = order[start:start + config.batch_size]
                optimizer.zero_grad(set_to_none=True)
                for micro_start in range(0, len(batch), micro):
                    rows = batch[micro_start:micro_start + micro]
                    padded, lengths = batch_of([items[r] for r in rows], [keep[r] for r in rows])
                    labels = torch.as_tensor(item_labels[rows], dtype=torch.float32, device=self.device)
                    loss = loss_fn(head(padded, lengths), labels)
                    (loss * len(rows) / len(batch)).backward()
                    total += float(loss.detach()) * len(rows)
                    count += len(rows)
                if config.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(head.parameters(), config.max_grad_norm)
                optimizer.step()
            return total / max(1, count)

        def validate() -> dict:
            if not config.prefix_training:
                return self.scores(val_labels, self.session_probabilities(vectors, val_ids), weight)
            # Prefix training is judged at every point of the validation sessions.
            from moodstream.trainer.prefixes import prefix_logits, sigmoid

            logits = prefix_logits(head, [vectors[s] for s in val_ids])
            labels = np.concatenate([[label] * len(l) for label, l in zip(val_labels, logits)])
            return self.scores(labels, sigmoid(np.concatenate(logits)), weight)

        self.stage2_state = run_loop("stage2", config, head, optimizer, train_epoch, validate,
                                     self.run_dir / "stage2.pt", self.log, self.split.name, self.config.run.resume,
                                     self.on_epoch_end, judge_start=head.segment_score is not None)

    @torch.inference_mode()
    def session_probabilities(self, vectors: dict[str, torch.Tensor], ids: list[str]) -> np.ndarray:
        head = self.model.session_head.eval()
        out = []
        for session_id in ids:
            sequence = vectors[session_id].to(self.device)[None]
            out.append(self.model.session_probability(head(sequence)[0]))
        return np.asarray(out, dtype=float)

    def prefix_probabilities(self, vectors: dict[str, torch.Tensor], ids: list[str],
                             calibrated: bool = True) -> list[np.ndarray]:
        logits = prefix_logits(self.model.session_head, [vectors[s] for s in ids])
        if calibrated:
            return [sigmoid(self.model.calibrated_logit(torch.from_numpy(l)).numpy()) for l in logits]
        return [sigmoid(l) for l in logits]

    def calibrate(self, vectors: dict[str, torch.Tensor], val_ids: list[str]) -> dict:
        """Platt scaling on every prefix of the validation sessions; stored in the model's config."""
        method = self.config.scoring.calibration
        if method == "none":
            return {"method": "none"}
        logits = prefix_logits(self.model.session_head, [vectors[s] for s in val_ids])
        labels = np.concatenate([[self.sessions[s].session.label] * len(l) for s, l in zip(val_ids, logits)])
        fitted = fit_platt(np.concatenate(logits), labels) if logits else None
        if fitted is None:
            print(f"{self.split.name}: calibration skipped (validation has one class, or ranks the wrong way)")
            return {"method": "none", "skipped": "validation cannot fit it"}
        scale, bias = fitted
        self.model.config = self.model.config.replace(calibration_scale=scale, calibration_bias=bias)
        return {"method": method, "fitted_on": "validation prefixes", "prefixes": int(labels.size),
                "scale": scale, "bias": bias}

    # ..................................................................... whole run
    def run(self) -> dict:
        config = self.config
        seed_everything(config.run.seed)
        model_config = config.model_config()
        self.model = ScreeningModel(model_config, load_pretrained_backbone=config.pretrained).to(self.device)
        split = self.split
        started = time.monotonic()
        self.stage1(split.train, split.validation)
        all_ids = split.train + split.validation + split.test
        vectors = self.session_vectors(all_ids)
        self.stage2(vectors, split.train, split.validation)

        # Calibration, thresholds and the evidence rule come from validation only, then apply to test unchanged.
        calibration = self.calibrate(vectors, split.validation)
        val_probs = self.session_probabilities(vectors, split.validation)
        val_labels = [self.sessions[s].session.label for s in split.validation]
        threshold = choose_threshold(val_labels, val_probs)
        val_seg_idx = self.segment_indices(split.validation)
        val_seg_probs = self.segment_probabilities(val_seg_idx)
        segment_threshold = choose_threshold(self.segment_labels(val_seg_idx), val_seg_probs)

        notes = {
            "trained": True,
            "screening_notice": SCREENING_NOTICE,
            "data": config.data.format,
            "split": split.name,
            "train_sessions": len(split.train),
            "validation_sessions": len(split.validation),
            "segment_threshold": segment_threshold,
            "threshold_chosen_on": "validation",
            "stage1_best_epoch": self.stage1_state.best_epoch,
            "stage2_best_epoch": self.stage2_state.best_epoch,
            "training_recipe": config.run.recipe,
            "calibration": calibration,
        }
        notes.update(model_config.notes or {})
        val_prefixes = self.prefix_probabilities(vectors, split.validation)
        min_evidence = choose_min_evidence(val_labels, val_prefixes, config.scoring.evidence_auc_tolerance)
        self.model.config = self.model.config.replace(decision_threshold=float(np.clip(threshold, 1e-4, 1 - 1e-4)),
                                                      min_evidence_segments=min_evidence, notes=notes)
        checkpoint = self.model.save_pretrained(self.run_dir / "checkpoint")

        from moodstream.trainer.evaluate import Predictions, write_evaluation

        predictions = {}
        for side, ids in (("validation", split.validation), ("test", split.test)):
            if not ids:
                continue
            seg_idx = self.segment_indices(ids)
            predictions[side] = Predictions(
                session_ids=list(ids),
                session_labels=np.asarray([self.sessions[s].session.label for s in ids]),
                session_probabilities=self.session_probabilities(vectors, ids),
                segment_session_ids=[self.store.session_of(int(i)).session_id for i in seg_idx],
                segment_labels=self.segment_labels(seg_idx),
                segment_probabilities=self.segment_probabilities(seg_idx),
                segment_vectors=torch.cat([vectors[s] for s in ids]).numpy(),
                session_prefix_probabilities=self.prefix_probabilities(vectors, ids),
                session_prefix_uncalibrated=self.prefix_probabilities(vectors, ids, calibrated=False),
            )
        result = write_evaluation(self.run_dir, predictions, threshold, segment_threshold,
                                  title=f"moodstream training report ({split.name})",
                                  extra={"seconds": time.monotonic() - started,
                                         "stage1_epochs": self.stage1_state.epoch,
                                         "stage2_epochs": self.stage2_state.epoch,
                                         "training_recipe": config.run.recipe,
                                         "min_evidence_segments": self.model.config.min_evidence_segments,
                                         "calibration": json.dumps(calibration)},
                                  tsne=config.run.tsne, seed=config.run.seed, positive_class=self.positive_class)
        result["checkpoint"] = str(checkpoint)
        (self.run_dir / "result.json").write_text(json.dumps(result, indent=2, default=float))
        return result


# --------------------------------------------------------------------------- entry point
def train(config: TrainConfig, on_epoch_end: EpochCallback | None = None) -> dict:
    """Run the whole recipe; returns the result (per split, or per fold plus the cross-validation summary)."""
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    output = config.output_dir
    dataset, store, splits = prepare_data(config)  # before any folder is made: bad data leaves nothing behind
    output.mkdir(parents=True, exist_ok=True)
    config = config.with_recipe(len(dataset.sessions))
    if config.run.progress:
        print(f"recipe: {config.run.recipe} ({len(dataset.sessions)} sessions)")
    (output / "config.toml").write_text(config.to_toml())
    (output / "data_summary.md").write_text(dataset.summary_markdown())
    (output / "data_summary.json").write_text(json.dumps(dataset.summary(), indent=2))
    results = {}
    for split in splits:
        run_dir = output if len(splits) == 1 else output / split.name
        run_dir.mkdir(parents=True, exist_ok=True)
        done = run_dir / "result.json"
        if config.run.resume and done.is_file() and (run_dir / "checkpoint" / "config.json").is_file():
            results[split.name] = json.loads(done.read_text())
            continue
        if not config.run.resume:
            for stale in ("stage1.pt", "stage2.pt", "log.csv"):
                (run_dir / stale).unlink(missing_ok=True)
        results[split.name] = SplitTrainer(config, store, split, run_dir, on_epoch_end,
                                              positive_class=dataset.positive_class).run()
    if len(splits) == 1:
        return results[splits[0].name]
    summary = summarize_folds(results)
    (output / "cv_summary.json").write_text(json.dumps(summary, indent=2, default=float))
    from moodstream.trainer.evaluate import cross_validation_markdown

    if "pooled_prefix" in summary:
        from moodstream.trainer.prefixes import prefix_png

        prefix_png(summary["pooled_prefix"], summary["pooled_prefix_uncalibrated"], output / "prefix.png",
                   "test folds pooled: session score after k segments")
    (output / "report.md").write_text(cross_validation_markdown("moodstream cross-validation report", summary,
                                                                dataset.summary_markdown()))
    return summary


def summarize_folds(results: dict[str, dict]) -> dict:
    """Per-fold test metrics, mean ± std over folds, and AUCs pooled over every fold's test predictions."""
    from sklearn.metrics import roc_auc_score

    folds = {name: r for name, r in results.items() if "test" in r}
    session_labels, session_probs, segment_labels, segment_probs = [], [], [], []
    for r in folds.values():
        session_labels += r["test"]["predictions"]["session_labels"]
        session_probs += r["test"]["predictions"]["session_probabilities"]
        segment_labels += r["test"]["predictions"]["segment_labels"]
        segment_probs += r["test"]["predictions"]["segment_probabilities"]

    def collect(level: str, key: str):
        return [r["test"][level][key] for r in folds.values()]

    summary = {"folds": {name: {"session": r["test"]["session"], "segment": r["test"]["segment"]}
                         for name, r in folds.items()}}
    for level in ("session", "segment"):
        for key in ("precision", "recall", "f1", "auc"):
            mean, std = mean_std(collect(level, key))
            summary[f"{level}_{key}_mean"], summary[f"{level}_{key}_std"] = mean, std
    both = lambda labels: len(set(labels)) == 2  # noqa: E731
    summary["pooled_session_auc"] = float(roc_auc_score(session_labels, session_probs)) if both(session_labels) else math.nan
    summary["pooled_segment_auc"] = float(roc_auc_score(segment_labels, segment_probs)) if both(segment_labels) else math.nan
    summary["sessions"] = len(session_labels)
    summary["segments"] = len(segment_labels)
    prefixes = [r["test"]["predictions"].get("session_prefix_probabilities") for r in folds.values()]
    if prefixes and all(p is not None for p in prefixes):
        from moodstream.trainer.prefixes import prefix_rows

        uncalibrated = [row for r in folds.values() for row in r["test"]["predictions"]["session_prefix_uncalibrated"]]
        summary["pooled_prefix"] = prefix_rows(session_labels, [np.asarray(row) for p in prefixes for row in p])
        summary["pooled_prefix_uncalibrated"] = prefix_rows(session_labels, [np.asarray(row) for row in uncalibrated])
    return summary
