"""The record page's speech keeping (dashboard/static/record/speech.js) against the Python agent's, on the
same samples: the page's module runs under Node with the vendored WebAssembly build of WebRTC's VAD
(libfvad), the agent's with py-webrtcvad. Same chunks, same kept samples, bit for bit."""
import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from moodstream.speech import CaptureSettings, capture_chunks
from test_agent_signals import quiet, speech_like

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "dashboard" / "static"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="Node.js is not installed (apt-get install nodejs)")

TIMELINE = [("quiet", 1.5), ("speech", 9.0), ("quiet", 2.0), ("speech", 5.0), ("quiet", 4.0), ("speech", 6.5),
            ("quiet", 0.4), ("speech", 3.0), ("quiet", 3.0)]


def interview() -> np.ndarray:
    return np.concatenate([speech_like(seconds, pitch_hz=120 + 10 * index, seed=index) if kind == "speech"
                           else quiet(seconds, seed=index) for index, (kind, seconds) in enumerate(TIMELINE)])


def page_chunks(audio: np.ndarray, settings: CaptureSettings, tmp_path) -> dict:
    raw, settings_file = tmp_path / "audio.raw", tmp_path / "settings.json"
    raw.write_bytes(audio.astype("<i2").tobytes())
    settings_file.write_text(json.dumps(settings.as_dict()))
    out = subprocess.run([NODE, str(ROOT / "tests" / "record_speech.mjs"), str(raw), str(settings_file),
                          str(STATIC / "vendor")], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "RECORD_SPEECH_MODULE": str(STATIC / "record" / "speech.js")})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("settings", [CaptureSettings(),
                                      CaptureSettings(vad_aggressiveness=3, frame_ms=20, onset_ms=100,
                                                      hangover_ms=200, chunk_seconds=5.0,
                                                      min_last_chunk_seconds=4.5)],
                         ids=["agent-defaults", "other-settings"])
def test_the_page_keeps_and_chunks_the_same_speech_as_the_python_agent(settings, tmp_path):
    audio = interview()
    assert audio.dtype == np.int16
    agent = capture_chunks((audio[at:at + 1600] for at in range(0, len(audio), 1600)), settings)
    page = page_chunks(audio, settings, tmp_path)
    assert len(agent.chunks) >= 3
    assert page["keptSeconds"] == pytest.approx(agent.kept_seconds, abs=1e-9)
    assert [(c["seq"], round(c["start"], 9), round(c["speech"], 9), c["votes"]) for c in page["chunks"]] == [
        (c.seq, round(c.start_seconds, 9), round(c.speech_seconds, 9), c.vad_frames) for c in agent.chunks]
    assert [base64.b64decode(c["pcm"]) for c in page["chunks"]] == [c.pcm for c in agent.chunks]
    if agent.dropped_tail is None:
        assert page["droppedTail"] is None
    else:
        assert page["droppedTail"]["seq"] == agent.dropped_tail.seq
        assert page["droppedTail"]["speechSeconds"] == pytest.approx(agent.dropped_tail.speech_seconds)


PAGE_MESSAGES = ("SessionHeader", "SpeechStats", "Chunk", "End", "Ack", "PutChunkRequest", "PutChunkResponse",
                 "EnrolRequest", "EnrolResponse")


def test_the_pages_generated_client_matches_the_proto_for_what_it_sends_and_reads():
    """The vendored gRPC-web client embeds the .proto it was generated from; where the page's messages
    differ from today's .proto, refresh it: cd dashboard && npm ci --ignore-scripts && npm run vendor."""
    import re

    from google.protobuf import descriptor_pb2

    from moodstream.v1 import moodstream_pb2

    bundle = (STATIC / "vendor" / "moodstream-grpc-web.js").read_text()
    prefix = base64.b64encode(b"\n\x1emoodstream/v1/moodstream.proto").decode()[:36]
    [embedded] = re.findall(r'"(' + re.escape(prefix) + r'[A-Za-z0-9+/=]+)"', bundle)
    vendored = descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(embedded + "=" * (-len(embedded) % 4)))
    current = descriptor_pb2.FileDescriptorProto()
    moodstream_pb2.DESCRIPTOR.CopyToProto(current)

    def fields(descriptor):
        return {message.name: [(f.name, f.number, f.type, f.label, f.type_name, f.HasField("oneof_index"))
                               for f in message.field] for message in descriptor.message_type
                if message.name in PAGE_MESSAGES}

    assert fields(vendored) == fields(current)
    assert set(fields(current)) == set(PAGE_MESSAGES)
    assert [m.name for m in next(s for s in vendored.service if s.name == "Screening").method
            if m.name in ("PutChunk", "Enrol")] == ["PutChunk", "Enrol"]


@pytest.mark.parametrize("rate", [48000, 44100])
def test_the_pages_resampler_brings_a_microphones_rate_back_to_16_khz(rate, tmp_path):
    """Where a browser cannot run its audio at 16 kHz, the capture worklet converts: speech taken up to the
    device's rate (by scipy) and back down (by the page) is the original to within -40 dB, and keeps
    nearly the same speech."""
    from scipy.signal import resample_poly

    samples = interview()
    original = samples.astype(np.float32) / 32768
    (tmp_path / "in.f32").write_bytes(resample_poly(original, rate // 100, 160).astype(np.float32).tobytes())
    out = subprocess.run([NODE, str(ROOT / "tests" / "record_resample.mjs"), str(tmp_path / "in.f32"), str(rate)],
                         capture_output=True, timeout=120,
                         env={**os.environ, "RECORD_RESAMPLER_MODULE": str(STATIC / "record" / "resampler.js")})
    assert out.returncode == 0, out.stderr.decode()
    back = np.frombuffer(out.stdout, np.float32)
    assert len(original) - 32 <= len(back) <= len(original)  # only the filter's look-ahead is still inside
    inner = slice(1000, len(back) - 1000)
    error = back[inner] - original[inner]
    assert 10 * np.log10(np.sum(original[inner] ** 2) / np.sum(error ** 2)) > 40
    as_int16 = np.clip(np.round(back * 32768), -32768, 32767).astype(np.int16)
    resampled = capture_chunks([as_int16[at:at + 1600] for at in range(0, len(as_int16), 1600)])
    direct = capture_chunks([samples[at:at + 1600] for at in range(0, len(samples), 1600)])
    assert len(resampled.chunks) == len(direct.chunks)
    assert abs(resampled.kept_seconds - direct.kept_seconds) <= 0.1
