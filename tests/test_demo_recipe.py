"""The demo checkpoint's synthetic corpus: overlapping delivery styles, speaker variety, noisy sessions."""
import shutil

import numpy as np
import pytest
import soundfile
from sklearn.metrics import roc_auc_score

from moodstream.trainer import demo_recipe


def draws(style: str, count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [demo_recipe.draw_delivery(style, {"speed": 0.0, "pitch": 0.0}, rng) for _ in range(count)]


def test_the_two_styles_differ_but_overlap_on_every_cue():
    slowed, lively = draws("slowed", 2000, 1), draws("lively", 2000, 2)
    labels = [1] * len(slowed) + [0] * len(lively)
    ranks = {"speed": -1, "pitch": -1, "word_gap": 1}  # slowed: slower, lower, longer gaps
    for cue, direction in ranks.items():
        values = [direction * d[cue] for d in slowed + lively]
        auc = roc_auc_score(labels, values)
        # one cue alone must tell the styles apart better than chance, and never without error
        assert 0.6 < auc < 0.95, (cue, auc)
    narrow = demo_recipe.PITCH_RANGES.index
    auc = roc_auc_score(labels, [-narrow(d["pitch_range"]) for d in slowed + lively])
    assert 0.6 < auc < 0.95, auc
    # noise and loudness are drawn the same way for both styles: they must not carry the label
    for cue in ("snr_db", "amplitude"):
        assert abs(roc_auc_score(labels, [d[cue] for d in slowed + lively]) - 0.5) < 0.05, cue


def test_the_corpus_speakers_are_distinct_and_never_the_demos_voice():
    speakers = demo_recipe.corpus_speakers(np.random.default_rng(0))
    assert len(speakers) == len(set(speakers)) == demo_recipe.SPEAKERS == sum(demo_recipe.SPLITS.values())
    assert demo_recipe.DEMO_VOICE not in speakers


def test_a_larger_corpus_of_the_same_seed_holds_the_smaller_one_in_the_same_splits():
    small, large = (demo_recipe.corpus_speakers(np.random.default_rng(4), count) for count in (48, 96))
    assert large[:48] == small and len(set(large)) == 96 and demo_recipe.DEMO_VOICE not in large
    assert demo_recipe.split_counts(96) == {"test": 9, "validation": 9, "train": 78}
    deal = [name for name, count in demo_recipe.split_counts(96).items() for _ in range(count)]
    assert deal[:18] == [name for name, count in demo_recipe.SPLITS.items() for _ in range(count)][:18]
    with pytest.raises(ValueError, match="--speakers must be at least 24"):
        demo_recipe.split_counts(23)
    with pytest.raises(ValueError, match="--speakers can be at most 191"):
        demo_recipe.corpus_speakers(np.random.default_rng(0), 192)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_a_session_is_cut_to_length_in_background_noise(tmp_path):
    rng = np.random.default_rng(3)
    delivery = draws("slowed", 1, 4)[0] | {"snr_db": 20.0}
    seconds = demo_recipe.synthesize_session(delivery, "en-us+m1", demo_recipe.SENTENCES, rng,
                                             tmp_path / "s.wav", seconds=12.0)
    audio, rate = soundfile.read(tmp_path / "s.wav", dtype="float32")
    assert rate == 16000 and audio.ndim == 1 and seconds == 12.0 and audio.size == 12 * 16000
    assert np.abs(audio).max() <= 0.9 + 1e-4  # scaled, never clipped
    windows = np.sqrt(np.mean(audio[: audio.size // 1600 * 1600].reshape(-1, 1600) ** 2, axis=1))
    # the pauses carry the session's room noise, well below its speech
    assert windows.min() > 1e-4 and np.percentile(windows, 90) > 5 * windows.min()


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_resume_refuses_a_corpus_of_another_size_and_keeps_it(tmp_path):
    manifest = tmp_path / "work" / "audio" / "manifest.csv"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("participant_id,speaker_id,label,audio_path,split\n"
                        "spk00-slowed,spk00,1,spk00-slowed.wav,test\nspk00-lively,spk00,0,spk00-lively.wav,test\n"
                        "spk01-slowed,spk01,1,spk01-slowed.wav,train\n")
    before = manifest.read_text()
    with pytest.raises(ValueError, match="holds 2 speakers, not 96: pass --speakers 2, or leave out --resume"):
        demo_recipe.build_demo_checkpoint(output=tmp_path / "out", work=tmp_path / "work", resume=True, speakers=96)
    assert manifest.read_text() == before and not (tmp_path / "out").exists()
