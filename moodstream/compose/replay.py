"""`moodstream evaluate --replay`: a data set's sessions streamed by the real agent into a real server.

It wires the agent, the server and a local Redis together, so it lives in the composition layer;
the trainer's evaluation takes it as its `replay` argument (docs/architecture.md).
"""
from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import soundfile
from tqdm import tqdm

from moodstream.agent import ServerTarget, run_agent
from moodstream.agent import events as agent_events
from moodstream.compose.redis_process import RedisProcess
from moodstream.ids import to_id
from moodstream.server.app import BackgroundServer, ServerConfig
from moodstream.server.auth import create_token
from moodstream.speech import FileSource
from moodstream.trainer.evaluate import REPLAY_TOLERANCE
from moodstream.trainer.segments import session_audio
from moodstream.wire import SAMPLE_RATE


def replay_sessions(model, checkpoint, items, batch_probabilities: dict[str, list[float]],
                    progress: bool = True) -> list[dict]:
    """Stream each session's audio through the real agent into a real fp32 server; compare with the batch path.

    The agent learns the speech settings from the server (GetModelInfo), as in the field."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="moodstream-replay-") as work_dir:
        work = Path(work_dir)
        tokens = work / "tokens.json"
        token = create_token(tokens, "evaluate-replay", ["*"], [])
        with RedisProcess(data_dir=work / "redis").start() as redis_server, \
                BackgroundServer(ServerConfig(checkpoint=checkpoint, redis_url=redis_server.url, port=0,
                                              tokens_file=tokens, precision="fp32"), model=model) as server:
            target = ServerTarget(f"127.0.0.1:{server.port}", token=token)
            for number, item in enumerate(tqdm(items, desc="replaying", unit="session", disable=not progress)):
                session = item.session
                recording = work / f"session-{number}.wav"
                soundfile.write(recording, session_audio(session), SAMPLE_RATE, subtype="PCM_16")
                live: dict[int, float] = {}

                def collect(event, live=live):
                    if event.kind == agent_events.SCORE:
                        live[int(event.data["segments"])] = float(event.data["probability"])

                run_agent(FileSource(recording), server=target, participant_id=to_id(session.session_id),
                          session_id=f"replay-{uuid.uuid4().hex[:12]}", device_id="evaluate-replay",
                          outbox=work / "outbox", model_version=server.model_version, on_event=collect)
                recording.unlink()
                batch = batch_probabilities[session.session_id]
                shared = [k for k in range(1, len(batch) + 1) if k in live]
                difference = max((abs(live[k] - batch[k - 1]) for k in shared), default=0.0)
                same_segments = len(live) == len(batch) and len(shared) == len(batch)
                rows.append({
                    "session_id": session.session_id, "segments_batch": len(batch), "segments_live": len(live),
                    "probability_batch": batch[-1], "probability_live": live.get(max(live, default=0)),
                    "max_difference": difference if same_segments else float("inf"),
                    "passed": same_segments and difference <= REPLAY_TOLERANCE,
                })
    return rows
