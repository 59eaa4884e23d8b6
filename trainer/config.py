"""The training recipe: one TOML file, any value overridable with `--set section.key=value`.

    [data]     where the recordings are and which sessions are used
    [speech]   how speech is kept and cut into segments: the agent's settings
               (moodstream.speech.path.CaptureSettings), recorded in the checkpoint
    [model]    any ModelConfig field (model/config.py), plus `preset` and `pretrained`
    [stage1]   backbone + segment head on segment labels
    [stage2]   session head on sequences of frozen segment vectors
    [scoring]  calibration and the evidence rule, fitted on validation after stage 2
    [run]      output folder, seed, device, resume, progress bars, recipe

`run.recipe` picks the defaults: `paper` is the paper's recipe exactly;
`small-data` changes the few settings listed in SMALL_DATA_RECIPE, each
justified by a measurement in docs/training.md; `auto` (the default) takes
`small-data` for corpora under SMALL_CORPUS_SESSIONS sessions, else `paper`.
A value set in the file or with --set always wins over the recipe's.
`TrainConfig.to_toml()` writes the fully resolved recipe next to every run.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moodstream.speech import CaptureSettings
from moodstream.model.config import ModelConfig

DATA_FORMATS = ("daic-woz", "e-daic", "manifest", "ravdess-standin")
IMBALANCE = ("weighted-loss", "balanced-sampling", "none")
MONITORS = ("loss", "auc", "f1")
RECIPES = ("auto", "paper", "small-data")
CALIBRATIONS = ("platt", "none")
SMALL_CORPUS_SESSIONS = 100

# The small-data recipe's departures from the paper's (docs/training.md has the measurement behind each).
SMALL_DATA_RECIPE: dict[str, dict[str, Any]] = {
    "model": {"feature_normalization": "standardize", "pooling": "mean", "session_skip": "segment-mean"},
    "stage1": {"lr_head": 1e-3},
    "stage2": {"prefix_training": True},
}


@dataclass
class DataSection:
    format: str = "daic-woz"
    path: str = ""
    cache_dir: str = "~/.cache/moodstream/segments"
    test_path: str = ""              # a separate test set (folder or manifest): scored and reported only
    train_actors: list[int] = field(default_factory=list)       # ravdess-standin: one model on these actors
    validation_actors: list[int] = field(default_factory=list)  # ... validated on these
    test_actors: list[int] = field(default_factory=list)        # ... and reported on these
    validation: str = "dev"          # DAIC-WOZ / E-DAIC: 'dev' (or 'none')
    folds: int = 0                   # > 0: participant-disjoint cross-validation with this many folds
    label_from: str = "binary"       # 'binary' (PHQ8_Binary) or 'score' (PHQ8_Score >= score_threshold)
    score_threshold: float = 10.0
    exclude: list[str] = field(default_factory=list)
    time_offsets: dict[str, float] = field(default_factory=dict)


@dataclass
class StageSection:
    epochs: int = 200
    batch_size: int = 32
    lr_backbone: float = 1e-5
    lr_head: float = 6e-3
    weight_decay: float = 1e-3
    patience: int = 10
    monitor: str = "loss"
    imbalance: str = "weighted-loss"
    gradient_accumulation: int = 1
    max_grad_norm: float = 0.0       # 0 = no clipping
    cache_frozen_features: bool = True   # stage 1 with a frozen backbone computes its features once
    feature_cache_max_gb: float = 4.0
    prefix_training: bool = False    # stage 2 only: each epoch adds one random prefix of every session


@dataclass
class ScoringSection:
    calibration: str = "platt"       # platt | none: fitted on every prefix of the validation sessions
    # Apply the fit only if, leaving one validation session out at a time, it lowers the held-out log loss.
    calibration_check: bool = True
    evidence_auc_tolerance: float = 0.05   # evidence rule: fewest segments within this of the full-session AUC


@dataclass
class RunSection:
    output: str = "runs/train"
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    resume: bool = True
    progress: bool = True
    threads: int = 0                 # torch CPU threads; 0 = torch's default
    tsne: bool = True
    recipe: str = "auto"             # auto | paper | small-data


@dataclass
class TrainConfig:
    data: DataSection = field(default_factory=DataSection)
    speech: CaptureSettings = field(default_factory=CaptureSettings)
    model: dict[str, Any] = field(default_factory=dict)
    stage1: StageSection = field(default_factory=StageSection)
    stage2: StageSection = field(default_factory=lambda: StageSection(lr_backbone=0.0))
    scoring: ScoringSection = field(default_factory=ScoringSection)
    run: RunSection = field(default_factory=RunSection)
    base_dir: str = "."              # folder relative paths in the file are resolved against
    # "section.key" of every value the file or --set gave: a recipe never overrides those.
    explicit: set[str] = field(default_factory=set)

    # ------------------------------------------------------------------ build
    @classmethod
    def from_dict(cls, values: dict[str, Any], base_dir: str | Path = ".") -> "TrainConfig":
        sections = {"data": DataSection, "speech": CaptureSettings, "stage1": StageSection, "stage2": StageSection,
                    "scoring": ScoringSection, "run": RunSection}
        unknown = sorted(set(values) - set(sections) - {"model"})
        if unknown:
            raise ValueError(f"unknown config section(s) {unknown}; use {', '.join(sections)}, model")
        config = cls(base_dir=str(base_dir))
        for name, section_type in sections.items():
            given = values.get(name, {})
            if not isinstance(given, dict):
                raise ValueError(f"config section [{name}] must be a table")
            hints = typing.get_type_hints(section_type)
            known = {f.name for f in dataclasses.fields(section_type)}
            for key in sorted(set(given) - known):
                moved = MOVED_KEYS.get(f"{name}.{key}")
                if moved:
                    raise ValueError(f"{name}.{key} is no longer a setting: {moved}")
                raise ValueError(f"unknown key {key!r} in [{name}]; known: {', '.join(sorted(known))}")
            checked = {key: checked_value(f"{name}.{key}", value, hints[key]) for key, value in given.items()}
            current = getattr(config, name)
            setattr(config, name, dataclasses.replace(current, **checked))
            config.explicit |= {f"{name}.{key}" for key in given}
        model = values.get("model", {})
        if not isinstance(model, dict):
            raise ValueError("config section [model] must be a table")
        config.model = dict(model)
        config.explicit |= {f"model.{key}" for key in model}
        config.validate()
        return config

    def with_recipe(self, sessions: int) -> "TrainConfig":
        """The config with run.recipe resolved (auto: by the corpus's session count) and its defaults applied."""
        recipe = self.run.recipe
        if recipe == "auto":
            recipe = "small-data" if sessions < SMALL_CORPUS_SESSIONS else "paper"
        resolved = dataclasses.replace(self, model=dict(self.model), explicit=set(self.explicit),
                                       run=dataclasses.replace(self.run, recipe=recipe))
        if recipe == "small-data":
            for section, values in SMALL_DATA_RECIPE.items():
                chosen = {k: v for k, v in values.items() if f"{section}.{k}" not in self.explicit}
                if section == "model":
                    resolved.model.update(chosen)
                else:
                    setattr(resolved, section, dataclasses.replace(getattr(resolved, section), **chosen))
        resolved.validate()
        return resolved

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> "TrainConfig":
        path = Path(path).expanduser()
        if not path.is_file():
            raise ValueError(f"no config file at {path}")
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path} is not valid TOML: {error}") from error
        apply_overrides(values, overrides or [])
        return cls.from_dict(values, base_dir=path.parent)

    def validate(self) -> None:
        try:
            self.speech.validate()
        except ValueError as error:
            raise ValueError(f"[speech]: {error}") from None
        if self.data.format not in DATA_FORMATS:
            raise ValueError(f"data.format must be one of {', '.join(DATA_FORMATS)}, got {self.data.format!r}")
        if self.data.label_from not in ("binary", "score"):
            raise ValueError("data.label_from must be 'binary' or 'score'")
        if self.data.folds < 0 or self.data.folds == 1 or self.data.folds == 2:
            raise ValueError("data.folds must be 0 (use the data's splits) or at least 3")
        actors = (self.data.train_actors, self.data.validation_actors, self.data.test_actors)
        if any(actors):
            if self.data.format != "ravdess-standin":
                raise ValueError("data.train_actors / validation_actors / test_actors apply to "
                                 "data.format = 'ravdess-standin' only")
            if not (self.data.train_actors and self.data.validation_actors):
                raise ValueError("choosing actors needs both data.train_actors and data.validation_actors")
            if self.data.folds:
                raise ValueError("choose actors or cross-validate (data.folds), not both")
            chosen = [a for group in actors for a in group]
            if len(chosen) != len(set(chosen)):
                raise ValueError("an actor is listed in two of data.train_actors, validation_actors, test_actors")
        if self.data.test_path and self.data.folds:
            raise ValueError("data.test_path is scored by the model trained on the train/validation split; "
                             "it cannot be combined with cross-validation (data.folds)")
        for name in ("stage1", "stage2"):
            stage: StageSection = getattr(self, name)
            if stage.imbalance not in IMBALANCE:
                raise ValueError(f"{name}.imbalance must be one of {', '.join(IMBALANCE)}")
            if stage.monitor not in MONITORS:
                raise ValueError(f"{name}.monitor must be one of {', '.join(MONITORS)}")
            if stage.epochs < 1 or stage.batch_size < 1 or stage.patience < 1:
                raise ValueError(f"{name}.epochs, batch_size and patience must be >= 1")
            if stage.gradient_accumulation < 1 or stage.batch_size % stage.gradient_accumulation:
                raise ValueError(f"{name}.batch_size must be a multiple of {name}.gradient_accumulation")
        if self.stage1.prefix_training:
            raise ValueError("stage1.prefix_training is not a setting: prefixes are sessions, so only stage 2 has them")
        if self.run.recipe not in RECIPES:
            raise ValueError(f"run.recipe must be one of {', '.join(RECIPES)}, got {self.run.recipe!r}")
        if self.scoring.calibration not in CALIBRATIONS:
            raise ValueError(f"scoring.calibration must be one of {', '.join(CALIBRATIONS)}")
        if not 0.0 <= self.scoring.evidence_auc_tolerance <= 1.0:
            raise ValueError("scoring.evidence_auc_tolerance must be in [0, 1]")
        self.model_config()  # validates the [model] table

    # ------------------------------------------------------------------ derived
    def resolve(self, path: str) -> Path:
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else (Path(self.base_dir) / candidate)

    @property
    def output_dir(self) -> Path:
        # Where the user runs the command, as with any CLI output path (data paths are the recipe's).
        return Path(self.run.output).expanduser().absolute()

    @property
    def pretrained(self) -> bool:
        return bool(self.model.get("pretrained", False))

    def model_config(self) -> ModelConfig:
        values = dict(self.model)
        preset = values.pop("preset", "base")
        values.pop("pretrained", None)
        values["segment_seconds"] = self.speech.chunk_seconds
        values["speech"] = self.speech.as_dict()
        values.setdefault("max_segment_seconds", max(10.0, self.speech.chunk_seconds))
        values.setdefault("min_segment_seconds", min(1.0, self.speech.min_last_chunk_seconds))
        backbone = values.get("backbone")
        if isinstance(backbone, str) and (backbone.startswith(".") or "/" in backbone) and \
                self.resolve(backbone).exists():
            values["backbone"] = str(self.resolve(backbone))
        try:
            if preset == "tiny":
                return ModelConfig.tiny(**values)
            if preset == "base":
                return ModelConfig(**values)
        except TypeError as error:
            raise ValueError(f"invalid [model] table: {error}") from error
        raise ValueError(f"model.preset must be 'base' or 'tiny', got {preset!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": dataclasses.asdict(self.data), "speech": self.speech.as_dict(), "model": dict(self.model),
            "stage1": dataclasses.asdict(self.stage1), "stage2": dataclasses.asdict(self.stage2),
            "scoring": dataclasses.asdict(self.scoring), "run": dataclasses.asdict(self.run),
        }

    def to_toml(self) -> str:
        return dump_toml(self.to_dict())


MOVED_KEYS = {
    "data.segment_seconds": "use speech.chunk_seconds (the agent's chunk length)",
    "data.min_last_segment_seconds": "use speech.min_last_chunk_seconds (the agent's last-chunk minimum)",
    "data.trim_silence": "speech is kept by the agent's VAD (see [speech]); remove the key",
}


def checked_value(key: str, value: Any, hint: Any) -> Any:
    """`value` as the type `hint` names; ValueError naming the key and the expected type otherwise."""
    def refuse(expected: str):
        raise ValueError(f"{key} must be {expected}, got {value!r} ({type(value).__name__})")

    origin = typing.get_origin(hint)
    if hint is bool:
        return value if isinstance(value, bool) else refuse("true or false")
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else refuse("an integer")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            refuse("a number")
        return float(value)
    if hint is str:
        return value if isinstance(value, str) else refuse("a string")
    if origin is list and typing.get_args(hint) == (int,):
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            refuse("a list of integers, e.g. [1, 2, 3]")
        return list(value)
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                                  for v in value):
            refuse('a list of ids, e.g. ["318", "321"]')
        return [str(v) for v in value]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for v in value.values()):
            refuse('a table of numbers, e.g. {"318" = -1.5}')
        return {str(k): float(v) for k, v in value.items()}
    return value


def parse_value(text: str) -> Any:
    """A TOML value (`3`, `1e-5`, `true`, `"x"`, `[1, 2]`); anything else is taken as a bare string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> None:
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set takes section.key=value, got {item!r}")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) < 2:
            raise ValueError(f"--set key {key!r} needs a section, e.g. stage1.lr_head=1e-3")
        target = values
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ValueError(f"--set {key}: {part} is not a table")
        target[parts[-1]] = parse_value(text.strip())


def dump_toml(values: dict[str, Any]) -> str:
    """Minimal TOML writer for the config's shapes (tables of scalars, lists and inline tables)."""
    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value) if isinstance(value, float) else str(value)
        if isinstance(value, str):
            return json.dumps(value)
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(scalar(v) for v in value) + "]"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{json.dumps(str(k))} = {scalar(v)}" for k, v in value.items()) + "}"
        if value is None:
            return '""'
        raise ValueError(f"cannot write {type(value).__name__} to TOML")

    lines = []
    for section, table in values.items():
        lines.append(f"[{section}]")
        for key, value in table.items():
            if value is None:
                continue
            lines.append(f"{key} = {scalar(value)}")
        lines.append("")
    return "\n".join(lines)
