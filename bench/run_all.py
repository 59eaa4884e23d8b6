"""Run every benchmark; write one JSON file and one markdown table.

    python bench/run_all.py [--quick] [--out bench/results]

1. encoder   naive fp32 vs batching / bf16 / int8 (base-size wav2vec2), and the
             server's own path with its measured (precision, max batch)
2. scorer    incremental step vs recompute at 10/100/500/2000 segments; bytes
             and p95 time of each Redis apply at 10/500/2000 segments
3. loopback  simulated agents -> gRPC -> server -> Redis (appendfsync always,
             as deploy/ runs it), tiny and base-size
4. agent     CPU time and peak RSS of the edge agent for an hour of audio
Every figure is a ratio against a baseline measured in the same run. On a
machine with CUDA the encoder and loopback runs use the GPU (bench/gpu.sh is
the GPU check). How long a run took is in results.md; on two idle CPU cores
the full run takes about ten minutes and --quick about three.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tqdm import tqdm  # noqa: E402

import agent_footprint  # noqa: E402
import encoder  # noqa: E402
import loopback  # noqa: E402
import scorer  # noqa: E402
from common import machine, machine_line  # noqa: E402

GOALS = """Goals: encoder path >= 2x naive fp32 throughput within 1e-3 in probability, and >= 90 % of
the best variant of the same run; incremental step >= 20x recompute at 500 segments; bytes
written per chunk flat from 10 to 2000 segments; p95 chunk->score < 2x one encode with 20
live agents (tiny model); agent < 1 % of one core and < 80 MB RSS."""


def goals(results: dict) -> list[dict]:
    found = []
    rows = results.get("encoder", {}).get("rows", [])
    server = next((r for r in rows if r["variant"] == "server path"), None)
    if server:
        found.append({"goal": "encoder: server path >= 2x naive fp32, |dp| <= 1e-3",
                      "measured": f"{server['speedup_vs_naive']:.2f}x, |dp| {server['abs_diff_probability']:.1e}",
                      "met": server["speedup_vs_naive"] >= 2 and server["abs_diff_probability"] <= 1e-3})
        best = results["encoder"]["best_variant"]
        share = results["encoder"]["server_path_share_of_best"]
        found.append({"goal": "encoder: server path >= 90 % of the best variant within the bound",
                      "measured": f"{share:.0%} of {best['variant']} at batch {best['batch']}",
                      "met": share >= 0.9})
    at_500 = next((r for r in results.get("scorer", {}).get("rows", []) if r["segments"] == 500), None)
    if at_500:
        found.append({"goal": "scorer: step >= 20x recompute at 500 segments",
                      "measured": f"{at_500['speedup_step_vs_recompute']:.0f}x "
                                  f"(with the state serialised: {at_500['speedup_step_and_serialise_vs_recompute']:.0f}x)",
                      "met": at_500["speedup_step_vs_recompute"] >= 20})
    store = results.get("scorer", {}).get("store", {}).get("rows", [])
    if store:
        sizes = [r["head_rows_bytes_per_apply"] for r in store]
        found.append({"goal": f"scorer: bytes written per chunk flat from {store[0]['segments']} to "
                              f"{store[-1]['segments']} segments",
                      "measured": " / ".join(f"{size:,.0f}" for size in sizes) + " bytes",
                      "met": max(sizes) <= 1.02 * min(sizes)})
    tiny = results.get("loopback_tiny")
    if tiny:
        found.append({"goal": f"loopback: p95 < 2x one encode, {tiny['agents']} agents, tiny model",
                      "measured": f"p95 {tiny['real_time']['p95_ms']:.0f} ms = "
                                  f"{tiny['p95_over_single_encode']:.1f}x one encode "
                                  f"({tiny['single_chunk_encode_ms']:.0f} ms)",
                      "met": tiny["p95_over_single_encode"] < 2})
    agent = results.get("agent")
    if agent:
        found.append({"goal": "agent: < 1 % of one core, < 80 MB RSS",
                      "measured": f"{100 * agent['share_of_one_core_live']:.3f} %, {agent['agent_peak_rss_mb']:.0f} MB",
                      "met": agent["share_of_one_core_live"] < 0.01 and agent["agent_peak_rss_mb"] < 80})
    return found


def markdown(results: dict) -> str:
    info = results["machine"]
    parts = [f"# moodstream benchmarks, {results['date']}",
             "",
             f"Machine: {machine_line(info)}. Run: `python bench/run_all.py{' --quick' if results['quick'] else ''}` "
             f"({results['wall_minutes']:.1f} min).", ""]
    if results.get("goals"):
        parts += ["## Goals", "", "| goal | measured | met |", "|---|---|---|"]
        parts += [f"| {g['goal']} | {g['measured']} | {'yes' if g['met'] else '**no**'} |" for g in results["goals"]]
        parts.append("")
    sections = [("encoder", "Encoder (7 s chunks)", encoder.table), ("scorer", "Session scorer", scorer.table),
                ("scorer_store", "Scorer state in Redis, per applied chunk", scorer.store_table),
                ("loopback_tiny", "Loopback, tiny model", loopback.table),
                ("loopback_base", "Loopback, base-size model", loopback.table),
                ("agent", "Edge agent, one hour of audio", agent_footprint.table)]
    for key, title, render in sections:
        if key in results or (key == "scorer_store" and "store" in results.get("scorer", {})):
            extra = ""
            if key == "encoder":
                extra = f" — {results[key]['size']} size, naive = fp32 eager, one chunk per pass"
            if key.startswith("loopback"):
                r = results[key]
                extra = (f" — server precision {r['precision']}, Redis appendfsync {r['redis_appendfsync']}; "
                         f"one encode through the server's encoder path {r['single_chunk_encode_ms']:.1f} ms "
                         f"(naive fp32, main thread: "
                         f"{r['naive_main_thread_fp32_encode_ms']:.1f} ms); kept up to "
                         f"{r['ceiling_realtime_agents']:g} real-time agents; server peak RSS "
                         f"{r['server_peak_rss_mb']:.0f} MB")
            if key == "scorer_store":
                parts += [f"## {title}", "", render(results["scorer"]["store"]), ""]
                continue
            parts += [f"## {title}{extra}", "", render(results[key]), ""]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller runs: tiny encoder, fewer levels, 10 min of audio")
    parser.add_argument("--only", nargs="+", choices=("encoder", "scorer", "loopback", "agent"),
                        help="run only these benchmarks")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="folder for results.json and results.md")
    args = parser.parse_args()
    wanted = set(args.only or ("encoder", "scorer", "loopback", "agent"))
    started = time.perf_counter()
    results: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "quick": args.quick, "machine": machine()}
    steps = []
    if "scorer" in wanted:
        steps.append(("scorer", lambda log: {**scorer.run(), "store": scorer.store_run(
            (10, 500) if args.quick else scorer.DEFAULT_STORE_LENGTHS)}))
    if "encoder" in wanted:
        steps.append(("encoder", lambda log: encoder.run(
            "tiny" if args.quick else "base", (1, 4, 8) if args.quick else (1, 2, 4, 8, 16, 32), log=log)))
    if "loopback" in wanted:
        steps.append(("loopback_tiny", lambda log: loopback.run(
            "tiny", agents=20, chunks_per_agent=3, max_speed=8 if args.quick else 256, log=log)))
        if not args.quick:
            steps.append(("loopback_base", lambda log: loopback.run(
                "base", agents=4, chunks_per_agent=3, max_speed=16, log=log)))
    if "agent" in wanted:
        steps.append(("agent", lambda log: agent_footprint.run(10.0 if args.quick else 60.0, log=log)))
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> str:
        # After every benchmark, so an interrupted run keeps what it measured.
        results["wall_minutes"] = (time.perf_counter() - started) / 60
        results["goals"] = goals(results)
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        report = markdown(results)
        (args.out / "results.md").write_text(report + "\n")
        return report

    with tqdm(steps, desc="benchmarks", unit="bench") as progress:
        for key, step in progress:
            progress.set_postfix_str(key)
            results[key] = step(progress.write)
            save()
    report = save()
    print(report)
    print(f"\nwritten: {args.out / 'results.json'}, {args.out / 'results.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
