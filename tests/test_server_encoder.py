"""The server's encoder worker: precisions and dynamic batching (tiny model, CPU)."""
import asyncio

import numpy as np
import pytest
import torch

from moodstream.model import ModelConfig, ScreeningModel
from moodstream.server.encoder import PRECISIONS, BatchingEncoder, choose_precision, encode_function


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ScreeningModel(ModelConfig.tiny()).eval()


def waves(count, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(16000 * 7)).astype(np.float32) for _ in range(count)]


def test_int8_and_bf16_stay_close_to_fp32(model):
    batch = waves(4)
    reference = torch.from_numpy(encode_function(model, "fp32")(batch))
    for precision in ("bf16", "int8"):
        vectors = torch.from_numpy(encode_function(model, precision)(batch))
        assert vectors.dtype == torch.float32 and vectors.shape == reference.shape
        assert float(torch.nn.functional.cosine_similarity(reference, vectors).min()) >= 0.999, precision
        assert abs(model.score(vectors) - model.score(reference)) <= 1e-3, precision


def test_int8_leaves_the_served_model_untouched(model):
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    encode_function(model, "int8")
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert not any("quantized" in type(module).__module__ for module in model.modules())


def test_precision_requests_are_checked(model):
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision(model, "fp8")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        choose_precision(model, "fp16")
    assert choose_precision(model, "int8") == "int8"
    assert choose_precision(model, "auto") in PRECISIONS


def test_concurrent_chunks_share_forward_passes_and_get_their_own_vectors(model):
    chunks = waves(12, seed=1)
    expected = model.encode_segments(chunks).numpy()
    sizes = []

    async def main():
        encoder = BatchingEncoder(model, max_batch=4, max_wait_ms=50.0, precision="fp32")
        forward = encoder._forward

        def recording(batch):
            sizes.append(len(batch))
            return forward(batch)

        encoder._forward = recording
        await encoder.start()
        try:
            return await asyncio.gather(*(encoder.encode(chunk) for chunk in chunks))
        finally:
            await encoder.stop()

    vectors = np.stack(asyncio.run(main()))
    assert max(sizes) == 4 and sum(sizes) == 12 and len(sizes) < 12
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_a_cpu_encoder_does_not_batch_by_default(model):
    # bench/encoder.py: on a CPU every batch size above 1 was slower per chunk.
    encoder = BatchingEncoder(model, precision="fp32")
    try:
        assert encoder.max_batch == 1
    finally:
        encoder._executor.shutdown()
