"""Mic-to-score end to end: real agents (threads and processes), real server, real Redis."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile

from moodstream.agent.client import ServerTarget
from moodstream.agent.pipeline import run_agent
from moodstream.speech import CaptureSettings, capture_chunks, make_gate
from moodstream.agent.sources import FileSource
from moodstream.v1 import moodstream_pb2 as pb
from server_harness import RATE, make_chunks, offline_score, running_server, stub_for


def interview_file(path, seed, answers=4, answer_seconds=9.0):
    """Speech-like answers separated by silence, as a subject's recording would be."""
    pieces = [np.zeros(RATE, dtype=np.int16)]
    for pcm in make_chunks(answers, seed=seed, seconds=answer_seconds):
        pieces += [np.frombuffer(pcm, dtype="<i2"), np.zeros(int(2.5 * RATE), dtype=np.int16)]
    soundfile.write(path, np.concatenate(pieces), RATE, subtype="PCM_16")
    return path


def expected_score(model, path):
    chunks = capture_chunks(FileSource(path), CaptureSettings(), make_gate(CaptureSettings())).chunks
    assert len(chunks) >= 3
    return offline_score(model, [c.pcm for c in chunks]), len(chunks)


def test_three_agents_stream_concurrently_and_match_the_offline_score(model, redis_url, tokens, tmp_path):
    files = {f"p{i}": interview_file(tmp_path / f"p{i}.wav", seed=10 + i) for i in range(1, 4)}
    results, errors = {}, []
    with running_server(model, redis_url, tokens) as server:
        def run(participant, path):
            try:
                results[participant] = run_agent(
                    FileSource(path, speed=0), server=ServerTarget(f"127.0.0.1:{server.port}",
                                                                   tokens.by_name["agent"]),
                    participant_id=participant, session_id=f"e2e-{participant}", device_id="kiosk",
                    outbox=tmp_path / f"outbox-{participant}")
            except Exception as error:
                errors.append(error)

        threads = [threading.Thread(target=run, args=item) for item in files.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
    assert not errors, errors
    for participant, path in files.items():
        expected, count = expected_score(model, path)
        final = results[participant].final_score
        assert results[participant].completed
        assert final.segments == count
        assert abs(final.probability - expected) <= 1e-5


def agent_command(port, token, participant, session, path, outbox, speed):
    return [sys.executable, "-m", "moodstream.compose.cli", "agent", "--server", f"127.0.0.1:{port}", "--token", token,
            "--participant", participant, "--session", session, "--outbox", str(outbox), "--speed", str(speed),
            "--json", "--max-retry-seconds", "30", str(path)]


def test_an_agent_killed_mid_session_resends_from_its_outbox(model, redis_url, tokens, tmp_path):
    path = interview_file(tmp_path / "long.wav", seed=21, answers=5)
    expected, count = expected_score(model, path)
    outbox = tmp_path / "outbox"
    with running_server(model, redis_url, tokens) as server:
        command = agent_command(server.port, tokens.by_name["agent"], "p4", "killed", path, outbox, speed=6)
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        acks = 0
        deadline = time.time() + 60
        for line in process.stdout:
            if json.loads(line)["event"] == "ack":
                acks += 1
                if acks == 2:
                    break
            assert time.time() < deadline
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        assert 0 < acks < count
        restarted = subprocess.run(agent_command(server.port, tokens.by_name["agent"], "p4", "killed", path,
                                                 outbox, speed=0), capture_output=True, text=True, timeout=120)
        assert restarted.returncode == 0, restarted.stderr
        events = [json.loads(line) for line in restarted.stdout.splitlines()]
        with stub_for(server.port) as stub:
            final = stub.GetScore(pb.GetScoreRequest(session_id="killed"), metadata=tokens.metadata("admin"))
    assert events[0]["event"] == "session" and events[0]["resumed"]
    assert final.segments == count
    assert abs(final.probability - expected) <= 1e-5


def test_the_demo_prints_a_json_score_stream(tmp_path):
    env = dict(os.environ, HOME=str(tmp_path))
    plot = tmp_path / "scores.png"
    result = subprocess.run([sys.executable, "-m", "moodstream.compose.cli", "demo", "--json", "--speed", "0",
                             "--plot", str(plot)], capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr
    updates = [json.loads(line) for line in result.stdout.splitlines()]
    by_participant = {}
    for update in updates:
        by_participant.setdefault(update["participant_id"], []).append(update)
    # two bundled participants, each with its own session and its own score stream
    assert sorted(by_participant) == ["lively-delivery", "slowed-delivery"]
    assert len({u["session_id"] for u in updates}) == 2
    for stream in by_participant.values():
        assert len(stream) >= 4
        assert [u["segments"] for u in stream] == list(range(1, len(stream) + 1))
        # the evidence rule: no label before the checkpoint's minimum speech, the probability is still there
        for update in stream:
            assert update["above_threshold"] == (update["evidence_sufficient"]
                                                 and update["probability"] >= update["threshold"])
    assert all(0.0 <= u["probability"] <= 1.0 and "not a diagnosis" in u["notice"] for u in updates)
    # the bundled checkpoint carries a 90 % interval: every update has both ends, stderr explains it once
    assert all(u["interval_level"] == pytest.approx(0.9) and 0.0 <= u["probability_low"] <= u["probability_high"]
               <= 1.0 for u in updates)
    assert result.stderr.count("the 90% interval around each probability") == 1
    assert "summary:" in result.stderr and "score after each segment" in result.stderr
    assert plot.read_bytes().startswith(b"\x89PNG") and f"plot: {plot}" in result.stderr
    # The bundled demo checkpoint's contract: the two deliveries separate, and its calibrated probabilities
    # stay informative (not pinned at 0 or 1) through the fourth segment.
    slowed, lively = ([u["probability"] for u in by_participant[p]] for p in ("slowed-delivery", "lively-delivery"))
    assert all(s > l for s, l in zip(slowed[:4], lively[:4])), (slowed, lively)
    assert all(0.001 < p < 0.999 for p in slowed[:4] + lively[:4]), (slowed, lively)
