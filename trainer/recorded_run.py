"""A run folder's config.toml records the settings its results were trained with: a re-run into the folder with
other settings is refused, key by key, so that neither the old result is reported as the new one nor the record
is overwritten with settings that did not make it (`moodstream train --force-new` trains anew instead)."""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from moodstream.trainer.config import TrainConfig
from moodstream.user_files import read_text

RECORD = "config.toml"
# How a run is carried out, not what it computes (or, for run.output, the folder itself, however it was spelled).
NOT_SETTINGS = {"run.output", "run.resume", "run.progress", "run.threads", "run.device", "run.tsne",
                "data.cache_dir"}


def changed_settings(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """One line per key whose value differs: "stage1.lr_head: 0.001 recorded, 0.002 now"."""
    changes = []
    for section in sorted(set(recorded) | set(current)):
        old, new = recorded.get(section, {}), current.get(section, {})
        # [model] holds only the keys given, so a key on one side alone is a change. Every other section lists all
        # its fields: a key on one side alone was added to or removed from the code since, not chosen by the user.
        keys = set(old) | set(new) if section == "model" else set(old) & set(new)
        for key in sorted(keys):
            name = f"{section}.{key}"
            if name not in NOT_SETTINGS and old.get(key) != new.get(key):
                changes.append(f"{name}: {_shown(old, key)} recorded, {_shown(new, key)} now")
    return changes


def refuse_changed_settings(output: Path, config: TrainConfig) -> None:
    """ValueError listing the changed keys when `output` records a run with other settings than `config`'s."""
    record = output / RECORD
    if not record.is_file():
        return
    try:
        recorded = tomllib.loads(read_text(record))
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{record} is not valid TOML ({error}): pass --force-new to train anew in {output}, "
                         "or choose another run.output") from None
    changes = changed_settings(recorded, tomllib.loads(config.to_toml()))
    if changes:
        raise ValueError(f"{output} holds a run trained with other settings; pass --force-new to train anew there "
                         "(its results are replaced), or choose another run.output (--set run.output=DIR):\n"
                         + "\n".join(f"  {change}" for change in changes))


def _shown(table: dict[str, Any], key: str) -> str:
    return repr(table[key]) if key in table else "not set"
