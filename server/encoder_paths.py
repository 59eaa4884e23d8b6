"""The encoder's precision paths: which ones exist, which this device can run, and an encode function for one.

torch runs fp32 (the reference), bf16 and fp16 (autocast) and int8 (dynamic
quantisation of the backbone's Linear layers); ONNX Runtime runs ort-fp32 and
ort-int8 (moodstream.server.onnx_encoder). Which of them the encoder serves
with is measured by moodstream.server.encoder_tuning.
"""
from __future__ import annotations

import contextlib
import copy
import os
import warnings
from pathlib import Path

import torch

from moodstream.model.onnx_export import onnxruntime_available
from moodstream.server.onnx_encoder import ONNX_PATHS, onnx_encode_function

# torch paths, then ONNX Runtime's (CPU; moodstream.server.onnx_encoder), which auto weighs where installed.
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8", "ort-fp32", "ort-int8")
# CPUs whose torch kernels run bf16 natively; elsewhere bf16 autocast is
# emulated and many times slower than fp32.
_BF16_CPU_CAPABILITIES = ("AVX512", "AVX512_BF16", "AMX", "AVX512_AMX")


class _Bf16FeatureEncoder(torch.nn.Module):
    """The frozen CNN under bf16 autocast, handing fp32 frames to the (int8) transformer."""

    def __init__(self, feature_encoder: torch.nn.Module) -> None:
        super().__init__()
        self.inner = feature_encoder

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.inner(waveforms).float()


def cpu_has_fast_bf16() -> bool:
    return torch.backends.cpu.get_cpu_capability() in _BF16_CPU_CAPABILITIES


def int8_model(model):
    """A copy of the model whose backbone Linear layers run int8 (dynamic quantisation, per-channel weights, CPU only).

    The frozen CNN front end, which no Linear layer touches, runs in bf16 where the
    CPU does bf16 natively (wav2vec2 family; Whisper's log-mel and conv front end
    stay fp32). Segment and session heads stay fp32.
    """
    if model.device.type != "cpu":
        raise ValueError("int8 runs on the CPU only; use bf16 or fp16 on a GPU")
    quantized = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        if model.backbone.is_whisper:  # every Linear of the encoder is in its layers
            quantized.backbone.encoder.layers = quantize_dynamic(
                quantized.backbone.encoder.layers, {torch.nn.Linear: per_channel_dynamic_qconfig})
            return quantized
        # Per-channel weight scales: per-tensor ones measured about twice the probability error.
        for name in ("encoder", "feature_projection"):
            setattr(quantized.backbone.encoder, name, quantize_dynamic(
                getattr(quantized.backbone.encoder, name), {torch.nn.Linear: per_channel_dynamic_qconfig}))
    if cpu_has_fast_bf16():
        quantized.backbone.encoder.feature_extractor = _Bf16FeatureEncoder(
            quantized.backbone.encoder.feature_extractor)
    return quantized


def encode_function(model, precision: str):
    """waveforms -> segment vectors (float32 numpy) for one precision."""
    if precision in ONNX_PATHS:
        return onnx_encode_function(model, precision, default_cache_dir() / "onnx")
    if precision == "int8":
        quantized = int8_model(model)
        return lambda batch: quantized.encode_segments(batch).numpy()

    def encode(batch):
        with autocast_context(model.device, precision):
            return model.encode_segments(batch).numpy()
    return encode


def check_request(model, precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16" and model.device.type != "cuda":
        raise ValueError("fp16 needs a CUDA device; use fp32, bf16 or int8 on the CPU")
    if precision == "int8" and model.device.type != "cpu":
        raise ValueError("int8 runs on the CPU only; use bf16 or fp16 on a GPU")
    if precision in ONNX_PATHS:
        if model.device.type != "cpu":
            raise ValueError(f"{precision} runs on the CPU only; use bf16 or fp16 on a GPU")
        if not onnxruntime_available():
            raise ValueError(f"{precision} needs ONNX Runtime: pip install 'moodstream[onnx]'")


def candidate_precisions(model) -> list[str]:
    """What auto weighs on this device: fp32 first (the reference), then what the hardware runs fast."""
    if model.device.type == "cuda":
        return ["fp32", "bf16" if torch.cuda.is_bf16_supported() else "fp16"]
    candidates = ["fp32"]
    if cpu_has_fast_bf16():
        candidates.append("bf16")
    if torch.backends.quantized.engine in ("x86", "fbgemm", "onednn"):
        candidates.append("int8")
    if onnxruntime_available():
        candidates.extend(ONNX_PATHS)
    return candidates


def autocast_context(device: torch.device, precision: str):
    if precision in ("fp32", "int8"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def default_cache_dir() -> Path:
    """$MOODSTREAM_CACHE_DIR, else moodstream/ under $XDG_CACHE_HOME or ~/.cache: tunings and exported graphs."""
    if os.environ.get("MOODSTREAM_CACHE_DIR"):
        return Path(os.environ["MOODSTREAM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "moodstream"
