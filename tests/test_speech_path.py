"""One speech path: the trainer, `evaluate` and the live agent cut the same audio into the same chunks,
and the score a subscriber sees is the score the batch path computes."""
import csv
import dataclasses
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile
import torch

from moodstream.agent import CaptureSettings, ServerTarget, run_agent
from moodstream.agent.sources import FileSource
from moodstream.model import ModelConfig, ScreeningModel
from moodstream.compose.replay import replay_sessions
from moodstream.trainer.evaluate import REPLAY_TOLERANCE, evaluate_checkpoint
from moodstream.v1 import moodstream_pb2 as pb
from server_harness import running_server, stub_for, write_tokens
import trainer_fixtures as fx


RATE = 16000
RAVDESS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ravdess16k"


def tiny_checkpoint(folder: Path, speech: CaptureSettings | None = CaptureSettings(), seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = ModelConfig.tiny(speech=None if speech is None else speech.as_dict(),
                              segment_seconds=(speech or CaptureSettings()).chunk_seconds)
    ScreeningModel(config).save_pretrained(folder)
    return folder


def noisy_session(seed: int, seconds: float = 40.0) -> np.ndarray:
    """Utterances of varying pitch and loudness between pauses of 0.1-2.5 s, over room noise and mains hum."""
    rng = np.random.default_rng(seed)
    audio = []
    while sum(len(a) for a in audio) < seconds * RATE:
        audio.append(fx.voice(rng.uniform(0.4, 3.0), rng.uniform(90, 240), rng.uniform(0.05, 0.3),
                              int(rng.integers(1 << 30))))
        audio.append(np.zeros(int(rng.uniform(0.1, 2.5) * RATE), np.float32))
    wave = np.concatenate(audio)[: int(seconds * RATE)]
    t = np.arange(len(wave)) / RATE
    wave = wave + 0.01 * rng.standard_normal(len(wave)) + 0.004 * np.sin(2 * np.pi * 50 * t)
    return np.clip(wave, -1, 1).astype(np.float32)


def write_manifest(path: Path, rows: list[tuple[str, int, str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["participant_id", "label", "audio_path"])
        writer.writerows(rows)
    return path


# -- GetModelInfo ---------------------------------------------------------------------------------------

def test_the_speech_settings_message_mirrors_the_agents_settings():
    proto_fields = [f.name for f in pb.SpeechSettings.DESCRIPTOR.fields]
    assert proto_fields == [f.name for f in dataclasses.fields(CaptureSettings)]


@pytest.mark.parametrize("values, message", [
    ({"hangover_ms": "x"}, "speech setting hangover_ms must be an integer, got 'x' (str)"),
    ({"chunk_seconds": True}, "speech setting chunk_seconds must be a number, got True (bool)"),
    ({"hangover": 300}, "unknown speech setting 'hangover'; known: chunk_seconds, min_last_chunk_seconds, "
                        "vad_aggressiveness, frame_ms, hangover_ms, onset_ms, warmup_ms, echo_tail_seconds"),
    ({"frame_ms": 25}, "VAD frame must be 10, 20 or 30 ms, got 25"),
    ({"chunk_seconds": 5.0, "min_last_chunk_seconds": 6.0}, "minimum last chunk must be > 0 and <= the chunk length"),
    ([7.0], "speech settings must be a table, got list"),
])
def test_bad_speech_settings_are_one_line_naming_the_setting(values, message):
    with pytest.raises(ValueError) as refused:
        CaptureSettings.from_dict(values)
    assert str(refused.value).startswith(message)


def test_speech_settings_from_a_table_take_whole_numbers_as_seconds():
    settings = CaptureSettings.from_dict({"chunk_seconds": 5, "hangover_ms": 200})
    assert settings == CaptureSettings(chunk_seconds=5.0, hangover_ms=200)
    assert isinstance(settings.chunk_seconds, float)


def test_get_model_info_returns_the_checkpoints_speech_settings(tmp_path, redis_url):
    speech = CaptureSettings(chunk_seconds=5.0, frame_ms=20, hangover_ms=200)
    model = ScreeningModel.from_pretrained(tiny_checkpoint(tmp_path / "ckpt", speech))
    tokens = write_tokens(tmp_path)
    with running_server(model, redis_url, tokens) as server, stub_for(server.port) as stub:
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=tokens.metadata("agent-p1"), timeout=10)
        assert info.model_version == model.model_version and info.sample_rate == RATE
        assert info.threshold == pytest.approx(model.config.decision_threshold)
        assert info.HasField("speech")
        assert {f.name: getattr(info.speech, f.name) for f in info.speech.DESCRIPTOR.fields} == \
            pytest.approx(speech.as_dict())
        assert "not a diagnosis" in info.notice
        assert info.min_evidence_segments == model.config.min_evidence_segments
        assert (info.training_data, info.positive_class, info.demo_model) == \
            (model.config.training_data, model.config.positive_class, model.config.demo_model)
        read_only = stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=tokens.metadata("reader-p1"), timeout=10)
        assert read_only == info
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_bundled_demo_checkpoint_records_the_agents_speech_settings():
    demo = Path(__file__).resolve().parents[1] / "moodstream" / "assets" / "demo-checkpoint"
    # trained on the shared speech path with the agent's defaults, so an agent streams to it without a warning
    assert ScreeningModel.from_pretrained(demo).config.speech == CaptureSettings().as_dict()


def test_a_checkpoint_without_speech_settings_keeps_its_version_and_says_none(tmp_path, redis_url):
    torch.manual_seed(0)
    folder = ScreeningModel(ModelConfig.tiny(speech=None, min_evidence_segments=2, demo_model=True,
                                             training_data="synthetic speech")).save_pretrained(tmp_path / "ckpt")
    model = ScreeningModel.from_pretrained(folder)  # its recorded model_version still matches
    assert model.config.speech is None
    tokens = write_tokens(tmp_path)
    with running_server(model, redis_url, tokens) as server, stub_for(server.port) as stub:
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=tokens.metadata("agent-p1"), timeout=10)
        assert not info.HasField("speech")
        # The evidence rule and the description this checkpoint does record come through.
        assert info.min_evidence_segments == model.config.min_evidence_segments
        assert info.demo_model and info.training_data == model.config.training_data != ""


def test_the_agent_uses_the_models_settings_and_warns_when_told_otherwise(tmp_path, redis_url):
    speech = CaptureSettings(chunk_seconds=5.0, min_last_chunk_seconds=4.0)
    model = ScreeningModel.from_pretrained(tiny_checkpoint(tmp_path / "ckpt", speech))
    recording = tmp_path / "session.wav"
    soundfile.write(recording, noisy_session(1, 30.0), RATE, subtype="PCM_16")
    tokens = write_tokens(tmp_path)
    with running_server(model, redis_url, tokens) as server:
        target = ServerTarget(f"127.0.0.1:{server.port}", token=tokens.by_name["agent-p1"])
        events = []
        result = run_agent(FileSource(recording), server=target, participant_id="p1", outbox=tmp_path / "box1",
                           on_event=events.append)
        opened = next(e for e in events if e.kind == "session")
        assert opened.data["speech"] == speech.as_dict()
        assert not [e for e in events if e.kind == "warning"]
        assert {s.speech_seconds for s in result.delivery.scores[:-1]} <= {5.0 * (i + 1) for i in range(10)}

        events = []
        result = run_agent(FileSource(recording), server=target, participant_id="p1", outbox=tmp_path / "box2",
                           setting_overrides={"frame_ms": 10}, on_event=events.append)
        warnings = [e.data["message"] for e in events if e.kind == "warning"]
        assert len(warnings) == 1 and "frame_ms 10 (model: 30)" in warnings[0]
        assert result.completed  # a warning, not a refusal


# -- the batch path against the live path ---------------------------------------------------------------

def test_evaluate_replay_matches_live_scores_on_a_generated_daic_woz_folder(tmp_path):
    fx.make_daic_woz(tmp_path / "daic")
    checkpoint = tiny_checkpoint(tmp_path / "ckpt")
    result = evaluate_checkpoint(checkpoint, tmp_path / "daic", tmp_path / "report", split="all",
                                 cache_dir=str(tmp_path / "cache"), device="cpu", tsne=False, progress=False,
                                 replay=replay_sessions)
    replay = result["replay"]
    assert len(replay["sessions"]) == 9 and replay["passed"]
    for row in replay["sessions"]:
        assert row["segments_live"] == row["segments_batch"] >= 2
        assert row["max_difference"] <= REPLAY_TOLERANCE
    assert "Replay: the same audio" in (tmp_path / "report" / "report.md").read_text()


def test_one_session_as_several_files_scores_as_the_same_audio_in_one_file(tmp_path):
    """Pauses and noise; the files are cut mid-pause and mid-word. Batch and live agree."""
    checkpoint = tiny_checkpoint(tmp_path / "ckpt")
    rows_split, rows_whole = [], []
    for number in range(3):
        audio = noisy_session(10 + number)
        whole = tmp_path / f"whole{number}.wav"
        soundfile.write(whole, audio, RATE, subtype="PCM_16")
        rows_whole.append((f"p{number}", number % 2, whole.name))
        cuts = [0, int(9.37 * RATE), int(21.1 * RATE), int(30.003 * RATE), len(audio)]
        for part, (a, b) in enumerate(zip(cuts, cuts[1:])):
            path = tmp_path / f"split{number}-{part}.wav"
            soundfile.write(path, audio[a:b], RATE, subtype="PCM_16")
            rows_split.append((f"p{number}", number % 2, path.name))
    results = {}
    for name, rows in (("split", rows_split), ("whole", rows_whole)):
        manifest = write_manifest(tmp_path / f"{name}.csv", rows)
        results[name] = evaluate_checkpoint(checkpoint, manifest, tmp_path / f"report-{name}",
                                            cache_dir=str(tmp_path / "cache"), device="cpu", tsne=False,
                                            progress=False, replay=replay_sessions)
        assert results[name]["split"] == "all"  # a manifest without splits is scored whole
        assert results[name]["replay"]["passed"]
    split, whole = (results[k]["all"]["predictions"] for k in ("split", "whole"))
    assert len(split["segment_probabilities"]) == len(whole["segment_probabilities"]) >= 9
    np.testing.assert_allclose(split["session_probabilities"], whole["session_probabilities"], atol=1e-3)
    for name in ("split", "whole"):
        for row in results[name]["replay"]["sessions"]:
            assert row["segments_live"] == row["segments_batch"]


@pytest.mark.shared_data
@pytest.mark.skipif(not (RAVDESS / "manifest.csv").is_file(), reason=f"no RAVDESS copy at {RAVDESS}")
def test_eight_clips_one_file_and_live_agree_on_a_ravdess_session(tmp_path):
    """One actor's 8 sad clips, in the stand-in's order, scored by the bundled demo checkpoint three ways."""
    from moodstream.trainer.standin import read_ravdess_standin
    from moodstream.trainer.segments import session_audio

    session = next(s for s in read_ravdess_standin(RAVDESS).sessions if s.session_id == "actor01-low")
    clips = write_manifest(tmp_path / "clips.csv", [("actor01", 1, span.path) for span in session.spans])
    joined = tmp_path / "session.wav"
    soundfile.write(joined, session_audio(session), RATE, subtype="PCM_16")
    one_file = write_manifest(tmp_path / "one.csv", [("actor01", 1, str(joined))])
    demo = Path(__file__).resolve().parents[1] / "moodstream" / "assets" / "demo-checkpoint"
    scored = {}
    for name, manifest in (("clips", clips), ("one file", one_file)):
        result = evaluate_checkpoint(demo, manifest, tmp_path / name, cache_dir=str(tmp_path / "cache"),
                                     device="cpu", tsne=False, progress=False, replay=replay_sessions)
        row = result["replay"]["sessions"][0]
        assert result["replay"]["passed"] and row["segments_live"] == row["segments_batch"]
        scored[name] = (row["segments_batch"], row["probability_batch"], row["probability_live"])
    assert scored["clips"][0] == scored["one file"][0]
    assert abs(scored["clips"][1] - scored["one file"][1]) <= 1e-3
    assert abs(scored["clips"][2] - scored["clips"][1]) <= 1e-4
