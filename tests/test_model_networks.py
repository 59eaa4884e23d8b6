"""The paper's networks: summed layers, fine-tuning strategies, pooling, session head."""
import numpy as np
import pytest
import torch

from moodstream.model import ModelConfig, ScreeningModel
from moodstream.model.backbone import normalize_per_segment
from moodstream.model.segment_head import SegmentHead
from moodstream.model.session_head import SessionHead


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return ScreeningModel(ModelConfig.tiny())


def speechlike(seconds, seed, rate=16000):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140, 280, 420), start=1))
    return (0.1 * tone * (1 + np.sin(2 * np.pi * 4 * t)) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def test_frame_features_are_the_sum_of_every_transformer_layer(tiny_model):
    wave = torch.from_numpy(speechlike(2.0, 1))[None]
    lengths = torch.tensor([wave.shape[1]])
    with torch.no_grad():
        features, mask = tiny_model.backbone(wave, lengths)
        normalised = normalize_per_segment(wave, torch.ones_like(wave, dtype=torch.bool), lengths)
        outputs = tiny_model.backbone.encoder(normalised, output_hidden_states=True)
    layers = tiny_model.backbone.encoder.config.num_hidden_layers
    assert len(outputs.hidden_states) == layers + 1
    manual = sum(outputs.hidden_states[1:])
    assert torch.allclose(features, manual, atol=1e-6)
    # and not the CNN/embedding output
    assert not torch.allclose(features, sum(outputs.hidden_states), atol=1e-3)
    assert mask.all() and mask.shape[1] == features.shape[1] == 99  # 2 s at 20 ms frames


@pytest.mark.parametrize("strategy,last_n", [("frozen", 1), ("last-n", 1), ("last-n", 2), ("all", 1)])
def test_trainable_parameters_follow_the_strategy(strategy, last_n):
    model = ScreeningModel(ModelConfig.tiny(fine_tuning=strategy, fine_tune_last_n=last_n))
    backbone = model.backbone
    assert not any(p.requires_grad for p in backbone.feature_encoder.parameters())
    layers = backbone.transformer_layers
    for index, layer in enumerate(layers):
        trainable = {p.requires_grad for p in layer.parameters()}
        expected = strategy == "all" or (strategy == "last-n" and index >= len(layers) - last_n)
        assert trainable == {expected}, (strategy, index)
    projection = {p.requires_grad for p in backbone.encoder.feature_projection.parameters()}
    assert projection == {strategy == "all"}
    heads = [p.requires_grad for p in model.segment_head.parameters()] + \
            [p.requires_grad for p in model.session_head.parameters()]
    assert all(heads)


def test_last_n_larger_than_the_backbone_is_refused():
    with pytest.raises(ValueError, match="only 2 layers"):
        ScreeningModel(ModelConfig.tiny(fine_tuning="last-n", fine_tune_last_n=3))


def test_a_segment_encodes_the_same_alone_and_in_a_padded_batch(tiny_model):
    waves = [speechlike(7.0, 2), speechlike(3.3, 3), speechlike(5.1, 4)]
    batched = tiny_model.encode_segments(waves, sample_rate=16000)
    for index, wave in enumerate(waves):
        alone = tiny_model.encode_segments([wave], sample_rate=16000)[0]
        assert torch.allclose(batched[index], alone, atol=1e-5)


def test_attention_pooling_weights_sum_to_one_and_ignore_padding():
    torch.manual_seed(1)
    head = SegmentHead(input_size=12, channels=8, pooling="attention").eval()
    features = torch.randn(2, 30, 12)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, 18:] = False
    frames = head.frame_outputs(features, mask)
    weights = head.attention_weights(frames, mask)
    assert torch.allclose(weights.sum(dim=1), torch.ones(2), atol=1e-6)
    assert torch.all(weights[1, 18:] == 0)
    pooled = head(features, mask)
    # garbage in the padded frames changes nothing
    noisy = features.clone()
    noisy[1, 18:] = 1e3 * torch.randn(12, 12)
    assert torch.allclose(head(noisy, mask), pooled, atol=1e-6)
    # and equals the unpadded segment on its own
    alone = head(features[1:, :18], torch.ones(1, 18, dtype=torch.bool))
    assert torch.allclose(alone[0], pooled[1], atol=1e-6)
    # v = a . C by hand
    assert torch.allclose(pooled[0], weights[0] @ frames[0], atol=1e-6)


def test_mean_and_max_pooling_variants():
    torch.manual_seed(2)
    features = torch.randn(1, 20, 6)
    mask = torch.ones(1, 20, dtype=torch.bool)
    mask[0, 15:] = False
    mean_head = SegmentHead(6, channels=5, pooling="mean").eval()
    frames = mean_head.frame_outputs(features, mask)
    assert torch.allclose(mean_head(features, mask)[0], frames[0, :15].mean(dim=0), atol=1e-6)
    max_head = SegmentHead(6, channels=5, pooling="max").eval()
    max_head.load_state_dict(mean_head.state_dict())
    assert torch.allclose(max_head(features, mask)[0], frames[0, :15].max(dim=0).values, atol=1e-6)


def test_segment_head_is_three_conv_relu_dropout_blocks_of_80_filters():
    head = SegmentHead(input_size=768)
    assert len(head.convs) == 3
    assert [conv.out_channels for conv in head.convs] == [80, 80, 80]
    assert head.attention_vector.shape == (80,)


def test_session_head_attention_and_last_step_by_hand():
    torch.manual_seed(3)
    head = SessionHead(input_size=4, hidden_size=5, attention_size=6).eval()
    x = torch.randn(1, 7, 4)
    with torch.no_grad():
        outputs, _ = head.lstm(x)
        q, k, v = head.query(outputs[0]), head.key(outputs[0]), head.value(outputs[0])
        attended = torch.softmax(q @ k.T / 6 ** 0.5, dim=-1) @ v
        expected = head.classifier(attended.sum(dim=0))[0]
        assert torch.allclose(head(x)[0], expected, atol=1e-6)
    last = SessionHead(input_size=4, hidden_size=5, attention_size=6, variant="last-step").eval()
    with torch.no_grad():
        outputs, _ = last.lstm(x)
        assert torch.allclose(last(x)[0], last.classifier(outputs[0, -1])[0], atol=1e-6)


def test_session_head_ignores_padding_after_each_sequence():
    torch.manual_seed(4)
    head = SessionHead(input_size=4, hidden_size=5, attention_size=6).eval()
    x = torch.randn(2, 9, 4)
    lengths = torch.tensor([9, 5])
    with torch.no_grad():
        batched = head(x, lengths)
        assert torch.allclose(batched[1], head(x[1:, :5])[0], atol=1e-6)


def test_invalid_configs_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="pooling must be one of"):
        ModelConfig.tiny(pooling="median")
    with pytest.raises(ValueError, match="fine_tuning must be one of"):
        ModelConfig.tiny(fine_tuning="some")
    with pytest.raises(ValueError, match="unknown key 'poolin'"):
        ModelConfig.from_dict({"poolin": "mean"})


def test_threads_sharing_one_model_each_get_their_own_segment_vectors(tiny_model):
    """Two servers (or encoders) in one process may share a model: concurrent forward passes must
    not pick up each other's layer outputs."""
    import threading

    waves = {name: [speechlike(3.0, seed) for seed in seeds] for name, seeds in (("a", (5, 6)), ("b", (7, 8)))}
    expected = {name: tiny_model.encode_segments(w, sample_rate=16000) for name, w in waves.items()}
    start, wrong = threading.Barrier(2), []

    def encode(name):
        start.wait(30)
        for _ in range(30):
            if not torch.allclose(tiny_model.encode_segments(waves[name], sample_rate=16000), expected[name],
                                  atol=1e-5):
                wrong.append(name)

    threads = [threading.Thread(target=encode, args=(name,)) for name in waves]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert wrong == []


@pytest.mark.parametrize("strategy", ["frozen", "last-n", "all"])
def test_the_frozen_cnn_builds_no_gradient_graph_in_training_mode(strategy):
    model = ScreeningModel(ModelConfig.tiny(fine_tuning=strategy))
    model.train()
    wave = torch.from_numpy(speechlike(2.0, 5))[None]
    cnn_output = model.backbone.feature_encoder(wave)
    assert cnn_output.grad_fn is None and not cnn_output.requires_grad
    if strategy != "frozen":  # the layers above still train
        features, _ = model.backbone(wave, torch.tensor([wave.shape[1]]))
        assert features.grad_fn is not None


def test_standardized_features_use_the_stored_training_statistics():
    torch.manual_seed(0)
    head = SegmentHead(6, channels=4, feature_normalization="standardize")
    frames = torch.randn(500, 6) * torch.tensor([1.0, 5, 0.5, 10, 2, 3]) + torch.tensor([0.0, 12, -3, 4, 0, 1])
    head.set_feature_statistics(frames)
    assert torch.allclose(head.feature_mean, frames.mean(0), atol=1e-5)
    assert set(head.state_dict()) >= {"feature_mean", "feature_std"}
    plain = SegmentHead(6, channels=4)
    plain.load_state_dict({k: v for k, v in head.state_dict().items() if not k.startswith("feature_")})
    features, mask = frames[None, :40], torch.ones(1, 40, dtype=torch.bool)
    standardized = (features - frames.mean(0)) / frames.std(0)
    assert torch.allclose(head.eval()(features, mask), plain.eval()(standardized, mask), atol=1e-5)
    assert "feature_mean" not in plain.state_dict()  # the paper's head keeps its weight layout
