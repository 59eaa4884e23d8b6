"""The paper's two-stage training (docs/training.md), resumable, one run per split or fold.

Stage 1: backbone + segment head on segment labels (each segment carries its
participant's label) through the segment classifier; Adam with one learning
rate for the backbone and one for the head, weight decay, early stopping on
validation. Stage 2: segment vectors from the frozen stage-1 encoder, then the
session head (LSTM + self-attention) on each participant's sequence. Both
stages step through trainer/loop.py; the data comes from trainer/prepare.py
and the reports from trainer/evaluate.py.

The calibration, its interval, the decision threshold and the evidence rule are
fitted on out-of-fold scores of the training speakers (trainer/crossfit.py:
the networks retrained on inner folds; `scoring.calibration = "cross-fit"`)
or on the validation sessions ("platt", "none"), written into the checkpoint,
and applied unchanged to the test sessions. Every epoch ends with
an atomic resume file, so a run that is interrupted continues where it
stopped when started again with the same output folder.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from moodstream import SCREENING_NOTICE
from moodstream.model import ScreeningModel, pick_device
from moodstream.trainer.config import TrainConfig
from moodstream.trainer.evaluate import Predictions, cross_validation_markdown, summarize_folds, write_evaluation
from moodstream.trainer.folds import Split
from moodstream.trainer.loop import (CsvLog, EpochCallback, atomic_torch_save, epoch_order, pos_weight_for,
                                     run_epoch, run_loop, seed_everything)
from moodstream.trainer.metrics import binary_metrics, choose_threshold
from moodstream.trainer.prefixes import (PrefixScores, choose_min_evidence, fit_platt, platt_cross_validated,
                                          prefix_logit_parts, prefix_logits, scored_prefixes,
                                          sigmoid)
from moodstream.trainer.prepare import prepare_data
from moodstream.trainer.recorded_run import refuse_changed_settings
from moodstream.trainer.segments import SegmentStore

# --------------------------------------------------------------------------- helpers
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
    """A short hash of what makes the frozen backbone's features: its weights, the waveform normalisation and a
    Whisper encoder's input length."""
    import hashlib

    digest = hashlib.sha256(f"normalize={model.config.normalize_waveform}".encode())
    if model.backbone.is_whisper and model.config.whisper_input != "30s":  # "30s" keeps the digests saved before it
        digest.update(f"whisper_input={model.config.whisper_input}".encode())
    for name, tensor in sorted(model.backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


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
        self.keeps_resume_files = True
        self.device = pick_device(config.run.device, option="run.device =")
        run_dir.mkdir(parents=True, exist_ok=True)
        self.log = CsvLog(run_dir / "log.csv")

    def resume_file(self, name: str) -> Path | None:
        """Where a stage keeps its resume file; None for cross-fitting's inner folds, whose result is kept whole."""
        return self.run_dir / name if self.keeps_resume_files else None

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

        def segment_loss(rows: np.ndarray) -> torch.Tensor:
            labels = torch.as_tensor(self.segment_labels(rows), dtype=torch.float32, device=self.device)
            return loss_fn(model.segment_head.segment_logits(self.segment_vectors(rows)), labels)

        def train_epoch(epoch: int) -> float:
            model.segment_head.train()
            model.backbone.train(not frozen)
            order = train_idx[epoch_order(train_labels, config, self.config.run.seed, "stage1", epoch)]
            progress = f"{self.split.name} stage 1 epoch {epoch}" if self.config.run.progress else None
            return run_epoch(order, config, optimizer, segment_loss, progress)

        def validate() -> dict:
            probabilities = self.segment_probabilities(val_idx)
            return self.scores(val_labels, probabilities, weight)

        state = run_loop("stage1", config, trained, optimizer, train_epoch, validate, self.resume_file("stage1.pt"),
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

            def sequence_loss(rows: np.ndarray) -> torch.Tensor:
                padded, lengths = batch_of([items[r] for r in rows], [keep[r] for r in rows])
                labels = torch.as_tensor(item_labels[rows], dtype=torch.float32, device=self.device)
                return loss_fn(head(padded, lengths), labels * (1 - config.label_smoothing) + config.label_smoothing / 2)

            order = epoch_order(item_labels, config, self.config.run.seed, "stage2", epoch)
            return run_epoch(order, config, optimizer, sequence_loss)

        def validate() -> dict:
            if not config.prefix_training:
                return self.scores(val_labels, self.session_probabilities(vectors, val_ids), weight)
            # Prefix training is judged at every point of the validation sessions.
            logits = prefix_logits(head, [vectors[s] for s in val_ids])
            labels = np.concatenate([[label] * len(l) for label, l in zip(val_labels, logits)])
            return self.scores(labels, sigmoid(np.concatenate(logits)), weight)

        self.stage2_state = run_loop("stage2", config, head, optimizer, train_epoch, validate,
                                     self.resume_file("stage2.pt"), self.log, self.split.name, self.config.run.resume,
                                     self.on_epoch_end, judge_start=head.segment_score is not None)

    @torch.inference_mode()
    def session_probabilities(self, vectors: dict[str, torch.Tensor], ids: list[str]) -> np.ndarray:
        self.model.session_head.eval()
        return np.asarray([self.model.score(vectors[session_id].to(self.device)) for session_id in ids], dtype=float)

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
        checked = {}
        if self.config.scoring.calibration_check:
            session_labels = [self.sessions[s].session.label for s in val_ids]
            losses = platt_cross_validated(logits, session_labels)
            if losses is not None:
                checked = {"held_out_log_loss_platt": losses[0], "held_out_log_loss_uncalibrated": losses[1]}
                if losses[0] >= losses[1]:
                    print(f"{self.split.name}: calibration not applied (held out, Platt's log loss "
                          f"{losses[0]:.3f} >= {losses[1]:.3f} uncalibrated)")
                    return {"method": "none", "skipped": "did not lower the held-out validation log loss", **checked}
        scale, bias = fitted
        self.model.config = self.model.config.replace(calibration_scale=scale, calibration_bias=bias)
        return {"method": method, "fitted_on": "validation prefixes", "prefixes": int(labels.size),
                "scale": scale, "bias": bias, **checked}

    def decide(self, vectors: dict[str, torch.Tensor]) -> Decisions:
        """Calibration, decision threshold and evidence rule, stored in the model's config.

        cross-fit: all three from out-of-fold scores of the training speakers (trainer/crossfit.py);
        platt / none: from the validation sessions.
        """
        scoring = self.config.scoring
        if scoring.calibration == "cross-fit":
            from moodstream.trainer.crossfit import cross_fit

            result = cross_fit(self)
            self.model.config = self.model.config.replace(**result.model_fields())
            return Decisions(result.notes, result.threshold, "out-of-fold training sessions", result.min_evidence,
                             result.scores)
        calibration = self.calibrate(vectors, self.split.validation)
        val_labels = [self.sessions[s].session.label for s in self.split.validation]
        threshold = choose_threshold(val_labels, self.session_probabilities(vectors, self.split.validation))
        min_evidence = choose_min_evidence(val_labels, self.prefix_scores(vectors, self.split.validation).probabilities,
                                           scoring.evidence_auc_tolerance)
        return Decisions(calibration, threshold, "validation", min_evidence)

    def prefix_scores(self, vectors: dict[str, torch.Tensor], ids: list[str]) -> PrefixScores:
        """These sessions' scores after every prefix, calibrated (with the interval, if any) and before."""
        parts = prefix_logit_parts(self.model.session_head, [vectors[s] for s in ids])
        probabilities, low, high = scored_prefixes(self.model.calibration, parts)
        labels = np.asarray([self.sessions[s].session.label for s in ids])
        return PrefixScores(labels, probabilities, [sigmoid(p.sum(axis=1)) for p in parts], low, high,
                            self.model.calibration.level)

    # ..................................................................... whole run
    def fit_networks(self) -> dict[str, torch.Tensor]:
        """Stages 1 and 2 on this split; returns the segment vectors of every session in it."""
        config, split = self.config, self.split
        seed_everything(config.run.seed)
        self.model = ScreeningModel(config.model_config(), load_pretrained_backbone=config.pretrained).to(self.device)
        self.stage1(split.train, split.validation)
        vectors = self.session_vectors(split.train + split.validation + split.test)
        self.stage2(vectors, split.train, split.validation)
        return vectors

    def inner_trainer(self, split: Split, run_dir: Path) -> "SplitTrainer":
        """A trainer of the same recipe and data on an inner split of this one (cross-fitting)."""
        inner = SplitTrainer(self.config, self.store, split, run_dir, positive_class=self.positive_class)
        inner.keeps_resume_files = False
        return inner

    def run(self) -> dict:
        config = self.config
        split = self.split
        started = time.monotonic()
        vectors = self.fit_networks()

        # Calibration, thresholds and the evidence rule never see the test sessions; they apply to them unchanged.
        decisions = self.decide(vectors)
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
            "threshold_chosen_on": decisions.chosen_on,
            "stage1_best_epoch": self.stage1_state.best_epoch,
            "stage2_best_epoch": self.stage2_state.best_epoch,
            "training_recipe": config.run.recipe,
            "calibration": decisions.calibration,
        }
        notes.update(self.model.config.notes or {})
        threshold = decisions.threshold
        self.model.config = self.model.config.replace(decision_threshold=float(np.clip(threshold, 1e-4, 1 - 1e-4)),
                                                      min_evidence_segments=decisions.min_evidence, notes=notes)
        checkpoint = self.model.save_pretrained(self.run_dir / "checkpoint")

        predictions = {}
        for side, ids in (("validation", split.validation), ("test", split.test)):
            if not ids:
                continue
            seg_idx = self.segment_indices(ids)
            scores = self.prefix_scores(vectors, ids)
            predictions[side] = Predictions(
                session_ids=list(ids),
                session_labels=np.asarray([self.sessions[s].session.label for s in ids]),
                session_probabilities=self.session_probabilities(vectors, ids),
                segment_session_ids=[self.store.session_of(int(i)).session_id for i in seg_idx],
                segment_labels=self.segment_labels(seg_idx),
                segment_probabilities=self.segment_probabilities(seg_idx),
                segment_vectors=torch.cat([vectors[s] for s in ids]).numpy(),
                session_prefix_probabilities=scores.probabilities,
                session_prefix_uncalibrated=scores.uncalibrated,
                session_prefix_low=scores.low, session_prefix_high=scores.high, interval_level=scores.level,
            )
        result = write_evaluation(self.run_dir, predictions, threshold, segment_threshold,
                                  title=f"moodstream training report ({split.name})",
                                  extra={"seconds": time.monotonic() - started,
                                         "stage1_epochs": self.stage1_state.epoch,
                                         "stage2_epochs": self.stage2_state.epoch,
                                         "training_recipe": config.run.recipe,
                                         "min_evidence_segments": self.model.config.min_evidence_segments},
                                  tsne=config.run.tsne, seed=config.run.seed, positive_class=self.positive_class,
                                  out_of_fold=decisions.out_of_fold, calibration=decisions.calibration,
                                  threshold_chosen_on=decisions.chosen_on)
        result["checkpoint"] = str(checkpoint)
        (self.run_dir / "result.json").write_text(json.dumps(result, indent=2, default=float))
        return result


@dataclass
class Decisions:
    calibration: dict               # what was fitted, and on what (checkpoint notes.calibration)
    threshold: float
    chosen_on: str                  # the sessions the threshold was chosen on
    min_evidence: int
    out_of_fold: PrefixScores | None = None


# --------------------------------------------------------------------------- entry point
def train(config: TrainConfig, on_epoch_end: EpochCallback | None = None, force_new: bool = False) -> dict:
    """Run the whole recipe; returns the result (per split, or per fold plus the cross-validation summary).

    A run folder that records other settings is refused (trainer/recorded_run.py) unless `force_new`, which
    trains anew there as `run.resume = false` does."""
    if config.run.threads:
        torch.set_num_threads(config.run.threads)
    output = config.output_dir
    dataset, store, splits = prepare_data(config)  # before any folder is made: bad data leaves nothing behind
    output.mkdir(parents=True, exist_ok=True)
    config = config.with_recipe(len(dataset.sessions))
    if not force_new:
        refuse_changed_settings(output, config)
    resume = config.run.resume and not force_new
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
        if resume and done.is_file() and (run_dir / "checkpoint" / "config.json").is_file():
            results[split.name] = json.loads(done.read_text())
            continue
        if not resume:
            for stale in ("stage1.pt", "stage2.pt", "log.csv"):
                (run_dir / stale).unlink(missing_ok=True)
            shutil.rmtree(run_dir / "crossfit", ignore_errors=True)
        results[split.name] = SplitTrainer(config, store, split, run_dir, on_epoch_end,
                                              positive_class=dataset.positive_class).run()
    if len(splits) == 1:
        return results[splits[0].name]
    summary = summarize_folds(results)
    (output / "cv_summary.json").write_text(json.dumps(summary, indent=2, default=float))
    if "pooled_prefix" in summary:
        from moodstream.trainer.calibration_report import write_pooled_figures
        from moodstream.trainer.prefixes import prefix_png

        prefix_png(summary["pooled_prefix"], summary["pooled_prefix_uncalibrated"], output / "prefix.png",
                   "test folds pooled: session score after k segments")
        write_pooled_figures(summary, output)
    (output / "report.md").write_text(cross_validation_markdown("moodstream cross-validation report", summary,
                                                                dataset.summary_markdown()))
    return summary
