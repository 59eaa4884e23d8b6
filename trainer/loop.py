"""The epoch machinery both training stages (and the session-head retraining from a field export) share:
seeding, the order of each epoch, the class weighting, one optimizer step over a batch, early stopping on
validation, and the resume file written after every epoch (docs/training.md)."""
from __future__ import annotations

import csv
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

from moodstream.trainer.config import StageSection

EpochCallback = Callable[[str, int, dict], None]


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


def run_epoch(order: np.ndarray, stage: StageSection, optimizer: torch.optim.Optimizer,
                batch_loss: Callable[[np.ndarray], torch.Tensor], description: str | None = None) -> float:
    """One epoch over `order` in batches of stage.batch_size; returns the mean training loss per item.

    Each batch is one optimizer step: its micro-batches (stage.gradient_accumulation of them) each add their
    share of the batch's mean loss to the gradients, which are clipped at stage.max_grad_norm (0: not
    clipped) over every parameter the optimizer updates. `batch_loss(rows)` is the mean loss of the items
    `order` picked for one micro-batch.
    """
    from tqdm import tqdm

    micro = stage.batch_size // stage.gradient_accumulation
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    total, count = 0.0, 0
    for start in tqdm(range(0, len(order), stage.batch_size), desc=description, leave=False,
                      disable=description is None):
        batch = order[start:start + stage.batch_size]
        optimizer.zero_grad(set_to_none=True)
        for micro_start in range(0, len(batch), micro):
            rows = batch[micro_start:micro_start + micro]
            loss = batch_loss(rows)
            (loss * len(rows) / len(batch)).backward()
            total += float(loss.detach()) * len(rows)
            count += len(rows)
        if stage.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(parameters, stage.max_grad_norm)
        optimizer.step()
    return total / max(1, count)


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


def _weights_copy(modules: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in modules.state_dict().items()}


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
             train_epoch: Callable[[int], float], validate: Callable[[], dict], resume_path: Path | None,
             log: CsvLog, split_name: str, resume: bool, on_epoch_end: EpochCallback | None,
             judge_start: bool = False) -> LoopState:
    """Epochs with early stopping on validation; resumable after every epoch.

    `judge_start`: the weights before the first epoch (a warm start) are a candidate too, logged as epoch 0.
    `resume_path` None: no resume file (a run whose finished result is kept elsewhere, as cross-fitting's inner folds).
    """
    state = LoopState()
    best_weights = None
    if resume and resume_path is not None and resume_path.is_file():
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
        best_weights = _weights_copy(modules)
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
            best_weights = _weights_copy(modules)
        else:
            state.bad_epochs += 1
        state.epoch = epoch
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": metrics["loss"], "val_auc": metrics["auc"],
               "val_f1": metrics["f1"], "best": improved, "seconds": time.monotonic() - started}
        state.history.append(row)
        log.write(split=split_name, stage=name, **row)
        if state.bad_epochs >= stage.patience or state.epoch >= stage.epochs:
            state.done = True
        if resume_path is not None:
            atomic_torch_save({"weights": modules.state_dict(), "optimizer": optimizer.state_dict(),
                               "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
                               "python_rng": random.getstate(), "loop": state.__dict__, "best_weights": best_weights},
                              resume_path)
        if on_epoch_end is not None:
            on_epoch_end(name, epoch, row)
    if best_weights is not None:
        modules.load_state_dict(best_weights)
    return state
