"""Checkpoint folders, model_version, and clear errors on bad input."""
import json

import numpy as np
import pytest
import torch

from moodstream.model import BackboneUnavailableError, CheckpointError, ModelConfig, ScreeningModel
from moodstream.model.config import tiny_wav2vec2_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(11)
    return ScreeningModel(ModelConfig.tiny(notes={"purpose": "test"}))


def waves(count=3, seconds=2.0, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32) for _ in range(count)]


def test_save_then_load_gives_identical_outputs_and_version(model, tmp_path):
    folder = model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "encoder.safetensors", "scorer.safetensors"]
    loaded = ScreeningModel.from_pretrained(folder)
    assert loaded.model_version == model.model_version
    assert json.loads((folder / "config.json").read_text())["model_version"] == model.model_version
    audio = waves()
    assert torch.equal(loaded.encode_segments(audio), model.encode_segments(audio))
    vectors = torch.randn(9, model.config.segment_vector_size)
    assert loaded.score(vectors) == model.score(vectors)
    assert loaded.config == model.config


def test_model_version_is_stable_and_changes_with_one_weight(model):
    twin = ScreeningModel(model.config)
    twin.load_state_dict(model.state_dict())
    assert twin.model_version == model.model_version
    with torch.no_grad():
        twin.session_head.classifier.bias[0] += 1e-3
    assert twin.model_version != model.model_version
    other_threshold = ScreeningModel(model.config.replace(decision_threshold=0.6))
    other_threshold.load_state_dict(model.state_dict())
    assert other_threshold.model_version != model.model_version


def test_saving_over_an_existing_checkpoint_replaces_it(model, tmp_path):
    target = tmp_path / "ckpt"
    model.save_pretrained(target)
    changed = ScreeningModel(model.config)
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.segment_head.attention_vector[0] += 1.0
    changed.save_pretrained(target)
    assert ScreeningModel.from_pretrained(target).model_version == changed.model_version
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_missing_checkpoint_says_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint folder at .*moodstream train"):
        ScreeningModel.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a moodstream checkpoint"):
        ScreeningModel.from_pretrained(tmp_path / "empty")


@pytest.mark.parametrize("damage", ["truncate-weights", "drop-scorer", "garble-config", "edit-weight", "bad-key"])
def test_corrupt_checkpoints_are_refused_in_one_sentence(model, tmp_path, damage):
    folder = model.save_pretrained(tmp_path / "ckpt")
    if damage == "truncate-weights":
        data = (folder / "encoder.safetensors").read_bytes()
        (folder / "encoder.safetensors").write_bytes(data[: len(data) // 2])
        pattern = "encoder.safetensors is corrupt"
    elif damage == "drop-scorer":
        (folder / "scorer.safetensors").unlink()
        pattern = "missing scorer.safetensors"
    elif damage == "garble-config":
        (folder / "config.json").write_text("{not json")
        pattern = "config.json is corrupt"
    elif damage == "edit-weight":
        from safetensors.torch import load_file, save_file

        weights = load_file(folder / "scorer.safetensors")
        weights["session_head.classifier.bias"] += 1.0
        save_file(weights, folder / "scorer.safetensors")
        pattern = "does not match its recorded model_version"
    else:
        document = json.loads((folder / "config.json").read_text())
        document["model"]["poolling"] = "mean"
        (folder / "config.json").write_text(json.dumps(document))
        pattern = "invalid model config"
    with pytest.raises(CheckpointError, match=pattern) as info:
        ScreeningModel.from_pretrained(folder)
    assert "\n" not in str(info.value)


def test_backbone_not_available_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneUnavailableError, match="hf download facebook/wav2vec2-base"):
        ScreeningModel(ModelConfig(), load_pretrained_backbone=True)


def test_backbone_from_a_local_folder_loads_its_weights(tmp_path):
    import transformers

    values = tiny_wav2vec2_config()
    hf_config = transformers.AutoConfig.for_model(values.pop("model_type"), **values)
    torch.manual_seed(3)
    pretrained = transformers.Wav2Vec2Model(hf_config)
    pretrained.save_pretrained(tmp_path / "w2v")
    model = ScreeningModel(ModelConfig.tiny(backbone=str(tmp_path / "w2v"), backbone_config=None),
                           load_pretrained_backbone=True)
    for name, tensor in pretrained.state_dict().items():
        assert torch.equal(model.backbone.encoder.state_dict()[name], tensor), name
    with pytest.raises(BackboneUnavailableError, match="does not hold a transformers model"):
        ScreeningModel(ModelConfig.tiny(backbone=str(tmp_path), backbone_config=None), load_pretrained_backbone=True)


def test_bad_audio_gets_clear_value_errors(model):
    good = waves(1)[0]
    with pytest.raises(ValueError, match="must be sampled at 16000 Hz, got 8000 Hz"):
        model.encode_segments([good], sample_rate=8000)
    with pytest.raises(ValueError, match="too short"):
        model.encode_segments([good[:1000]])
    with pytest.raises(ValueError, match="too long"):
        model.encode_segments([np.zeros(16000 * 11, dtype=np.float32)])
    for bad in (np.nan, np.inf):
        broken = good.copy()
        broken[100] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            model.encode_segments([broken])
    with pytest.raises(ValueError, match="no waveforms"):
        model.encode_segments([])
    with pytest.raises(ValueError, match="1-D mono"):
        model.encode_segments([np.zeros((2, 16000), dtype=np.float32)])
    pcm = (good * 32767).astype(np.int16)
    assert model.encode_segments([pcm]).shape == (1, model.config.segment_vector_size)


def test_bad_vectors_get_clear_value_errors(model):
    width = model.config.segment_vector_size
    with pytest.raises(ValueError, match="at least one segment"):
        model.score(torch.zeros(0, width))
    with pytest.raises(ValueError, match=f"shape \\(n, {width}\\)"):
        model.score(torch.zeros(3, width + 1))
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.score(torch.full((2, width), float("inf")))


def test_a_checkpoint_says_what_its_probability_means_and_older_ones_keep_their_version(model, tmp_path):
    from moodstream.model.checkpoint import compute_model_version
    from moodstream.model_description import ModelDescription

    plain = model.save_pretrained(tmp_path / "plain")
    document = json.loads((plain / "config.json").read_text())
    assert "training_data" not in document["model"]  # written only when set: older checkpoints hash the same
    undescribed = ModelDescription.from_checkpoint(plain)
    assert not undescribed.described and undescribed.flag() == ""
    assert "does not say what it was trained on" in undescribed.meaning()

    described = ScreeningModel(model.config.replace(training_data="read speech of 40 adults",
                                                    positive_class="PHQ-8 of 10 or more", demo_model=True))
    described.load_state_dict(model.state_dict())
    assert compute_model_version(described) != model.model_version  # the description is part of the model
    folder = described.save_pretrained(tmp_path / "described")
    description = ModelDescription.from_checkpoint(folder)
    assert description.model_version == ScreeningModel.from_pretrained(folder).model_version
    assert description.threshold == model.config.decision_threshold
    assert "PHQ-8 of 10 or more" in description.meaning() and "read speech of 40 adults" in description.meaning()
    assert description.flag().startswith("Demo model, trained on read speech of 40 adults")


@pytest.mark.parametrize("change", [{"training_data": "two\nlines"}, {"positive_class": "x" * 301},
                                    {"demo_model": "yes"}])
def test_a_bad_description_is_refused(change):
    with pytest.raises(ValueError, match="invalid model config"):
        ModelConfig.tiny(**change)


def test_the_bundled_demo_checkpoint_is_flagged_as_a_demo_on_synthetic_speech():
    from moodstream.samples import DEMO_CHECKPOINT
    from moodstream.model_description import ModelDescription

    description = ModelDescription.from_checkpoint(DEMO_CHECKPOINT)
    assert description.demo_model and "synthetic" in description.flag()
    assert description.model_version == ScreeningModel.from_pretrained(DEMO_CHECKPOINT).model_version


def test_the_bundled_checkpoints_config_json_is_written_back_unchanged(tmp_path):
    from moodstream.samples import DEMO_CHECKPOINT

    document = json.loads((DEMO_CHECKPOINT / "config.json").read_text())
    assert ModelConfig.from_dict(document["model"]).to_json() == json.dumps(document["model"], sort_keys=True, indent=2)
    saved = ScreeningModel.from_pretrained(DEMO_CHECKPOINT).save_pretrained(tmp_path / "again")
    assert json.loads((saved / "config.json").read_text()) == document


@pytest.mark.parametrize("change, message", [
    ({"dropout": 1.0}, "dropout must be a number in [0, 1), got 1.0"),
    ({"conv_channels": "80"}, "conv_channels must be an integer >= 1, got '80' (str)"),
    ({"decision_threshold": 0}, "decision_threshold must be a number in (0, 1), got 0"),
    ({"speech": [7.0]}, "speech must be a table or none, got [7.0] (list)"),
    ({"calibration_scale": float("inf")}, "calibration_scale must be finite, got inf"),
])
def test_a_bad_model_config_value_is_one_line_naming_the_key(change, message):
    with pytest.raises(ValueError) as refused:
        ModelConfig.tiny(**change)
    assert str(refused.value) == f"invalid model config: {message}"


def test_checkpoints_written_before_calibration_and_the_evidence_rule_keep_their_model_version(tmp_path):
    import json

    from moodstream.model import ModelConfig, ScreeningModel

    torch.manual_seed(0)
    folder = ScreeningModel(ModelConfig.tiny()).save_pretrained(tmp_path / "plain")
    document = json.loads((folder / "config.json").read_text())
    # an uncalibrated paper-recipe checkpoint's config.json has exactly the fields it always had
    for name in ("feature_normalization", "calibration_scale", "calibration_bias", "min_evidence_segments", "speech"):
        assert name not in document["model"]
    assert ScreeningModel.from_pretrained(folder).model_version == document["model_version"]
    calibrated = ScreeningModel(ModelConfig.tiny(calibration_scale=0.5, min_evidence_segments=2))
    document = json.loads((calibrated.save_pretrained(tmp_path / "calibrated") / "config.json").read_text())
    assert document["model"]["calibration_scale"] == 0.5 and document["model"]["min_evidence_segments"] == 2


def test_the_encoder_fingerprint_ignores_session_side_settings_only():
    from moodstream.model.checkpoint import encoder_fingerprint

    torch.manual_seed(0)
    model = ScreeningModel(ModelConfig.tiny())
    fingerprint = encoder_fingerprint(model)
    for change in ({"session_skip": "segment-mean"}, {"session_time_pooling": "mean"},
                   {"calibration_scale": 0.5}):
        model.config = model.config.replace(**change)
        assert encoder_fingerprint(model) == fingerprint, change
    model.config = model.config.replace(pooling="mean")  # shapes the segment vectors
    assert encoder_fingerprint(model) != fingerprint
