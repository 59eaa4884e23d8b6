"""`moodstream agent`: stream a subject's speech to a scoring server.

Only argparse is imported at module level, so building the root parser stays
cheap for every other subcommand; the agent's modules load when it runs.
"""
from __future__ import annotations

import argparse
import os
import sys

from moodstream.help_format import HelpFormatter
from moodstream.user_files import audio_file_or_stdin, output_folder, text_file

SHORT_NOTICE = "screening aid, not a diagnosis"


def score_label(evidence_sufficient: bool, above_threshold: bool) -> str:
    from moodstream import COLLECTING_SPEECH

    if not evidence_sufficient:
        return COLLECTING_SPEECH
    return "above threshold" if above_threshold else "below threshold"

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
MIB = 1024 * 1024


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "agent",
        help="stream a subject's speech (file, stdin or microphone) to a moodstream server",
        description=(
            "Keep only the subject's speech (webrtcvad, prompt gating), cut it into chunks, "
            "store them in a durable outbox and stream them to a moodstream server until "
            "acknowledged. Scores are a screening aid, not a diagnosis."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("input", nargs="?", metavar="FILE", type=audio_file_or_stdin,
                        help="audio file (wav, flac, ogg, ...), or '-' for raw PCM s16le mono on stdin")
    parser.add_argument("--mic", action="store_true", help="capture from the default microphone (extra 'mic')")
    parser.add_argument("--server", required=True, action="append", metavar="HOST:PORT",
                        help="moodstream server address; repeat the option or separate addresses by commas to "
                             "name replicas (sharing one Redis) to fail over to: a failed or broken connection "
                             "moves on to the next one, round-robin, and the session resumes there")
    parser.add_argument("--participant", metavar="ID", help="participant id (required unless --flush)")
    parser.add_argument("--session", metavar="ID",
                        help="session id (default: a new one); give an interrupted session's id to resume it")
    parser.add_argument("--device", metavar="ID", help="device id (default: this machine's host name)")
    parser.add_argument("--flush", action="store_true",
                        help="capture nothing: deliver every session left unfinished in the outbox")

    audio = parser.add_argument_group("input")
    audio.add_argument("--channel", type=int, metavar="N",
                       help="channel of a multichannel file to use, 0 = first (default: downmix all)")
    audio.add_argument("--input-rate", type=int, default=16000, metavar="HZ",
                       help="sample rate of raw PCM on stdin")
    audio.add_argument("--speed", type=float, default=0.0, metavar="X",
                       help="pace file input at X times real time (0 = as fast as possible)")

    speech = parser.add_argument_group(
        "speech keeping",
        "By default the agent asks the server for the speech settings its model was trained with "
        "(GetModelInfo) and uses them; an option given here replaces that one setting, and a setting "
        "that differs from the model's is reported as a warning.")
    speech.add_argument("--vad-aggressiveness", type=int, choices=(0, 1, 2, 3),
                        help="webrtcvad aggressiveness (3 drops the most non-speech; default: the model's, else 2)")
    speech.add_argument("--frame-ms", type=int, choices=(10, 20, 30),
                        help="VAD frame length (default: the model's, else 30)")
    speech.add_argument("--hangover-ms", type=int, metavar="MS",
                        help="keep this much audio after speech stops (default: the model's, else 300)")
    speech.add_argument("--onset-ms", type=int, metavar="MS",
                        help="speech must last this long to start being kept (default: the model's, else 60)")
    speech.add_argument("--prompt-intervals", metavar="FILE", type=text_file,
                        help="interviewer prompts played by this device: 'START END' seconds per line; "
                             "their audio is dropped")
    speech.add_argument("--echo-tail-ms", type=int, metavar="MS",
                        help="also drop this much audio after each prompt (room echo; default: the model's, else 300)")
    speech.add_argument("--chunk-seconds", type=float, metavar="S",
                        help="speech per chunk, 4-9 s (default: the model's, else 7)")
    speech.add_argument("--min-last-chunk-seconds", type=float, metavar="S",
                        help="a shorter last chunk is reported as dropped instead of sent "
                             "(default: the model's, else 3)")

    delivery = parser.add_argument_group("delivery")
    delivery.add_argument("--outbox", metavar="DIR", type=output_folder,
                          help="outbox folder (default: MOODSTREAM_OUTBOX or ~/.local/share/moodstream/outbox)")
    delivery.add_argument("--outbox-max-mb", type=float, default=256.0, metavar="MB",
                          help="disk bound of the chunks waiting in the outbox")
    delivery.add_argument("--outbox-policy", choices=("refuse", "drop-oldest"), default="refuse",
                          help="when the outbox is full: stop capturing, or drop the oldest unsent chunks "
                               "(each drop is reported)")
    delivery.add_argument("--token", default=None, metavar="TOKEN",
                          help="bearer token (default: environment variable MOODSTREAM_TOKEN)")
    delivery.add_argument("--tls-ca", metavar="FILE", type=text_file, help="use TLS, trusting this CA certificate (PEM)")
    delivery.add_argument("--model-version", default="", metavar="V",
                          help="stream under this model version (and take its speech settings): a new session "
                               "starts on it; the server refuses (FAILED_PRECONDITION) when it does not hold it or "
                               "the session runs another (default: the session's version, or for a new session "
                               "the one the server gives new sessions)")
    delivery.add_argument("--max-retry-seconds", type=float, default=300.0, metavar="S",
                          help="give up when the server stays unreachable this long (chunks stay in the outbox)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per event on stdout")
    parser.set_defaults(handler=run)
    return parser


class StatusLine:
    """The live one-line status on stderr (redrawn in place on a terminal)."""

    def __init__(self, stream, session_id: str | None = None):
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.session_id = session_id
        self.made = self.sent = self.acked = self.pending = self.dropped = 0
        self.score = None
        self.retrying = None
        self._drawn = False
        self._interval_noted: set[str] = set()  # model versions whose interval (or lack of one) was explained

    def _line(self) -> str:
        from moodstream.wire import interval_text

        score = "p = n/a"
        if self.score is not None:
            label = score_label(self.score.get("evidence_sufficient", True), self.score["above_threshold"])
            score = f"p = {interval_text(self.score)} after {self.score['segments']} segment(s), {label}"
        state = f" · reconnecting ({self.retrying})" if self.retrying else ""
        dropped = f" · dropped {self.dropped}" if self.dropped else ""
        return (f"agent {self.session_id} · chunks made {self.made} · sent {self.sent} · acked {self.acked}"
                f" · pending {self.pending}{dropped} · {score}{state} · {SHORT_NOTICE}")

    def _draw(self) -> None:
        if self.tty:
            self.stream.write("\r" + self._line() + "\x1b[K")
            self._drawn = True
        else:
            self.stream.write(self._line() + "\n")
        self.stream.flush()

    def say(self, message: str) -> None:
        """A message of its own, above the status line."""
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[K")
        self.stream.write(message + "\n")
        self.stream.flush()
        if self.tty and self._drawn:
            self._draw()

    def finish(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def _note_interval(self, score: dict) -> None:
        """Once per model version: what the brackets after p mean, or that the model gives no interval."""
        from moodstream.wire import interval_note

        version = score.get("model_version", "")
        if version not in self._interval_noted:
            self._interval_noted.add(version)
            self.say(f"agent: model {version or '?'}: {interval_note(score)}")

    def update(self, event) -> None:
        data = event.data
        kind = event.kind
        if self.session_id != event.session_id:
            self.session_id = event.session_id
        if "pending" in data:
            self.pending = data["pending"]
        if kind == "session":
            if data.get("resume"):
                self.say(f"agent: session {event.session_id}: {data['resume']}")
            self._draw()
        elif kind == "chunk":
            self.made += 1
            self._draw()
        elif kind == "sent":
            self.sent += 1
            if self.tty:
                self._draw()
        elif kind == "ack":
            self.acked += 1
            self.retrying = None
            self._draw()
        elif kind == "score":
            self.score = data
            self._note_interval(data)
            self._draw()
        elif kind == "dropped":
            self.dropped += 1
            self.say(f"agent: DROPPED: {data.get('reason')} (session {data.get('dropped_session_id', event.session_id)}, "
                     f"{data.get('speech_seconds')} s of speech from {data.get('start_seconds')} s)")
        elif kind == "retry":
            self.retrying = (f"attempt {data['attempt']} to {data.get('server', '?')} in {data['delay_seconds']} s: "
                             f"{data['reason']}")
            self._draw()
        elif kind == "error":
            self.say(f"agent: error: {data['message']}")
        elif kind == "warning":
            self.say(f"agent: warning: {data['message']}")
        elif kind == "done":
            self._draw()


def run(args) -> int:
    import dataclasses
    import signal
    import threading

    from moodstream import SCREENING_NOTICE

    from .client import AgentError, RetryPolicy, ServerTarget, split_addresses
    from .outbox import ROW_OVERHEAD_BYTES
    from moodstream.speech import CaptureSettings

    from .pipeline import deliver_outbox, run_agent
    from .sources import SourceError, open_source
    from moodstream.speech.vad import load_prompt_intervals
    from moodstream.wire import interval_text

    err = sys.stderr

    def usage_error(message: str) -> int:
        err.write(f"moodstream agent: {message}\n")
        return EXIT_USAGE

    token = args.token if args.token is not None else os.environ.get("MOODSTREAM_TOKEN") or None
    try:
        addresses = split_addresses(*args.server)
    except ValueError as error:
        return usage_error(str(error))
    target = ServerTarget(",".join(addresses), token=token, tls_ca=args.tls_ca)
    if not args.max_retry_seconds >= 0:
        return usage_error(f"--max-retry-seconds must be >= 0, got {args.max_retry_seconds:g}")
    retry = RetryPolicy(max_total_seconds=args.max_retry_seconds)
    outbox_max_bytes = int(args.outbox_max_mb * MIB)
    if not outbox_max_bytes > ROW_OVERHEAD_BYTES:
        return usage_error(f"--outbox-max-mb must be more than {ROW_OVERHEAD_BYTES / MIB:.6f} MB "
                           f"(room for one chunk's bookkeeping), got {args.outbox_max_mb:g}")

    status = StatusLine(err)

    def on_event(event) -> None:
        if args.json:
            sys.stdout.write(event.to_json() + "\n")
            sys.stdout.flush()
        status.update(event)

    stop_capture = threading.Event()
    abort = threading.Event()
    interrupts = []

    def on_interrupt(signum, frame):
        interrupts.append(signum)
        if len(interrupts) == 1:
            stop_capture.set()
            status.say("agent: stopping capture; delivering what was captured "
                       "(Ctrl-C again to quit now; undelivered chunks stay in the outbox)")
        elif len(interrupts) == 2:
            abort.set()
        else:
            raise KeyboardInterrupt

    def interrupted() -> bool:
        # Only a second Ctrl-C aborts on request; `abort` is also set when delivery gives up.
        return len(interrupts) >= 2

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_interrupt)

    if args.flush:
        if args.input is not None or args.mic:
            return usage_error("--flush delivers what is in the outbox; give no FILE, '-' or --mic with it")
        err.write(f"moodstream agent: {SCREENING_NOTICE}\n")
        try:
            deliver_outbox(server=target, outbox=args.outbox, retry=retry, model_version=args.model_version,
                           on_event=on_event, abort=abort)
        except (AgentError, ValueError) as error:
            status.finish()
            err.write(f"moodstream agent: {error}\n")
            return EXIT_INTERRUPTED if interrupted() else EXIT_FAILED
        status.finish()
        return EXIT_OK

    if not args.participant:
        return usage_error("--participant is required (or --flush to deliver the outbox)")
    overrides = {name: value for name, value in (
        ("chunk_seconds", args.chunk_seconds), ("min_last_chunk_seconds", args.min_last_chunk_seconds),
        ("vad_aggressiveness", args.vad_aggressiveness), ("frame_ms", args.frame_ms),
        ("hangover_ms", args.hangover_ms), ("onset_ms", args.onset_ms),
        ("echo_tail_seconds", None if args.echo_tail_ms is None else args.echo_tail_ms / 1000.0),
    ) if value is not None}
    try:
        # Checked against the defaults before any audio is opened or the server asked.
        dataclasses.replace(CaptureSettings(), **overrides).validate()
        intervals = load_prompt_intervals(args.prompt_intervals) if args.prompt_intervals else []
        source = open_source(args.input, mic=args.mic, channel=args.channel, input_rate=args.input_rate,
                             speed=args.speed, stop=stop_capture)
    except (SourceError, ValueError) as error:
        # One line: e.g. "no microphone: this machine has no audio input device".
        return usage_error(str(error))

    err.write(f"moodstream agent: {SCREENING_NOTICE}\n")
    try:
        result = run_agent(
            source,
            server=target,
            participant_id=args.participant,
            session_id=args.session,
            device_id=args.device,
            outbox=args.outbox,
            outbox_max_bytes=outbox_max_bytes,
            outbox_policy=args.outbox_policy,
            setting_overrides=overrides,
            prompt_intervals=intervals,
            retry=retry,
            model_version=args.model_version,
            on_event=on_event,
            stop_capture=stop_capture,
            abort=abort,
        )
    except AgentError as error:
        status.finish()
        # The error event already went to stderr/stdout; the last line says how it ended.
        err.write(f"moodstream agent: failed: {error}\n")
        return EXIT_INTERRUPTED if interrupted() else EXIT_FAILED
    except ValueError as error:
        status.finish()
        return usage_error(str(error))
    status.finish()
    score = result.final_score
    if score is None:
        ending = "no score (no chunk was long enough to send)" if result.last_seq is None else "no score received"
    else:
        ending = (f"final probability {interval_text(score)} after {score.segments} segment(s) "
                  f"({score_label(score.evidence_sufficient, score.above_threshold)}), "
                  f"model {score.model_version or '?'}")
    err.write(f"moodstream agent: session {result.session_id} delivered: {ending}. {SCREENING_NOTICE}\n")
    return EXIT_OK
