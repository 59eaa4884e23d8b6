"""The agent end to end: source -> speech filter -> chunker -> outbox -> server.

:func:`run_agent` is what `moodstream agent` runs and what other programs call
to stream a recording and get the session's final score. :func:`capture_chunks`
makes the same chunks without a server (to compare against offline scoring).
"""
from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from moodstream.ids import ID_RULE, is_id, to_id
from moodstream.speech import CaptureSettings, PromptGate, SpeechChunk, SpeechFilter, make_gate

from . import events as ev
from .client import (AgentError, DeliveryStats, RetryPolicy, ServerTarget, fetch_model_info,
                     SessionDelivery)
from .events import EventHub, EventSink, Score
from .outbox import DropRecord, Outbox, OutboxFull, default_outbox_dir
from .sources import SAMPLE_RATE, SourceError


def new_session_id() -> str:
    return time.strftime("s-%Y%m%dT%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:12]


def default_device_id() -> str:
    return to_id(socket.gethostname() or "device") or "device"


def check_id(value: str, what: str, *, allow_empty: bool = False) -> str:
    if allow_empty and value == "":
        return value
    if not is_id(value):
        raise ValueError(f"{what} {value!r} is not allowed: use {ID_RULE}")
    return value


@dataclass
class AgentResult:
    session_id: str
    participant_id: str
    outbox_dir: Path
    chunks_made: int = 0
    last_seq: int | None = None
    delivery: DeliveryStats = field(default_factory=DeliveryStats)
    dropped: list[DropRecord] = field(default_factory=list)
    kept_seconds: float = 0.0
    dropped_seconds: dict[str, float] = field(default_factory=dict)
    completed: bool = False
    capture_error: str | None = None

    @property
    def final_score(self) -> Score | None:
        """The last score the server sent (None if it sent none)."""
        return self.delivery.latest_score

    def summary(self) -> dict:
        score = self.final_score
        return {
            "participant_id": self.participant_id,
            "chunks_made": self.chunks_made,
            "last_seq": self.last_seq,
            "chunks_sent": self.delivery.sent,
            "chunks_acked": self.delivery.acked,
            "duplicate_acks": self.delivery.duplicates,
            "reconnects": self.delivery.reconnects,
            "dropped": len(self.dropped),
            "kept_seconds": round(self.kept_seconds, 3),
            "dropped_seconds": {k: round(v, 3) for k, v in self.dropped_seconds.items()},
            "completed": self.completed,
            "capture_error": self.capture_error,
            "final_probability": score.probability if score else None,
            "final_segments": score.segments if score else None,
            "outbox": str(self.outbox_dir),
        }


class _Capture(threading.Thread):
    """Reads the source and stores chunks in the outbox, on its own thread."""

    def __init__(self, agent: "_AgentRun", source, skip_below_seq: int, first_seq: int, first_sample: int):
        super().__init__(daemon=True, name="moodstream-agent-capture")
        self.agent = agent
        self.source = source
        self.skip_below_seq = skip_below_seq
        self.first_seq = first_seq
        self.first_sample = first_sample
        self.error: BaseException | None = None

    def run(self) -> None:
        agent = self.agent
        result = agent.result
        speech_filter = agent.settings.speech_filter(agent.gate, self.first_sample)
        if agent.gate is not None and agent.gate.clock is None and not getattr(self.source, "replayable", False):
            # Live input: "now" for the kiosk's prompt_started()/finished() is what has been heard.
            agent.gate.clock = lambda: speech_filter.clock_samples / SAMPLE_RATE
        chunker = agent.settings.chunker(self.first_seq)
        last_progress = time.monotonic()
        try:
            try:
                for block in self.source:
                    for piece in speech_filter.process(block):
                        for chunk in chunker.add(piece):
                            self._store(chunk, speech_filter)
                    if agent.stop_capture.is_set() or agent.abort.is_set():
                        break
                    if time.monotonic() - last_progress > 5.0:
                        # Lets a restarted live capture continue the session clock.
                        agent.outbox.record_progress(result.session_id, speech_filter.clock_samples / SAMPLE_RATE)
                        last_progress = time.monotonic()
            except SourceError as error:
                self._fail(str(error))
            if not agent.abort.is_set():
                for piece in speech_filter.flush():
                    for chunk in chunker.add(piece):
                        self._store(chunk, speech_filter)
                last, tail = chunker.finish()
                for chunk in last:
                    self._store(chunk, speech_filter)
                if tail is not None and tail.seq >= self.skip_below_seq:
                    reason = (f"last partial chunk of {tail.speech_seconds:.2f} s is shorter than "
                              f"the {tail.min_last_chunk_seconds:g} s minimum")
                    drop = agent.outbox.record_drop(result.session_id, tail.seq, tail.start_seconds,
                                                    tail.speech_seconds, reason)
                    result.dropped.append(drop)
                    agent.hub.emit(ev.DROPPED, reason=reason, drop="last_partial", seq=None,
                                   start_seconds=round(tail.start_seconds, 3),
                                   speech_seconds=round(tail.speech_seconds, 3))
        except OutboxFull as error:
            self._fail(str(error))  # capture stops here: policy 'refuse' (or no room at all)
        except BaseException as error:  # anything else must not leave delivery waiting forever
            self.error = error
            self._fail(f"capture failed: {type(error).__name__}: {error}")
        finally:
            result.kept_seconds = speech_filter.kept_samples / SAMPLE_RATE
            result.dropped_seconds = {k: v / SAMPLE_RATE for k, v in speech_filter.dropped_samples.items()}
            if not agent.abort.is_set():
                try:
                    agent.outbox.mark_source_done(result.session_id, speech_filter.clock_samples / SAMPLE_RATE)
                except Exception as error:  # the outbox itself failing is reported, not hidden
                    self._fail(f"cannot record the end of capture in the outbox: {error}")
                    agent.abort.set()
            agent.capture_done.set()
            if agent.delivery is not None:
                agent.delivery.wake()

    def _fail(self, message: str) -> None:
        agent = self.agent
        if agent.result.capture_error is None:
            agent.result.capture_error = message
        agent.hub.emit(ev.ERROR, message=message, stage="capture")

    def _store(self, chunk: SpeechChunk, speech_filter: SpeechFilter) -> None:
        agent = self.agent
        if chunk.seq < self.skip_below_seq:
            return  # made and stored by an earlier run of this session
        stored = agent.outbox.put(agent.result.session_id, chunk,
                                  clock_seconds=speech_filter.clock_samples / SAMPLE_RATE)
        agent.result.chunks_made += 1
        for drop in stored.evicted:
            agent.result.dropped.append(drop)
            agent.hub.emit(ev.DROPPED, reason=drop.reason, drop="outbox_evicted", seq=drop.seq,
                           dropped_session_id=drop.session_id,
                           start_seconds=round(drop.start_seconds, 3),
                           speech_seconds=round(drop.speech_seconds, 3))
        agent.hub.emit(ev.CHUNK, seq=stored.seq, start_seconds=round(chunk.start_seconds, 3),
                       speech_seconds=round(chunk.speech_seconds, 3),
                       dropped_seconds=round(chunk.dropped_seconds, 3), vad_frames=chunk.vad_frames,
                       pending=agent.outbox.pending_count(agent.result.session_id))
        if agent.delivery is not None:
            agent.delivery.wake()


@dataclass
class _AgentRun:
    settings: CaptureSettings
    outbox: Outbox
    hub: EventHub
    result: AgentResult
    gate: PromptGate | None
    stop_capture: threading.Event
    abort: threading.Event
    capture_done: threading.Event = field(default_factory=threading.Event)
    delivery: SessionDelivery | None = None


def _open_outbox(outbox: Outbox | str | os.PathLike | None, max_bytes: int | None, policy: str) -> Outbox:
    if isinstance(outbox, Outbox):
        return outbox
    kwargs = {"policy": policy}
    if max_bytes is not None:
        kwargs["max_bytes"] = max_bytes
    return Outbox(outbox if outbox is not None else default_outbox_dir(), **kwargs)


def run_agent(
    source,
    *,
    server: str | ServerTarget,
    participant_id: str,
    session_id: str | None = None,
    device_id: str | None = None,
    outbox: Outbox | str | os.PathLike | None = None,
    outbox_max_bytes: int | None = None,
    outbox_policy: str = "refuse",
    settings: CaptureSettings | None = None,
    setting_overrides: dict | None = None,
    gate: PromptGate | None = None,
    prompt_intervals: Iterable[tuple[float, float]] = (),
    retry: RetryPolicy = RetryPolicy(),
    model_version: str = "",
    on_event: EventSink | None = None,
    stop_capture: threading.Event | None = None,
    abort: threading.Event | None = None,
) -> AgentResult:
    """Stream `source` (an iterable of 16 kHz mono int16 blocks, e.g. a FileSource) as one
    session and return once the server has acknowledged every chunk.

    Resuming: with the `session_id` of an interrupted run, chunks still in the outbox are
    resent; a file source is re-read and the chunks stored before are skipped (the same
    file and settings give the same chunks); a live source continues the session clock.

    Prompt gating: a kiosk passes its `gate` (PromptGate) to report prompts live; known
    `prompt_intervals` (seconds) are gated with the chosen settings' echo tail.

    Speech settings: `settings` if given, else those the server's model was trained
    with (asked over GetModelInfo; the defaults if the server cannot tell), with
    `setting_overrides` ({CaptureSettings field: value}) applied on top. Settings
    that differ from the model's give a warning event, never a refusal.

    Raises AgentError (with `.result`) when the server refuses the stream, stays
    unreachable past the retry budget, or capture failed (after delivering what was
    captured). Set `stop_capture` to end a live capture early (the session is still
    completed); set `abort` to stop at once, leaving unacknowledged chunks in the outbox.
    """
    participant_id = check_id(participant_id, "participant id")
    session_id = check_id(session_id or new_session_id(), "session id")
    device_id = check_id(device_id if device_id is not None else default_device_id(), "device id",
                         allow_empty=True)
    target = server if isinstance(server, ServerTarget) else ServerTarget(server)
    own_outbox = not isinstance(outbox, Outbox)
    box = _open_outbox(outbox, outbox_max_bytes, outbox_policy)
    try:
        earlier = box.session(session_id)
        if settings is None and earlier is not None and earlier.settings.get("capture"):
            # A resumed session keeps the settings it started with, whatever the server says now.
            settings = CaptureSettings.from_dict(earlier.settings["capture"])
        settings, speech_warnings = resolve_speech_settings(target, settings, setting_overrides, model_version)
        if gate is None:
            gate = make_gate(settings, prompt_intervals)
        source_description = source.describe() if hasattr(source, "describe") else {"kind": type(source).__name__}
        stored_settings = {"capture": settings.as_dict(), "source": source_description,
                           "prompt_intervals": gate.intervals}
        session = box.open_session(session_id, participant_id, device_id, stored_settings)
        result = AgentResult(session_id=session_id, participant_id=participant_id, outbox_dir=box.directory)
        hub = EventHub(session_id, on_event)
        run = _AgentRun(settings=settings, outbox=box, hub=hub, result=result, gate=gate,
                        stop_capture=stop_capture or threading.Event(), abort=abort or threading.Event())

        resume_note = _resume_plan(session, source, stored_settings)
        hub.emit(ev.SESSION, participant_id=participant_id, device_id=device_id, server=target.address,
                 outbox=str(box.directory), outbox_policy=box.policy, resumed=resume_note is not None,
                 resume=resume_note, pending=box.pending_count(session_id), speech=settings.as_dict())
        for message in speech_warnings:
            hub.emit(ev.WARNING, stage="speech", message=message)
        for other in box.unfinished_sessions():
            if other.session_id != session_id and box.pending_count(other.session_id):
                hub.emit(ev.WARNING, stage="outbox",
                         message=(f"the outbox also holds {box.pending_count(other.session_id)} undelivered "
                                  f"chunk(s) of session {other.session_id}; run the agent with --flush "
                                  f"to deliver them"))

        capture = None
        if session.source_done:
            run.capture_done.set()  # an earlier run captured everything; only delivery is left
        else:
            replay = getattr(source, "replayable", False)
            capture = _Capture(
                run, source,
                skip_below_seq=session.chunks_produced if replay else 0,
                first_seq=0 if replay else session.chunks_produced,
                first_sample=0 if replay else int(round(session.clock_seconds * SAMPLE_RATE)),
            )
        run.delivery = SessionDelivery(box, session_id, target, hub=hub, capture_done=run.capture_done,
                                       abort=run.abort, retry=retry, model_version=model_version)
        if capture is not None:
            if capture.skip_below_seq and hasattr(source, "unpaced_until_seconds"):
                # Re-reading what an earlier run already stored need not wait for real time.
                source.unpaced_until_seconds = session.clock_seconds
            capture.start()
        try:
            result.delivery = run.delivery.stats
            run.delivery.run()
        except AgentError as error:
            run.abort.set()  # the capture thread stops at its next block
            result.last_seq = box.session(session_id).last_seq
            hub.emit(ev.ERROR, message=str(error), stage="delivery")
            error.result = result
            raise
        except BaseException:
            run.abort.set()
            raise
        finally:
            if capture is not None and run.abort.is_set():
                capture.join(timeout=5.0)  # let it stop before the outbox closes under it
        if capture is not None:
            capture.join()
        final = box.session(session_id)
        result.last_seq = final.last_seq
        result.completed = final.completed
        hub.emit(ev.DONE, **result.summary())
        if result.capture_error is not None:
            delivered = ("what was captured before was delivered" if result.last_seq is not None
                         else "no speech chunk had been made")
            raise AgentError(f"{result.capture_error} ({delivered})", result)
        return result
    finally:
        if own_outbox:
            box.close()


def resolve_speech_settings(target: ServerTarget, settings: CaptureSettings | None,
                            overrides: dict | None = None, model_version: str = "") -> tuple[CaptureSettings, list[str]]:
    """The speech settings to capture with, and warnings about them (see run_agent); those of
    `model_version` when one is pinned, else of the version the server gives new sessions."""
    warnings: list[str] = []
    model_settings = None
    try:
        info = fetch_model_info(target, model_version=model_version)
        if info.speech is not None:
            model_settings = CaptureSettings.from_dict(info.speech)
        elif settings is None:
            warnings.append(f"model {info.model_version} records no speech settings; the agent's own are used")
    except (AgentError, ValueError) as error:
        if settings is None:  # settings given outright need nothing from the server
            warnings.append(f"{error}; the agent's own speech settings are used")
    chosen = settings if settings is not None else (model_settings or CaptureSettings())
    if overrides:
        chosen = dataclasses.replace(chosen, **overrides)
    chosen.validate()
    if model_settings is not None:
        differences = chosen.differences(model_settings)
        if differences:
            listed = ", ".join(f"{name} {mine} (model: {theirs})" for name, (mine, theirs) in differences.items())
            warnings.append(f"speech settings differ from those model {info.model_version} was trained with: "
                            f"{listed}; its scores were validated on chunks cut the model's way")
    return chosen, warnings


def _resume_plan(session, source, stored_settings: dict) -> str | None:
    """None for a fresh session; else what this run does with what an earlier run left."""
    if session.next_seq == 0 and session.chunks_produced == 0 and not session.source_done:
        return None
    if session.source_done:
        return "capture finished in an earlier run: delivering what is left in the outbox"
    if getattr(source, "replayable", False):
        earlier = session.settings
        if earlier.get("capture") != stored_settings["capture"] or earlier.get("source") != stored_settings["source"] \
                or [list(i) for i in earlier.get("prompt_intervals", [])] != [list(i) for i in stored_settings["prompt_intervals"]]:
            raise AgentError(
                f"session {session.session_id} was started with another input or other settings; "
                "resume it with the same ones, or start a new --session"
            )
        return (f"re-reading the input and skipping the {session.chunks_produced} chunk(s) "
                "stored by an earlier run")
    return (f"continuing a live capture after {session.chunks_produced} chunk(s), "
            f"session clock {session.clock_seconds:.1f} s")


def deliver_outbox(
    *,
    server: str | ServerTarget,
    outbox: Outbox | str | os.PathLike | None = None,
    retry: RetryPolicy = RetryPolicy(),
    model_version: str = "",
    on_event: EventSink | None = None,
    abort: threading.Event | None = None,
) -> list[AgentResult]:
    """Deliver every session left unfinished in the outbox (after a crash or reboot).

    The capture of those sessions is over (the process that captured them is gone),
    so each is ended after its last stored chunk."""
    target = server if isinstance(server, ServerTarget) else ServerTarget(server)
    own_outbox = not isinstance(outbox, Outbox)
    box = _open_outbox(outbox, None, "refuse")
    results = []
    try:
        for session in box.unfinished_sessions():
            hub = EventHub(session.session_id, on_event)
            if not session.source_done:
                box.mark_source_done(session.session_id, session.clock_seconds)
            result = AgentResult(session_id=session.session_id, participant_id=session.participant_id,
                                 outbox_dir=box.directory, dropped=box.drops(session.session_id))
            hub.emit(ev.SESSION, participant_id=session.participant_id, device_id=session.device_id,
                     server=target.address, outbox=str(box.directory), resumed=True,
                     resume="delivering a session left in the outbox", pending=box.pending_count(session.session_id))
            done = threading.Event()
            done.set()
            delivery = SessionDelivery(box, session.session_id, target, hub=hub, capture_done=done,
                                       abort=abort, retry=retry, model_version=model_version)
            result.delivery = delivery.stats
            try:
                delivery.run()
            except AgentError as error:
                hub.emit(ev.ERROR, message=str(error), stage="delivery")
                error.result = result
                raise
            final = box.session(session.session_id)
            result.last_seq, result.completed = final.last_seq, final.completed
            hub.emit(ev.DONE, **result.summary())
            results.append(result)
        return results
    finally:
        if own_outbox:
            box.close()
