"""The encoder's precision paths, its tuner and bench/encoder.py on a Whisper checkpoint (tiny, built here)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from test_model_whisper_input import whisper_config
from test_trainer_whisper import tone

from moodstream.model import ScreeningModel
from moodstream.model.onnx_export import onnxruntime_available
from moodstream.server.encoder_paths import candidate_precisions, encode_function

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("moodstream-cache")


@pytest.fixture
def isolated_cache(cache_dir, monkeypatch):
    monkeypatch.setenv("MOODSTREAM_CACHE_DIR", str(cache_dir))  # exported graphs land here, once per model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return ScreeningModel(whisper_config("chunk")).save_pretrained(tmp_path_factory.mktemp("whisper") / "checkpoint")


def test_the_tuner_weighs_every_cpu_path_for_a_whisper_checkpoint(checkpoint):
    model = ScreeningModel.from_pretrained(checkpoint)
    candidates = candidate_precisions(model)
    if torch.backends.quantized.engine in ("x86", "fbgemm", "onednn"):
        assert "int8" in candidates
    if onnxruntime_available():
        assert {"ort-fp32", "ort-int8"} <= set(candidates)


@pytest.mark.parametrize("whisper_input", ["30s", "chunk"])
@pytest.mark.parametrize("precision", ["int8", "ort-fp32"])
def test_whisper_paths_give_fp32_vectors_at_either_input_length(checkpoint, whisper_input, precision, isolated_cache):
    if precision.startswith("ort") and not onnxruntime_available():
        pytest.skip("needs the onnx extra (onnxruntime, onnxscript)")
    model = ScreeningModel.from_pretrained(checkpoint)
    if whisper_input != model.config.whisper_input:
        model = model.with_whisper_input(whisper_input)
    # different lengths in one call: the ONNX path runs each length on its own
    waves = [tone(7.0, 140, 1), tone(3.2, 230, 2), tone(7.0, 180, 3)]
    reference = model.encode_segments(waves).numpy()
    vectors = encode_function(model, precision)(waves)
    cosine = (vectors * reference).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)
    assert vectors.shape == reference.shape and cosine.min() > 0.999
    if precision == "ort-fp32":
        assert np.abs(vectors - reference).max() < 1e-4


def test_the_encoder_bench_runs_on_a_whisper_checkpoint(checkpoint, isolated_cache, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import encoder

    lines = []
    result = encoder.run(batch_sizes=(1,), rounds=1, checkpoint=str(checkpoint), whisper_input="chunk",
                         log=lines.append)
    variants = {row["variant"] for row in result["rows"]}
    assert {"fp32", "bf16 autocast", "server path"} <= variants
    if onnxruntime_available():
        assert {"int8 dynamic", "ort-fp32", "ort-int8"} <= variants
    assert result["whisper_input"] == "chunk" and result["chunk_seconds"] == 7.0
    # the server path tuned itself over the same paths, within the accuracy bound
    tuned = next(line for line in lines if "server path: precision" in line)
    assert "int8" in tuned and ("ort-fp32" in tuned or not onnxruntime_available())
    fp32 = next(row for row in result["rows"] if row["variant"] == "fp32")
    assert fp32["chunks_per_second"] > 0 and fp32["min_cosine"] == pytest.approx(1.0)
