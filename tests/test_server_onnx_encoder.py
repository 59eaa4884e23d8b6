"""The encoder side exported with torch.onnx and run by ONNX Runtime: the same vectors as torch's fp32."""
import numpy as np
import pytest
import torch

from moodstream.model import ModelConfig, ScreeningModel
from moodstream.server.encoder_paths import default_cache_dir, encode_function
from moodstream.server.encoder_tuning import accuracy, speech_like_waves, within_bound
from moodstream.model.onnx_export import onnxruntime_available
from moodstream.server.onnx_encoder import OnnxEncoder

pytestmark = pytest.mark.skipif(not onnxruntime_available(), reason="ONNX Runtime is not installed "
                                "(pip install 'moodstream[onnx]')")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(2)
    return ScreeningModel(ModelConfig.tiny()).eval()


@pytest.fixture(scope="module")
def exported(model):
    """The fp32 and int8 graphs, exported the way the server does (into the run's cache folder)."""
    encode_function(model, "ort-int8")
    fp32 = default_cache_dir() / "onnx" / f"{model.model_version}-torch{torch.__version__}.onnx"
    return fp32, fp32.with_suffix(".int8.onnx")


def test_the_exported_graph_gives_torch_fp32_vectors_at_any_batch_and_length(model, exported):
    chunks = speech_like_waves(3, seed=4) + speech_like_waves(2, seed=5, seconds=4.5)
    chunks = [chunks[0], chunks[3], chunks[1], chunks[4], chunks[2]]  # lengths interleaved in one batch
    expected = model.encode_segments(chunks).numpy()
    encode = OnnxEncoder(model, exported[0])
    np.testing.assert_allclose(encode(chunks), expected, rtol=1e-4, atol=1e-5)
    alone = np.stack([encode([chunk])[0] for chunk in chunks])
    np.testing.assert_allclose(alone, encode(chunks), rtol=1e-5, atol=1e-6)  # batching changes nothing


def test_int8_matmuls_are_measured_against_fp32(model, exported, capsys):
    chunks = speech_like_waves(4, seed=6)
    cosine, probability_error = accuracy(model, model.encode_segments(chunks).numpy(),
                                         OnnxEncoder(model, exported[1])(chunks))
    with capsys.disabled():
        print(f"\nort-int8 vs torch fp32 (random tiny): min cosine {cosine:.5f}, |dp| {probability_error:.1e} "
              f"({'within' if within_bound(cosine, probability_error) else 'outside'} the bound)")
    assert cosine > 0.9, "int8 MatMuls are no longer the same encoder"


def test_bad_chunks_get_the_same_clear_error_as_torch(model, exported):
    encode = OnnxEncoder(model, exported[0])
    with pytest.raises(ValueError, match="too short"):
        encode([np.zeros(1000, np.float32)])
    with pytest.raises(ValueError, match="NaN or infinite"):
        encode([np.full(16000 * 2, np.nan, np.float32)])


def test_the_encoder_paths_export_once_per_model_version(model, exported, monkeypatch):
    assert all(path.is_file() for path in exported)
    monkeypatch.setattr("moodstream.server.onnx_encoder.export_onnx",
                        lambda *a: pytest.fail("exported a second time"))
    monkeypatch.setattr("moodstream.server.onnx_encoder.quantize_matmuls",
                        lambda *a: pytest.fail("quantised a second time"))
    assert isinstance(encode_function(model, "ort-fp32"), OnnxEncoder)
    assert isinstance(encode_function(model, "ort-int8"), OnnxEncoder)
