"""Checkpoint folders: config.json + encoder.safetensors + scorer.safetensors.

    checkpoint/
      config.json           every hyperparameter (ModelConfig), the backbone's
                            transformers config, format version, model_version
      encoder.safetensors   backbone.* and segment_head.* (segment vectors)
      scorer.safetensors    session_head.* (session score)

`model_version` is derived from the config and every weight, so a server
never mixes segment vectors or scorer states of two different models.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from moodstream.model.config import ModelConfig
from moodstream.model.errors import CheckpointError

if TYPE_CHECKING:
    from moodstream.model.screening_model import ScreeningModel

CHECKPOINT_FORMAT = "moodstream-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
ENCODER_FILE = "encoder.safetensors"
SCORER_FILE = "scorer.safetensors"
_ENCODER_PREFIXES = ("backbone.", "segment_head.")
_SCORER_PREFIXES = ("session_head.",)


def split_state_dict(model: "ScreeningModel") -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    encoder = {k: v for k, v in state.items() if k.startswith(_ENCODER_PREFIXES)}
    scorer = {k: v for k, v in state.items() if k.startswith(_SCORER_PREFIXES)}
    leftover = set(state) - set(encoder) - set(scorer)
    if leftover:
        raise RuntimeError(f"weights outside the checkpoint layout: {sorted(leftover)[:5]}")
    return encoder, scorer


def _config_document(model: "ScreeningModel") -> dict:
    # model.config holds the backbone's resolved transformers config, so the
    # backbone is rebuilt from it, never from the hub.
    config = model.config.to_dict()
    return {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION, "model": config}


def compute_model_version(model: "ScreeningModel") -> str:
    digest = hashlib.sha256()
    document = _config_document(model)
    digest.update(json.dumps(document, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return "m" + digest.hexdigest()[:15]


def save_checkpoint(model: "ScreeningModel", directory: str | Path) -> Path:
    """Write the checkpoint atomically: a crash mid-save never leaves a half-written folder in place."""
    from safetensors.torch import save_file

    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    encoder, scorer = split_state_dict(model)
    document = _config_document(model)
    document["model_version"] = compute_model_version(model)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_file(encoder, str(staging / ENCODER_FILE), metadata={"format": CHECKPOINT_FORMAT})
        save_file(scorer, str(staging / SCORER_FILE), metadata={"format": CHECKPOINT_FORMAT})
        (staging / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        if target.exists():
            backup = target.with_name(f".{target.name}.old")
            if backup.exists():
                _remove_tree(backup)
            os.replace(target, backup)
            os.replace(staging, target)
            _remove_tree(backup)
        else:
            os.replace(staging, target)
    except BaseException:
        _remove_tree(staging)
        raise
    return target


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def read_checkpoint_config(directory: str | Path) -> tuple[ModelConfig, dict]:
    folder = Path(directory)
    if not folder.is_dir():
        raise CheckpointError(f"no checkpoint folder at {folder}: pass a folder written by `moodstream train` "
                              "or ScreeningModel.save_pretrained().")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{folder} is not a moodstream checkpoint (no {CONFIG_FILE}): pass the folder that "
                              "`moodstream train` wrote.")
    try:
        document = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{config_path} is corrupt ({error}); restore the checkpoint from its source.") from error
    if not isinstance(document, dict) or document.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{config_path} is not a moodstream checkpoint config.")
    if document.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{folder} has checkpoint format {document.get('format_version')}; this moodstream "
                              f"reads format {CHECKPOINT_FORMAT_VERSION}: upgrade moodstream or re-export it.")
    try:
        config = ModelConfig.from_dict(document["model"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{config_path} has an invalid model config: {error}") from error
    if config.backbone_config is None:
        raise CheckpointError(f"{config_path} lacks the backbone's config; re-save the checkpoint.")
    return config, document


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> "ScreeningModel":
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from moodstream.model.screening_model import ScreeningModel

    folder = Path(directory)
    config, document = read_checkpoint_config(folder)
    weights: dict[str, torch.Tensor] = {}
    for filename in (ENCODER_FILE, SCORER_FILE):
        path = folder / filename
        if not path.is_file():
            raise CheckpointError(f"checkpoint {folder} is missing {filename}: copy the whole folder, not only "
                                  "its config.")
        try:
            weights.update(load_file(str(path), device=str(map_location)))
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"{path} is corrupt ({error}); restore the checkpoint from its source.") from error
    model = ScreeningModel(config)
    expected = set(model.state_dict())
    missing, unexpected = expected - set(weights), set(weights) - expected
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {folder} does not match its config (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}); it was edited or is corrupt.")
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {folder} has weights of the wrong shape: {error}") from error
    model.to(map_location).eval()
    stored_version = document.get("model_version")
    if stored_version is not None and stored_version != compute_model_version(model):
        raise CheckpointError(f"checkpoint {folder} does not match its recorded model_version {stored_version}: "
                              "its weights or config were changed after saving; re-save or restore it.")
    return model


# Config fields that only the session head and the decision read: two checkpoints that differ only in
# these (and in scorer.safetensors) turn the same audio into the same segment vectors.
SESSION_SIDE_FIELDS = frozenset({
    "lstm_hidden_size", "attention_size", "session_head", "session_time_pooling", "session_skip",
    "decision_threshold", "calibration_scale", "calibration_segment_scale", "calibration_replicates",
    "interval_level", "calibration_bias", "min_evidence_segments", "notes", "training_data", "positive_class", "demo_model",
    "speech"})


def encoder_fingerprint(model: "ScreeningModel") -> str:
    """An id of what makes segment vectors: the encoder's weights and the config fields that shape them.

    Equal fingerprints mean byte-identical encoder.safetensors (it is written from these weights) and
    the same vectors for the same audio, so servers load such encoders once and a session head trained
    on one's vectors can serve sessions encoded by the other.
    """
    encoder, _ = split_state_dict(model)
    config = {k: v for k, v in model.config.to_dict().items() if k not in SESSION_SIDE_FIELDS}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(encoder.items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return "e" + digest.hexdigest()[:15]
