"""`moodstream standin`: the RAVDESS stand-in evaluation, model variants beside the openSMILE baselines.

Acted emotion (sad vs calm sessions per actor), NOT depression. Every row
uses the same 36 sessions, the same 6 actor-disjoint folds, the same
segmentation and the same rule for calibration and thresholds (by default
cross-fitted on each fold's training actors). Results go to
<output>/standin.md and standin.json; with several seeds, each seed's rows
go to <output>/seed-N and <output>/standin.md gives the mean and range.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from moodstream.trainer.calibration_report import calibration_metrics
from moodstream.trainer.standin import STANDIN_NOTE


def _row_configs(data: str, output: Path, whisper: Path, seed: int = 0, cache: Path | None = None) -> dict[str, dict]:
    common_data = {"format": "ravdess-standin", "path": str(Path(data).resolve()),
                   "cache_dir": str(cache or output / "segment-cache")}

    def run(name: str, recipe: str) -> dict:
        # One torch thread: on two shared cores a second one spin-waits for a busy core (one stand-in training
        # took 32 s on one thread against 128 s on two at load average 4).
        return {"output": str(output / name), "seed": seed, "progress": False, "recipe": recipe, "threads": 1}

    def frozen_whisper(name: str, recipe: str, pretrained: bool) -> dict:
        return {"data": common_data, "run": run(name, recipe),
                "model": {"backbone": str(whisper), "pretrained": pretrained, "fine_tuning": "frozen",
                          "normalize_waveform": False}}

    return {
        "whisper-pretrained-frozen": {
            "label": "model: Whisper tiny.en encoder, pretrained, frozen + the paper's heads, small-data recipe",
            "config": frozen_whisper("whisper-pretrained-frozen", "small-data", pretrained=True)},
        "whisper-pretrained-frozen-paper": {
            "label": "model: the same, the paper's recipe",
            "config": frozen_whisper("whisper-pretrained-frozen-paper", "paper", pretrained=True)},
        "whisper-random-frozen": {
            "label": "model: same encoder randomly initialised, frozen + the paper's heads, the paper's recipe",
            "config": frozen_whisper("whisper-random-frozen", "paper", pretrained=False)},
        "tiny-wav2vec2-scratch": {
            "label": "model: tiny wav2vec2 (demo size) trained from scratch, all layers, the paper's recipe",
            "config": {"data": common_data, "run": run("tiny-wav2vec2-scratch", "paper"),
                       "model": {"preset": "tiny", "fine_tuning": "all"},
                       "stage1": {"lr_backbone": 1e-3}}},
    }


BASELINES = {
    "whisper-linear-probe": ("linear-probe", "baseline: linear probe on the same frozen pretrained Whisper tiny.en "
                             "(summed layers, mean + std, 768) + logistic regression"),
    "opensmile-is09": ("IS09_emotion", "baseline: openSMILE IS09_emotion (384) + logistic regression"),
    "opensmile-egemaps": ("eGeMAPSv02", "baseline: openSMILE eGeMAPSv02 (88) + logistic regression"),
}


def _pct(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def standin_table(rows: list[dict]) -> str:
    lines = ["| system | session F1 (mean ± std) | session AUC (mean ± std) | pooled session AUC (36) | "
             "segment AUC (mean ± std) | pooled segment AUC | wall time |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        s = row["summary"]
        lines.append(
            f"| {row['label']} | {_pct(s['session_f1_mean'])} ± {_pct(s['session_f1_std'])} | "
            f"{_pct(s['session_auc_mean'])} ± {_pct(s['session_auc_std'])} | {_pct(s['pooled_session_auc'])} | "
            f"{_pct(s['segment_auc_mean'])} ± {_pct(s['segment_auc_std'])} | {_pct(s['pooled_segment_auc'])} | "
            f"{row['seconds']:.0f} s |")
    return "\n".join(lines)


def calibration_table(rows: list[dict]) -> str:
    """Test folds pooled: calibration, decisions at the carried thresholds, and the 90 % interval's coverage."""
    lines = ["| system | whole-session ECE (if calibrated) | ECE after 1 / 2 / 3 segments (if calibrated) | "
             "largest ECE, any prefix | Brier | "
             "log loss | F1 at the threshold | sensitivity | specificity | coverage, whole sessions (allowing for "
             "bin size) | coverage, every prefix (allowing for bin size) | mean interval width |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        m = calibration_metrics(row["summary"])
        if not m:
            continue
        after = " / ".join(_pct(v) for v in list(m["ece_after"].values())[:3])
        after_floor = " / ".join(_pct(v) for v in list(m["calibrated_ece_after"].values())[:3])
        width = m.get("interval_width_every_prefix")
        lines.append(f"| {row['label']} | {_pct(m['whole_ece'])} ({_pct(m['whole_calibrated_ece'])}) | "
                     f"{after} ({after_floor}) | {_pct(m['max_prefix_ece'])} | "
                     f"{m['whole_brier']:.3f} | {m['whole_log_loss']:.3f} | {_pct(m['f1'])} | "
                     f"{_pct(m['sensitivity'])} | {_pct(m['specificity'])} | {_pct(m['coverage_whole'])} "
                     f"({_pct(m['sampled_coverage_whole'])}) | {_pct(m['coverage_every_prefix'])} "
                     f"({_pct(m['sampled_coverage_every_prefix'])}) | {'n/a' if width is None else f'{width:.3f}'} |")
    return "\n".join(lines)


SHORT_LABELS = {"whisper-pretrained-frozen": "model (small-data recipe)",
                "whisper-pretrained-frozen-paper": "model (paper's recipe)",
                "whisper-random-frozen": "model (random encoder)", "tiny-wav2vec2-scratch": "tiny wav2vec2",
                "whisper-linear-probe": "linear probe", "opensmile-is09": "openSMILE IS09",
                "opensmile-egemaps": "openSMILE eGeMAPS"}
SEED_METRICS = (("whole-session ECE %", "whole_ece", 100),
                ("whole-session ECE a perfectly calibrated score would show %", "whole_calibrated_ece", 100),
                ("largest ECE after any prefix %", "max_prefix_ece", 100),
                ("Brier", "whole_brier", 1), ("log loss", "whole_log_loss", 1), ("session AUC %", "whole_auc", 100),
                ("segment AUC %", "segment_auc", 100),
                ("session F1 at the threshold %", "f1", 100), ("sensitivity %", "sensitivity", 100),
                ("specificity %", "specificity", 100), ("coverage, whole sessions %", "coverage_whole", 100),
                ("coverage allowing for bin size, whole sessions %", "sampled_coverage_whole", 100),
                ("coverage, every prefix %", "coverage_every_prefix", 100),
                ("coverage allowing for bin size, every prefix %", "sampled_coverage_every_prefix", 100),
                ("mean interval width, every prefix", "interval_width_every_prefix", 1))


def seeds_table(by_seed: dict[int, dict], names: list[str], labels: dict[str, str]) -> str:
    """Mean [lowest, highest] over seeds of each headline number, one column per row of the stand-in."""
    import numpy as np

    def flat(metrics: dict) -> dict:
        return {**{key: metrics.get(key) for _, key, _ in SEED_METRICS},
                **{f"ECE after {name} %": value for name, value in metrics.get("ece_after", {}).items()},
                **{f"ECE after {name}, if calibrated %": value
                   for name, value in metrics.get("calibrated_ece_after", {}).items()}}

    values = {n: [flat(calibration_metrics(rows[n]["summary"])) for rows in by_seed.values()] for n in names}
    after = sorted({key for per in values.values() for m in per for key in m if key.startswith("ECE after ")},
                   key=lambda key: (int(key.split()[2]), "calibrated" in key))
    keys = list(SEED_METRICS[:3]) + [(k, k, 100) for k in after] + list(SEED_METRICS[3:])
    lines = [f"| test folds pooled, seeds {', '.join(map(str, by_seed))}: mean [lowest, highest] | "
             + " | ".join(labels[n] for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for title, key, scale in keys:
        cells = []
        for n in names:
            seen = [scale * m[key] for m in values[n] if m.get(key) is not None and not math.isnan(m[key])]
            digits = 1 if scale == 100 else 3
            cells.append(f"{np.mean(seen):.{digits}f} [{min(seen):.{digits}f}, {max(seen):.{digits}f}]"
                         if seen else "n/a")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_standin_evaluation(data: str, output: str, whisper: str | None = None, only: list[str] | None = None,
                           seeds: list[int] | None = None) -> str:
    """The stand-in rows for each seed (one seed: rows in OUTPUT; several: in OUTPUT/seed-N, with the mean and
    range over seeds in OUTPUT/standin.md). The segments and the frozen encoder's features are shared."""
    data_path = Path(data).expanduser()
    if not (data_path / "manifest.csv").is_file():
        raise ValueError(f"no RAVDESS folder with manifest.csv at {data_path}")
    output_path = Path(output).expanduser().resolve()
    output_path.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    whisper_path = Path(whisper).expanduser().resolve() if whisper else output_path / "whisper-tiny.en"
    seeds = list(seeds or [0])
    if len(seeds) == 1:
        return _one_seed(data_path, output_path, whisper_path, only, seeds[0], output_path / "segment-cache", started)
    tables, by_seed = [], {}
    for seed in seeds:
        tables.append(f"### Seed {seed}\n\n" + _one_seed(data_path, output_path / f"seed-{seed}", whisper_path, only,
                                                           seed, output_path / "segment-cache", time.monotonic()))
        by_seed[seed] = json.loads((output_path / f"seed-{seed}" / "standin.json").read_text())
    configs = _row_configs(str(data_path), output_path, whisper_path)
    names = [n for n in list(configs) + list(BASELINES) if all(n in rows for rows in by_seed.values())]
    labels = {n: SHORT_LABELS.get(n, n) for n in names}
    combined = seeds_table(by_seed, names, labels)
    total = time.monotonic() - started
    (output_path / "standin.md").write_text(
        f"# Stand-in evaluation (RAVDESS, acted emotion, not depression), seeds {', '.join(map(str, seeds))}\n\n"
        f"{STANDIN_NOTE}\n\n{combined}\n\n" + "\n\n".join(tables) +
        f"\n\nWall time of this invocation: {total:.0f} s.\n")
    return combined


def _one_seed(data_path: Path, output_path: Path, whisper_path: Path, only: list[str] | None, seed: int,
              cache: Path, started: float) -> str:
    from moodstream.trainer.baseline import run_baseline
    from moodstream.trainer.config import TrainConfig
    from moodstream.trainer.train import train

    output_path.mkdir(parents=True, exist_ok=True)
    configs = _row_configs(str(data_path), output_path, whisper_path, seed, cache)
    wanted = set(only or []) or set(configs) | set(BASELINES)
    unknown = wanted - set(configs) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown stand-in row(s) {sorted(unknown)}; rows: {', '.join(list(configs) + list(BASELINES))}")
    if any(k.startswith("whisper") for k in wanted) and not (whisper_path / "config.json").is_file():
        from moodstream.trainer.whisper_import import import_whisper

        import_whisper(whisper_path)
    results_path = output_path / "standin.json"
    rows = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for name, (feature_set, label) in BASELINES.items():
        if name not in wanted:
            continue
        row_started = time.monotonic()
        # The linear probe reads the pretrained encoder of the frozen-Whisper row.
        source = "whisper-pretrained-frozen" if feature_set == "linear-probe" else "tiny-wav2vec2-scratch"
        config = TrainConfig.from_dict(configs[source]["config"] | {"run": {"progress": False, "seed": seed,
                                       "threads": 1, "output": str(output_path / name)}})
        summary = run_baseline(config, feature_set, output_path / name)
        rows[name] = {"label": label, "summary": summary, "seconds": time.monotonic() - row_started}
        results_path.write_text(json.dumps(rows, indent=2, default=float))
    for name, spec in configs.items():
        if name not in wanted:
            continue
        row_started = time.monotonic()
        summary = train(TrainConfig.from_dict(spec["config"]))
        rows[name] = {"label": spec["label"], "summary": summary, "seconds": time.monotonic() - row_started}
        results_path.write_text(json.dumps(rows, indent=2, default=float))
    order = list(configs) + list(BASELINES)
    table = standin_table([rows[k] for k in order if k in rows])
    calibration = calibration_table([rows[k] for k in order if k in rows])
    comparison = ""
    if MODEL_ROW in rows and PROBE_ROW in rows:
        from moodstream.trainer.standin import read_ravdess_standin

        speakers = {s.session_id: s.speaker_id for s in read_ravdess_standin(data_path).sessions}
        differences = bootstrap_differences(output_path / MODEL_ROW, output_path / PROBE_ROW, speakers)
        rows[MODEL_ROW]["versus_probe"] = differences
        results_path.write_text(json.dumps(rows, indent=2, default=float))
        comparison = "\n\n" + differences_markdown(differences)
    total = time.monotonic() - started
    calibration_section = (f"\n\nCalibration, test folds pooled (every fold's calibration, interval and threshold "
                           f"fitted on its own training speakers' out-of-fold scores; ECE and coverage in %, "
                           f"coverage of the 90 % interval, 5 equal-count bins):\n\n{calibration}") \
        if calibration.count("\n") > 1 else ""
    (output_path / "standin.md").write_text(
        f"# Stand-in evaluation (RAVDESS, acted emotion, not depression), seed {seed}\n\n{STANDIN_NOTE}\n\n"
        "36 sessions (18 actors x {sad = low-mood, calm}), 6 actor-disjoint folds of 3 actors; calibration and "
        "thresholds never see a fold's test actors. Positive class = the sad (low-mood) session.\n\n"
        f"{table}{calibration_section}{comparison}\n\nWall time of this invocation: {total:.0f} s.\n")
    return table + calibration_section + comparison


MODEL_ROW, PROBE_ROW = "whisper-pretrained-frozen", "whisper-linear-probe"
BOOTSTRAP_SAMPLES = 2000


def _test_predictions(row_folder: Path) -> tuple[dict, dict]:
    """Pooled test predictions of every fold: {session: (label, p)}, {(session, k-th segment): (label, p)}."""
    sessions, segments = {}, {}
    for result in sorted(row_folder.glob("fold-*/result.json")):
        p = json.loads(result.read_text())["test"]["predictions"]
        for sid, label, prob in zip(p["session_ids"], p["session_labels"], p["session_probabilities"]):
            sessions[sid] = (label, prob)
        seen: dict[str, int] = {}
        for sid, label, prob in zip(p["segment_session_ids"], p["segment_labels"], p["segment_probabilities"]):
            seen[sid] = seen.get(sid, -1) + 1
            segments[(sid, seen[sid])] = (label, prob)
    return sessions, segments


def bootstrap_differences(model_folder: Path, probe_folder: Path, speakers: dict[str, str],
                          samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
    """Pooled AUC (model - probe) at session and segment level, 95 % interval by resampling actors."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    model, probe = _test_predictions(model_folder), _test_predictions(probe_folder)
    rng = np.random.default_rng(seed)
    actors = sorted({speakers[s] for s in model[0]})
    out = {"samples": samples, "actors": len(actors)}
    for level, a, b in (("session", model[0], probe[0]), ("segment", model[1], probe[1])):
        keys = sorted(set(a) & set(b))
        if len(keys) != len(a) or len(keys) != len(b):
            raise ValueError(f"the model and the probe scored different {level}s; run both on the same folds")
        owner = np.asarray([speakers[k if level == "session" else k[0]] for k in keys])
        labels = np.asarray([a[k][0] for k in keys])
        pa, pb = np.asarray([a[k][1] for k in keys]), np.asarray([b[k][1] for k in keys])
        rows_of = {actor: np.flatnonzero(owner == actor) for actor in actors}
        diffs = []
        for _ in range(samples):
            chosen = np.concatenate([rows_of[actor] for actor in rng.choice(actors, size=len(actors))])
            if len(set(labels[chosen].tolist())) == 2:
                diffs.append(roc_auc_score(labels[chosen], pa[chosen]) - roc_auc_score(labels[chosen], pb[chosen]))
        low, high = np.percentile(diffs, [2.5, 97.5])
        out[level] = {"model_auc": float(roc_auc_score(labels, pa)), "probe_auc": float(roc_auc_score(labels, pb)),
                      "difference": float(roc_auc_score(labels, pa) - roc_auc_score(labels, pb)),
                      "ci95": [float(low), float(high)], "n": len(keys)}
    return out


def differences_markdown(d: dict) -> str:
    lines = ["Model (small-data recipe) minus the linear probe, pooled AUC in points, with a 95 % bootstrap "
             f"interval ({d['samples']} resamples of the {d['actors']} actors, every session and segment of a "
             "drawn actor kept together):", "",
             "| level | model | linear probe | difference | 95 % interval |", "|---|---|---|---|---|"]
    for level in ("session", "segment"):
        r = d[level]
        lines.append(f"| {level} ({r['n']}) | {100 * r['model_auc']:.1f} | {100 * r['probe_auc']:.1f} | "
                     f"{100 * r['difference']:+.1f} | [{100 * r['ci95'][0]:+.1f}, {100 * r['ci95'][1]:+.1f}] |")
    return "\n".join(lines)
