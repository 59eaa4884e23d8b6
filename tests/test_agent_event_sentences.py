"""Every agent event reads as a sentence (the demo prints them; a new kind without one fails here)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from moodstream.agent import events as ev
from moodstream.agent.events import AgentEvent, sentence
from moodstream.compose.demo import SAID_EVENTS

AGENT = Path(__file__).resolve().parents[1] / "agent"

# One event of each kind with the fields its emit() call gives (agent/pipeline.py, agent/client.py).
SAMPLES = {
    ev.SESSION: {"participant_id": "p1", "device_id": "kiosk", "server": "127.0.0.1:50051", "outbox": "/tmp/o",
                 "outbox_policy": "refuse", "resumed": False, "resume": None, "pending": 0, "speech": {}},
    ev.CHUNK: {"seq": 3, "start_seconds": 21.0, "speech_seconds": 7.0, "dropped_seconds": 1.2, "vad_frames": 233,
               "pending": 2},
    ev.DROPPED: {"reason": "last partial chunk of 2.23 s is shorter than the 3 s minimum", "drop": "last_partial",
                 "seq": None, "start_seconds": 76.16, "speech_seconds": 2.23},
    ev.SENT: {"seq": 3},
    ev.ACK: {"seq": 3, "duplicate": False, "pending": 1},
    ev.SCORE: {"probability": 0.8123, "probability_low": None, "probability_high": None, "above_threshold": True,
               "evidence_sufficient": True, "segments": 4, "model_version": "m0123456789abcde"},
    ev.RETRY: {"reason": "UNAVAILABLE: connection refused", "attempt": 2, "delay_seconds": 0.5, "pending": 4,
               "failed_server": "127.0.0.1:50051", "server": "127.0.0.1:50052"},
    ev.ERROR: {"message": "outbox full (policy 'refuse')", "stage": "capture"},
    ev.WARNING: {"stage": "outbox", "message": "the outbox also holds 2 undelivered chunk(s) of session s0"},
    ev.DONE: {"participant_id": "p1", "chunks_made": 5, "chunks_acked": 5, "dropped": 1, "completed": True},
}


def emitted_kinds() -> set[str]:
    """The kinds the agent's code emits: every `emit(ev.NAME` in agent/."""
    names = {name for path in AGENT.glob("*.py") for name in re.findall(r"emit\(ev\.([A-Z_]+)", path.read_text())}
    return {getattr(ev, name) for name in names}


def test_every_kind_the_agent_emits_has_a_sample_here():
    assert emitted_kinds() == set(SAMPLES)
    assert set(SAID_EVENTS) <= set(SAMPLES)


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_each_event_is_one_sentence_without_python_syntax(kind):
    text = sentence(AgentEvent(kind, "s1", SAMPLES[kind]))
    assert text and "\n" not in text
    assert not re.search(r"[{}\[\]]|': |None|True|False", text), text


def test_the_sentences_say_what_happened():
    said = {kind: sentence(AgentEvent(kind, "s1", data)) for kind, data in SAMPLES.items()}
    assert said[ev.DROPPED] == ("the last 2.2 s of speech from 76.2 s will not be scored: last partial chunk of "
                                "2.23 s is shorter than the 3 s minimum")
    assert said[ev.RETRY] == ("cannot reach 127.0.0.1:50051 (UNAVAILABLE: connection refused); trying "
                              "127.0.0.1:50052 in 0.5 s (attempt 2), 4 chunk(s) waiting to be sent")
    assert said[ev.SCORE] == "score after 4 segment(s): p = 0.81, above threshold"
    evicted = dict(SAMPLES[ev.DROPPED], drop="outbox_evicted", seq=1, dropped_session_id="s0",
                   reason="the outbox is full")
    assert sentence(AgentEvent(ev.DROPPED, "s1", evicted)).startswith(
        "chunk 1 of session s0 was dropped unsent from the full outbox")
    with pytest.raises(ValueError, match="no sentence for agent event 'new-kind'"):
        sentence(AgentEvent("new-kind", "s1", {}))
