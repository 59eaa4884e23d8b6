"""`moodstream ablate`: train a grid of recipe variants and write one table.

By default the grid is the paper's ablations, one factor at a time from the
recipe: fine-tuning strategy (frozen / last-n / all), pooling (attention /
mean / max), session head (self-attention / last-step) and segment length
(4-9 s). `--full` trains every combination instead. Each variant is a normal
training run in its own folder (so an interrupted grid resumes), and every
variant uses the same splits or folds.
"""
from __future__ import annotations

import csv
import itertools
import math
import tomllib
from pathlib import Path

from moodstream.trainer.config import TrainConfig, apply_overrides, parse_value
from moodstream.user_files import read_text

DEFAULT_GRID = {
    "model.fine_tuning": ["frozen", "last-n", "all"],
    "model.pooling": ["attention", "mean", "max"],
    "model.session_head": ["self-attention", "last-step"],
    "speech.chunk_seconds": [4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
}


def parse_grid(items: list[str]) -> dict[str, list]:
    if not items:
        return dict(DEFAULT_GRID)
    grid = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--grid takes section.key=v1,v2,..., got {item!r}")
        key, values = item.split("=", 1)
        grid[key.strip()] = [parse_value(v.strip()) for v in values.split(",") if v.strip()]
        if not grid[key.strip()]:
            raise ValueError(f"--grid {key} has no values")
    return grid


def current_value(values: dict, key: str, defaults: TrainConfig):
    section, name = key.split(".", 1)
    if name in values.get(section, {}):
        return values[section][name]
    if section == "model":
        return getattr(defaults.model_config(), name, None)
    return getattr(getattr(defaults, section), name, None)


def variants(base: dict, grid: dict[str, list], full: bool, defaults: TrainConfig) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = [("recipe", {})]
    if full:
        keys = list(grid)
        for combination in itertools.product(*(grid[k] for k in keys)):
            changes = dict(zip(keys, combination))
            changes = {k: v for k, v in changes.items() if v != current_value(base, k, defaults)}
            if changes:
                out.append((", ".join(f"{k}={v}" for k, v in changes.items()), changes))
        return out
    for key, values in grid.items():
        for value in values:
            if value != current_value(base, key, defaults):
                out.append((f"{key}={value}", {key: value}))
    return out


def _pct(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def headline(result: dict) -> dict:
    """One row's numbers: test metrics of a single split, or fold means and pooled AUC of a cross-validation."""
    if "folds" in result:
        return {"session_f1": result["session_f1_mean"], "session_f1_std": result["session_f1_std"],
                "session_auc": result["pooled_session_auc"], "segment_auc": result["pooled_segment_auc"],
                "precision": result["session_precision_mean"], "recall": result["session_recall_mean"]}
    side = "test" if "test" in result else "validation"
    s = result[side]["session"]
    return {"session_f1": s["f1"], "session_f1_std": math.nan, "session_auc": s["auc"],
            "segment_auc": result[side]["segment"]["auc"], "precision": s["precision"], "recall": s["recall"]}


def run_ablation(config_path: str, grid_items: list[str], overrides: list[str], full: bool = False,
                 output: str | None = None) -> str:
    from moodstream.trainer.train import train

    path = Path(config_path).expanduser()
    if not path.is_file():
        raise ValueError(f"no config file at {path}")
    base = tomllib.loads(read_text(path))
    apply_overrides(base, overrides)
    defaults = TrainConfig.from_dict(base, base_dir=path.parent)
    grid = parse_grid(grid_items)
    for key in grid:
        if key.count(".") != 1 or key.split(".")[0] not in ("data", "model", "stage1", "stage2", "run"):
            raise ValueError(f"--grid key {key!r} must be section.key, e.g. model.pooling")
    root = Path(output).expanduser() if output else defaults.output_dir.with_name(defaults.output_dir.name + "-ablation")
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, changes in variants(base, grid, full, defaults):
        values = tomllib.loads(read_text(path))
        apply_overrides(values, overrides)
        folder = root / ("recipe" if not changes else "_".join(f"{k.split('.')[1]}-{v}" for k, v in changes.items()))
        apply_overrides(values, [f"{k}={_toml(v)}" for k, v in changes.items()] + [f"run.output={_toml(str(folder))}"])
        config = TrainConfig.from_dict(values, base_dir=path.parent)
        print(f"ablation: {name} -> {folder}")
        rows.append((name, headline(train(config))))
    cv = any(not math.isnan(r["session_f1_std"]) for _, r in rows)
    lines = ["| variant | session F1 | session P | session R | session AUC | segment AUC |",
             "|---|---|---|---|---|---|"]
    for name, r in rows:
        f1 = f"{_pct(r['session_f1'])} ± {_pct(r['session_f1_std'])}" if cv else _pct(r["session_f1"])
        lines.append(f"| {name} | {f1} | {_pct(r['precision'])} | {_pct(r['recall'])} | {_pct(r['session_auc'])} | "
                     f"{_pct(r['segment_auc'])} |")
    what = ("fold mean ± std for F1, P, R; AUCs pooled over folds" if cv else "test split; thresholds from validation")
    table = "\n".join(lines)
    (root / "ablation.md").write_text(f"# Ablation ({what})\n\nRecipe: {path}\n\n{table}\n")
    with open(root / "ablation.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["variant", "session_f1", "session_f1_std", "precision", "recall", "session_auc",
                         "segment_auc"])
        for name, r in rows:
            writer.writerow([name, r["session_f1"], r["session_f1_std"], r["precision"], r["recall"],
                             r["session_auc"], r["segment_auc"]])
    return table


def _toml(value) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)
