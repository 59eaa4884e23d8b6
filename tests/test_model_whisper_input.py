"""A Whisper backbone's input length (ModelConfig.whisper_input): 30 s as pretrained, or the chunk's own frames."""
import json

import numpy as np
import pytest
import torch
from test_trainer_whisper import TINY_WHISPER, tone

from moodstream.model import ModelConfig, ScreeningModel
from moodstream.model.whisper_backbone import whisper_log_mel
from moodstream.trainer.config import TrainConfig, apply_overrides

# Whisper's real window (1500 frames = 30 s) at toy width, so a 7 s chunk fits as in the product.
WHISPER_30S = {**TINY_WHISPER, "max_source_positions": 1500}


def whisper_config(whisper_input: str, **overrides) -> ModelConfig:
    values = dict(backbone="tiny-random-whisper", backbone_config=WHISPER_30S, normalize_waveform=False,
                  conv_channels=8, lstm_hidden_size=8, attention_size=8, whisper_input=whisper_input)
    values.update(overrides)
    return ModelConfig(**values)


@pytest.fixture(scope="module")
def models():
    """The same weights at both input lengths."""
    torch.manual_seed(0)
    thirty = ScreeningModel(whisper_config("30s"))
    chunk = ScreeningModel(whisper_config("chunk"))
    chunk.load_state_dict(thirty.state_dict())
    return {"30s": thirty, "chunk": chunk}


def chunks(count: int) -> list[np.ndarray]:
    # Different lengths, odd mel-frame counts among them: the batch pads and the stride-2 conv rounds up.
    seconds = [7.0, 2.345, 4.0, 1.01, 6.5, 3.333]
    return [tone(seconds[i % len(seconds)], 110 + 37 * i, seed=i) for i in range(count)]


def encoder_frames(model, waves) -> int:
    """The sequence length the encoder's transformer layers run at."""
    seen = []
    hook = model.backbone.encoder.layers[0].register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].shape))
    try:
        model.encode_segments(waves)
    finally:
        hook.remove()
    return seen[0][1]


def test_a_7_s_chunk_runs_its_own_frames_instead_of_30_s(models):
    wave = [tone(7.0, 150)]
    assert encoder_frames(models["30s"], wave) == 1500
    assert encoder_frames(models["chunk"], wave) == 350          # 7 s of 20 ms frames
    assert encoder_frames(models["chunk"], [tone(2.345, 150)]) == 118  # ceil(ceil(37520 / 160) / 2)


def test_chunk_segment_vectors_do_not_depend_on_their_batch(models):
    model = models["chunk"]
    waves = chunks(6)
    batched = model.encode_segments(waves)
    for index, wave in enumerate(waves):
        torch.testing.assert_close(batched[index], model.encode_segments([wave])[0], atol=1e-5, rtol=1e-5)
    # the frames of a segment too, not only its pooled vector
    batch, lengths = model.prepare_waveforms(waves)
    with torch.no_grad():
        features, mask = model.backbone(batch, lengths)
        alone, alone_mask = model.backbone(*model.prepare_waveforms([waves[1]]))
    assert mask[1].sum() == alone_mask.shape[1] == 118
    torch.testing.assert_close(features[1, :118], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("whisper_input", ["30s", "chunk"])
def test_live_scoring_of_one_chunk_at_a_time_equals_batch_scoring(models, whisper_input):
    model = models[whisper_input]
    waves = chunks(8)
    batch_vectors = model.encode_segments(waves)
    scorer = model.incremental_scorer()
    state = scorer.init_state()
    for n, wave in enumerate(waves, start=1):
        state, probability = scorer.step(state, model.encode_segments([wave])[0])  # as the server encodes a chunk
        assert abs(probability - model.score(batch_vectors[:n])) <= 1e-6


def test_30s_is_transformers_own_encoder_on_the_30_s_log_mel(models):
    backbone = models["30s"].backbone
    wave = torch.from_numpy(tone(7.0, 170, seed=3))[None]
    with torch.no_grad():
        features, mask = backbone(wave, torch.tensor([wave.shape[1]]))
        mel = whisper_log_mel(wave, backbone.whisper_mel_filters, backbone.encoder.config)
        reference = backbone.encoder(mel, output_hidden_states=True)  # insists on the 30 s input
    assert mel.shape == (1, 80, 3000) and features.shape[1] == 350 and bool(mask.all())
    expected = sum(reference.hidden_states[1:-1]) + reference.last_hidden_state
    torch.testing.assert_close(features, expected[:, :350], atol=1e-5, rtol=1e-5)


def test_chunk_mel_frames_are_the_30_s_frames_of_the_same_audio(models):
    # Only the length changes: the frames of the real audio are the same spectrogram, up to Whisper's
    # 80 dB floor, which each takes from its own frames.
    from moodstream.model.whisper_backbone import whisper_chunk_log_mel

    backbone = models["chunk"].backbone
    wave = torch.from_numpy(tone(3.0, 200, seed=4))[None]
    config = backbone.encoder.config
    long = whisper_log_mel(wave, backbone.whisper_mel_filters, config)
    short = whisper_chunk_log_mel(wave, backbone.whisper_mel_filters, config, 300)
    torch.testing.assert_close(short, long[..., :300], atol=1e-5, rtol=1e-5)


def test_the_setting_survives_a_checkpoint_and_30s_keeps_old_checkpoints_unchanged(models, tmp_path):
    for whisper_input, model in models.items():
        folder = model.save_pretrained(tmp_path / whisper_input)
        written = json.loads((folder / "config.json").read_text())["model"]
        # "30s" is not written: checkpoints saved before the setting load as 30 s with their model_version.
        assert written.get("whisper_input") == (None if whisper_input == "30s" else "chunk")
        loaded = ScreeningModel.from_pretrained(folder)
        assert loaded.config.whisper_input == loaded.backbone.whisper_input == whisper_input
        assert loaded.model_version == model.model_version
        waves = chunks(2)
        torch.testing.assert_close(loaded.encode_segments(waves), model.encode_segments(waves), atol=1e-6, rtol=0)
    assert models["30s"].model_version != models["chunk"].model_version
    assert models["30s"].with_whisper_input("chunk").model_version == models["chunk"].model_version


def test_the_setting_is_validated_and_set_from_a_recipe():
    with pytest.raises(ValueError, match="invalid model config: .*whisper_input"):
        whisper_config("10s")
    with pytest.raises(ValueError, match="invalid model config"):
        ModelConfig.from_dict({**whisper_config("30s").to_dict(), "whisper_input": 30})
    values = {"data": {"format": "manifest", "path": "x.csv"}, "model": {"backbone": "w", "backbone_config": WHISPER_30S}}
    apply_overrides(values, ["model.whisper_input=chunk"])
    assert TrainConfig.from_dict(values).model_config().whisper_input == "chunk"
    apply_overrides(values, ["model.whisper_input=1s"])
    with pytest.raises(ValueError, match="whisper_input"):
        TrainConfig.from_dict(values)


def test_a_frozen_feature_cache_is_kept_apart_per_input_length(models):
    from moodstream.trainer.train import backbone_digest

    assert backbone_digest(models["30s"]) != backbone_digest(models["chunk"])
