"""Trainer data: the DAIC-WOZ reader on a generated copy in the distributed layout, manifests, segment cache."""
import os
from pathlib import Path

import numpy as np
import pytest

from moodstream.trainer.data import read_daic_woz, read_manifest
from moodstream.trainer.folds import LeakageError, Split, check_disjoint, cross_validation_splits, predefined_split
from moodstream.agent import CaptureSettings, FileSource, capture_chunks
from moodstream.trainer.segments import SegmentParams, build_segments
import trainer_fixtures as fx


@pytest.fixture(scope="module")
def daic(tmp_path_factory):
    root = tmp_path_factory.mktemp("daic")
    cases = fx.make_daic_woz(root)
    return root, cases


def test_daic_reader_keeps_good_participants_and_reports_every_broken_one(daic):
    root, _ = daic
    dataset = read_daic_woz(root)
    used = {s.session_id: s for s in dataset.sessions}
    assert set(used) == {"300", "301", "305", "409", "310", "311", "320", "321", "373"}
    assert used["301"].spans[0].member == "301_AUDIO.wav"          # read from inside NNN_P.zip
    assert {used[i].split for i in ("310", "311")} == {"validation"}
    assert {used[i].split for i in ("320", "321")} == {"test"}    # labels from full_test_split's PHQ_Binary
    assert used["320"].label == 1 and used["320"].score == 20
    skipped = dataset.skipped
    assert "transcript missing" in skipped["302"]
    assert "broken transcript" in skipped["303"]
    assert skipped["304"] == "audio unreadable: Format not recognised."  # soundfile's reason
    assert "does not exist in DAIC-WOZ" in skipped["342"]
    assert any("overlapping" in w for w in used["305"].warnings)
    assert any("clipped" in w for w in used["305"].warnings)
    assert any("PHQ8_Binary=1 disagrees" in w for w in used["409"].warnings)
    assert any("interrupted" in w for w in used["373"].warnings)
    assert any("misalignment" in w for w in used["321"].warnings)
    summary = dataset.summary_markdown()
    for pid in ("302", "303", "304", "342", "305", "409"):
        assert f"| {pid} |" in summary


def test_daic_reader_keeps_only_participant_speech(daic, tmp_path):
    root, _ = daic
    dataset = read_daic_woz(root).select(["300", "301"])
    store = build_segments(dataset, SegmentParams(), tmp_path / "cache", progress=False)
    assert len(store) > 0
    for index in range(len(store)):
        wave = store.waveform(index)
        # Ellie's turns are loud (0.6) 300 Hz tones; only the quiet participant turns may remain.
        assert np.abs(wave).max() < 0.2
    speech = sum(sp.end - sp.start for s in dataset.sessions for sp in s.spans)
    assert store.seconds() <= speech + 1e-6


def test_label_can_come_from_the_score(daic):
    root, _ = daic
    dataset = read_daic_woz(root, label_mode="score")
    assert {s.session_id: s.label for s in dataset.sessions}["409"] == 0  # PHQ8_Score 6 < 10


def test_exclude_and_time_offsets(daic):
    root, _ = daic
    dataset = read_daic_woz(root, exclude=["321"], time_offsets={"300": 0.5})
    assert "excluded" in dataset.skipped["321"]
    session = {s.session_id: s for s in dataset.sessions}["300"]
    assert session.spans[0].start == pytest.approx(3.5 + 0.5, abs=0.01)  # first turn at 3.5 s
    assert any("time offset" in w for w in session.warnings)


def test_a_folder_without_split_files_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no split files"):
        read_daic_woz(tmp_path)


def test_segment_cache_is_reused_and_keyed_by_its_inputs(tmp_path):
    manifest = fx.make_tone_manifest(tmp_path / "data", (2, 2, 0), seconds=12.0)
    dataset = read_manifest(manifest)
    params = SegmentParams()
    first = build_segments(dataset, params, tmp_path / "cache", progress=False)
    # 12 s of voicing less the VAD's 0.2 s warm-up: a 7 s chunk and a 4.8 s last chunk (kept from 3 s).
    assert [len(s.segments) for s in first.sessions] == [2] * 4
    again = build_segments(dataset, params, tmp_path / "cache", progress=False)
    assert again.folder == first.folder and len(list((tmp_path / "cache").iterdir())) == 1
    other = build_segments(dataset, SegmentParams(CaptureSettings(chunk_seconds=4.0)), tmp_path / "cache",
                           progress=False)
    assert other.folder != first.folder
    assert [len(s.segments) for s in other.sessions] == [3] * 4
    audio = Path(dataset.sessions[0].spans[0].path)
    os.utime(audio, ns=(audio.stat().st_atime_ns, audio.stat().st_mtime_ns + 10 ** 9))
    changed = build_segments(read_manifest(manifest), params, tmp_path / "cache", progress=False)
    assert changed.folder != first.folder


def test_trainer_segments_are_the_agents_chunks(tmp_path):
    """The trainer's segments of a one-file session are, sample for sample, what the agent sends."""
    manifest = fx.make_tone_manifest(tmp_path / "data", (2, 0, 0), seconds=20.0)
    dataset = read_manifest(manifest)
    for settings in (CaptureSettings(), CaptureSettings(chunk_seconds=5.0, frame_ms=20, hangover_ms=120)):
        store = build_segments(dataset, SegmentParams(settings), tmp_path / "cache", progress=False)
        for item in store.sessions:
            agent = capture_chunks(FileSource(item.session.spans[0].path), settings).chunks
            assert [store.pcm(i).tobytes() for i in item.segments] == [c.pcm for c in agent]
            assert len(agent) >= 2


def test_manifest_errors_are_per_participant(tmp_path):
    manifest = fx.make_tone_manifest(tmp_path, (2, 2, 0), seconds=3.0)
    text = manifest.read_text() + "bad1,maybe,s00.wav,train\nbad2,1,missing.wav,train\n"
    manifest.write_text(text)
    dataset = read_manifest(manifest)
    assert "not 0 or 1" in dataset.skipped["bad1"]
    assert "does not exist" in dataset.skipped["bad2"]
    assert len(dataset.sessions) == 4
    (tmp_path / "nocol.csv").write_text("id,label\n1,0\n")
    with pytest.raises(ValueError, match="lacks the column"):
        read_manifest(tmp_path / "nocol.csv")


def test_the_leakage_guard_refuses_a_participant_on_two_sides(tmp_path):
    manifest = fx.make_tone_manifest(tmp_path, (2, 2, 2), seconds=3.0)
    rows = manifest.read_text().splitlines()
    rows[0] += ",speaker_id"
    rows[1:] = [row + f",spk{i}" for i, row in enumerate(rows[1:])]
    rows[-1] = rows[-1].rsplit(",", 1)[0] + ",spk0"          # a test session by a training speaker
    manifest.write_text("\n".join(rows) + "\n")
    sessions = read_manifest(manifest).sessions
    with pytest.raises(LeakageError, match="leaks participant spk0 into both train and test"):
        predefined_split(sessions)
    by_id = {s.session_id: s for s in sessions}
    with pytest.raises(LeakageError):
        check_disjoint(Split("x", ["p00"], ["p02"], ["p00"]), by_id)


def test_cross_validation_folds_are_participant_disjoint(tmp_path):
    manifest = fx.make_tone_manifest(tmp_path, (12, 0, 0), seconds=2.0)
    rows = manifest.read_text().splitlines()
    rows[0] = rows[0].replace(",split", ",speaker_id")
    # two sessions per speaker
    rows[1:] = [row.rsplit(",", 1)[0] + f",spk{i // 2}" for i, row in enumerate(rows[1:])]
    manifest.write_text("\n".join(rows) + "\n")
    sessions = read_manifest(manifest).sessions
    splits = cross_validation_splits(sessions, folds=3, seed=0)
    speaker = {s.session_id: s.speaker_id for s in sessions}
    tested = []
    for split in splits:
        sides = [{speaker[s] for s in side} for side in (split.train, split.validation, split.test)]
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
        tested += split.test
    assert sorted(tested) == sorted(speaker)                   # every session is tested exactly once


def _daic_with(tmp_path, participant_audio=None, turns=None, extra_rows=None):
    root = tmp_path / "daic"
    fx.make_daic_woz(root)
    if participant_audio is not None:
        (root / "300_P" / "300_AUDIO.wav").write_bytes(participant_audio)
    if turns is not None:
        (root / "300_P" / "300_TRANSCRIPT.csv").write_text(fx.transcript_text(turns))
    if extra_rows:
        with open(root / "dev_split_Depression_AVEC2017.csv", "a") as handle:
            handle.write(extra_rows)
    return root


def test_a_truncated_wav_is_reported_as_unreadable_audio(tmp_path):
    audio = fx.write_wav_bytes(fx.interview(fx.standard_turns(), 40.0, 1))
    dataset = read_daic_woz(_daic_with(tmp_path, participant_audio=audio[: len(audio) // 3]))
    assert dataset.skipped["300"].startswith("audio unreadable: the WAV file is truncated")
    assert "outside the audio" not in dataset.skipped["300"]


def test_zero_length_interviewer_rows_raise_no_warning(tmp_path):
    turns = fx.standard_turns() + [(7.5, 7.5, "Ellie"), (20.0, 20.0, "Ellie")]
    dataset = read_daic_woz(_daic_with(tmp_path, turns=sorted(turns)))
    assert not {s.session_id: s for s in dataset.sessions}["300"].warnings


def test_a_participant_in_two_split_files_is_refused_naming_both(tmp_path):
    root = _daic_with(tmp_path, extra_rows="300,0,3,1,0\n")
    with pytest.raises(ValueError) as refused:
        read_daic_woz(root)
    message = str(refused.value)
    assert "participant 300" in message
    assert "train_split_Depression_AVEC2017.csv" in message and "dev_split_Depression_AVEC2017.csv" in message


def test_a_data_format_without_a_reader_is_refused_naming_the_readers(tmp_path):
    from moodstream.trainer.config import TrainConfig

    with pytest.raises(ValueError, match="data.format must be one of daic-woz, e-daic, manifest, ravdess-standin, "
                                         "got 'synthetic'"):
        TrainConfig.from_dict({"data": {"format": "synthetic", "path": str(tmp_path)}})
