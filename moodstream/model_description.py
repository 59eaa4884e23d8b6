"""What a model's probability means, in words for the people who read the score.

A checkpoint describes its training data and its positive class in its model
config (`training_data`, `positive_class`, `demo_model`); this module turns
that into the sentence shown beside every score. It reads the checkpoint's
config.json as plain JSON, so the dashboard needs no torch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

# Longest description a config may carry: one sentence, not a model card.
MAX_DESCRIPTION_CHARS = 300


@dataclass(frozen=True)
class ModelDescription:
    model_version: str
    threshold: float              # the checkpoint's decision threshold
    training_data: str = ""       # e.g. "synthetic espeak-ng speech of 30 speakers"
    positive_class: str = ""      # what a high probability stands for
    demo_model: bool = False      # a demonstration model: its scores mean nothing clinically

    @property
    def described(self) -> bool:
        return bool(self.training_data and self.positive_class)

    def meaning(self) -> str:
        """One plain sentence: what the probability estimates."""
        if not self.described:
            return (f"Model {self.model_version} does not say what it was trained on or what a high probability "
                    "stands for; read its scores with that in mind.")
        return (f"The probability is model {self.model_version}'s estimate that the speech so far shows "
                f"{self.positive_class}; it learned this from {self.training_data}.")

    def flag(self) -> str:
        """The warning shown for a demonstration model ("" for any other)."""
        if not self.demo_model:
            return ""
        return "Demo model" + (f", trained on {self.training_data}" if self.training_data else "") + \
            ": its scores mean nothing clinically."

    def to_dict(self) -> dict[str, Any]:
        return {"model_version": self.model_version, "threshold": self.threshold, "meaning": self.meaning(),
                "flag": self.flag(), "demo_model": self.demo_model, "described": self.described}

    @classmethod
    def from_model_config(cls, model_version: str, model: dict[str, Any]) -> "ModelDescription":
        """From a checkpoint's "model" section (the ModelConfig as a dict); absent fields keep their defaults."""
        names = {f.name for f in fields(cls)} - {"model_version", "threshold"}
        return cls(model_version=model_version, threshold=float(model["decision_threshold"]),
                   **{name: model[name] for name in names if name in model})

    @classmethod
    def from_checkpoint(cls, folder: str | Path) -> "ModelDescription":
        """Read a checkpoint folder's config.json (the folder `moodstream train` writes)."""
        path = Path(folder) / "config.json"
        try:
            document = json.loads(path.read_text())
            return cls.from_model_config(document["model_version"], document["model"])
        except FileNotFoundError:
            raise ValueError(f"{folder} is not a checkpoint folder (no config.json)") from None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path} is not a readable checkpoint config ({error})") from None


def check_description(name: str, value: str) -> None:
    """A description is one short line of plain text (it is shown as text beside every score)."""
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION_CHARS or any(c in value for c in "\r\n"):
        raise ValueError(f"{name} must be one line of at most {MAX_DESCRIPTION_CHARS} characters")
