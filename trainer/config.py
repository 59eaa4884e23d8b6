"""The training recipe: one TOML file, any value overridable with `--set section.key=value`.

    [data]     where the recordings are and which sessions are used
    [speech]   how speech is kept and cut into segments: the agent's settings
               (moodstream.speech.path.CaptureSettings), recorded in the checkpoint
    [model]    any ModelConfig field (model/config.py), plus `preset` and `pretrained`
    [stage1]   backbone + segment head on segment labels
    [stage2]   session head on sequences of frozen segment vectors
    [scoring]  calibration, interval, decision threshold and evidence rule, fitted after stage 2
    [run]      output folder, seed, device, resume, progress bars, recipe

`run.recipe` picks the defaults: `paper` is the paper's recipe exactly;
`small-data` changes the few settings listed in SMALL_DATA_RECIPE, each
justified by a measurement in docs/training.md; `auto` (the default) takes
`small-data` for corpora under SMALL_CORPUS_SESSIONS sessions, else `paper`.
A value set in the file or with --set always wins over the recipe's.
A relative data path (PATH_KEYS) or backbone folder in the file is relative to the file's folder; given with
--set, to the folder the command runs in, as on any command line; run.output is always the latter.
`TrainConfig.to_toml()` writes the fully resolved recipe next to every run.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import tomli_w

from moodstream.settings import SettingError, checked
from moodstream.user_files import read_text
from moodstream.speech import CaptureSettings
from moodstream.model.config import ModelConfig

DataFormat = Literal["daic-woz", "e-daic", "manifest", "ravdess-standin"]
Imbalance = Literal["weighted-loss", "balanced-sampling", "none"]
Monitor = Literal["loss", "auc", "f1"]
Recipe = Literal["auto", "paper", "small-data"]
Calibration = Literal["cross-fit", "platt", "none"]
SMALL_CORPUS_SESSIONS = 100

AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
NotNegative = Annotated[float, msgspec.Meta(ge=0)]
NotNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
Actors = Annotated[list[int], msgspec.Meta(description="a list of integers, e.g. [1, 2, 3]")]
# A participant id written as a number is the same participant: ids are kept as text (DataSection.__post_init__).
ParticipantIds = Annotated[list[str | int], msgspec.Meta(description='a list of ids, e.g. ["318", "321"]')]

# The small-data recipe's departures from the paper's (docs/training.md has the measurement behind each).
SMALL_DATA_RECIPE: dict[str, dict[str, Any]] = {
    "model": {"feature_normalization": "standardize", "pooling": "mean", "session_skip": "segment-mean"},
    "stage1": {"lr_head": 1e-3},
    "stage2": {"prefix_training": True},
}


@dataclass
class DataSection:
    format: DataFormat = "daic-woz"
    path: str = ""
    cache_dir: str = "~/.cache/moodstream/segments"
    test_path: str = ""              # a separate test set (folder or manifest): scored and reported only
    train_actors: Actors = field(default_factory=list)       # ravdess-standin: one model on these actors
    validation_actors: Actors = field(default_factory=list)  # ... validated on these
    test_actors: Actors = field(default_factory=list)        # ... and reported on these
    validation: str = "dev"          # DAIC-WOZ / E-DAIC: 'dev' (or 'none')
    folds: int = 0                   # > 0: participant-disjoint cross-validation with this many folds
    label_from: Literal["binary", "score"] = "binary"   # PHQ8_Binary, or PHQ8_Score >= score_threshold
    score_threshold: Annotated[float, msgspec.Meta(gt=0, le=24)] = 10.0  # a PHQ-8 score, 0-24
    exclude: ParticipantIds = field(default_factory=list)
    time_offsets: Annotated[dict[str, float], msgspec.Meta(description='a table of numbers, e.g. {"318" = -1.5}')] \
        = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.exclude = [str(participant) for participant in self.exclude]


@dataclass
class StageSection:
    epochs: AtLeastOne = 200
    batch_size: AtLeastOne = 32
    lr_backbone: NotNegative = 1e-5  # 0 = the backbone is frozen
    lr_head: Annotated[float, msgspec.Meta(gt=0)] = 6e-3
    weight_decay: NotNegative = 1e-3
    patience: AtLeastOne = 10
    monitor: Monitor = "loss"
    imbalance: Imbalance = "weighted-loss"
    gradient_accumulation: AtLeastOne = 1
    max_grad_norm: NotNegative = 0.0       # 0 = no clipping
    cache_frozen_features: bool = True   # stage 1 with a frozen backbone computes its features once
    feature_cache_max_gb: NotNegative = 4.0
    prefix_training: bool = False    # stage 2 only: each epoch adds one random prefix of every session
    # stage 2 only: targets 0/1 become e/2 and 1 - e/2, so the session head is not pushed to ever larger logits.
    label_smoothing: Annotated[float, msgspec.Meta(ge=0, lt=0.5)] = 0.0


@dataclass
class ScoringSection:
    # cross-fit: calibration, interval, threshold and evidence rule from out-of-fold predictions of the
    # training speakers (trainer/crossfit.py, docs/calibration.md); platt: Platt scaling on the validation
    # prefixes, threshold and evidence rule on validation; none: uncalibrated, validation threshold.
    calibration: Calibration = "cross-fit"
    # platt only: apply the fit only if, leaving one validation session out at a time, it lowers the held-out log loss.
    calibration_check: bool = True
    # cross-fit: speaker-disjoint inner folds of the training sessions (fewer speakers: one fold each).
    inner_folds: Annotated[int, msgspec.Meta(ge=2)] = 5
    # cross-fit: refits of the calibration on speaker resamples that make the interval; 0 = no interval.
    interval_replicates: NotNegativeInt = 200
    interval_level: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.9
    # Evidence rule: fewest segments within this of the full-session AUC.
    evidence_auc_tolerance: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.05


@dataclass
class RunSection:
    output: str = "runs/train"
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    resume: bool = True
    progress: bool = True
    threads: NotNegativeInt = 0      # torch CPU threads; 0 = torch's default
    tsne: bool = True
    recipe: Recipe = "auto"          # auto | paper | small-data


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
        unknown = sorted(set(values) - set(SECTIONS) - {"model"})
        if unknown:
            raise ValueError(f"unknown config section(s) {unknown}; use {', '.join(SECTIONS)}, model")
        config = cls(base_dir=str(base_dir))
        for name in SECTIONS:
            given = values.get(name, {})
            if not isinstance(given, dict):
                raise ValueError(f"config section [{name}] must be a table")
            setattr(config, name, dataclasses.replace(getattr(config, name), **checked_section(name, given)))
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
            values = tomllib.loads(read_text(path))
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path} is not valid TOML: {error}") from error
        apply_overrides(values, overrides or [])
        return cls.from_dict(values, base_dir=path.parent)

    def validate(self) -> None:
        for name in SECTIONS:  # again: a recipe's defaults and code may have changed values since from_dict
            checked_section(name, dataclasses.asdict(getattr(self, name)))
        try:
            self.speech.validate()
        except ValueError as error:
            raise ValueError(f"[speech]: {error}") from None
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
            if stage.batch_size % stage.gradient_accumulation:
                raise ValueError(f"{name}.batch_size must be a multiple of {name}.gradient_accumulation")
        if self.stage1.prefix_training:
            raise ValueError("stage1.prefix_training is not a setting: prefixes are sessions, so only stage 2 has them")
        if self.stage1.label_smoothing:
            raise ValueError("stage1.label_smoothing is not a setting: it smooths the session labels of stage 2")
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
        # TOML has no null: a key without a value is left out.
        return tomli_w.dumps({section: {key: value for key, value in table.items() if value is not None}
                              for section, table in self.to_dict().items()})


SECTIONS: dict[str, type] = {"data": DataSection, "speech": CaptureSettings, "stage1": StageSection,
                             "stage2": StageSection, "scoring": ScoringSection, "run": RunSection}


MOVED_KEYS = {
    "data.segment_seconds": "use speech.chunk_seconds (the agent's chunk length)",
    "data.min_last_segment_seconds": "use speech.min_last_chunk_seconds (the agent's last-chunk minimum)",
    "data.trim_silence": "speech is kept by the agent's VAD (see [speech]); remove the key",
}


def checked_section(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """The [name] table's given values as their field types; ValueError naming `name.key` otherwise."""
    try:
        return checked(values, SECTIONS[name])
    except SettingError as error:
        if not error.unknown:
            raise ValueError(f"{name}.{error}") from None
        moved = MOVED_KEYS.get(f"{name}.{error.key}")
        if moved:
            raise ValueError(f"{name}.{error.key} is no longer a setting: {moved}") from None
        known = ", ".join(sorted(f.name for f in dataclasses.fields(SECTIONS[name])))
        raise ValueError(f"unknown key {error.key!r} in [{name}]; known: {known}") from None


def parse_value(text: str) -> Any:
    """A TOML value (`3`, `1e-5`, `true`, `"x"`, `[1, 2]`); anything else is taken as a bare string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


# Keys that name a file or folder. A --set value names it from the folder the command runs in, as any command-line
# path does; the same key in the recipe file names it from the file's folder (TrainConfig.resolve).
PATH_KEYS = ("data.path", "data.test_path", "data.cache_dir")


def command_line_path(key: str, value: Any) -> Any:
    """A --set value as the path it names from the working directory (absolute), where `key` holds a path."""
    if not isinstance(value, str) or not value:
        return value
    path = Path(value).expanduser()
    if key in PATH_KEYS:
        return str(path.absolute())
    if key == "model.backbone" and path.exists():  # else a hub id such as facebook/wav2vec2-base
        return str(path.absolute())
    return value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> None:
    """`--set section.key=value` items into `values`; paths among them are made absolute from the working directory."""
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
        target[parts[-1]] = command_line_path(key.strip(), parse_value(text.strip()))
