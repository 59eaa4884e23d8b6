"""The encoder side as an ONNX graph run by ONNX Runtime: a path the encoder tuner weighs beside torch.

torch stays the reference. The graph is the model's own code exported with
`torch.onnx` (dynamic batch and length): waveforms [B, T] of equal length ->
segment vectors [B, D]. Chunks of different lengths run as separate calls,
one per length, so a segment's vector never depends on what it is batched
with (as in moodstream.model.backbone). The same file is what Triton's ONNX
Runtime and TensorRT backends load (docs/performance.md).

Paths: `ort-fp32` (ONNX Runtime's basic graph optimisations: constant
folding and redundant-node removal, which keep fp32's numbers) and `ort-int8`
(dynamic int8 quantisation of the MatMul weights only, per tensor; the
convolutions stay fp32, as quantising them too measured 3x slower and less
accurate). The options were measured with bench/onnx_options.py.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger("moodstream.server.onnx_encoder")

ONNX_PATHS = ("ort-fp32", "ort-int8")
INPUT_NAME = "waveforms"
OUTPUT_NAME = "segment_vectors"


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError:
        return False
    return True


class EqualLengthEncoder(nn.Module):
    """waveforms [B, T], every row real audio (no padding) -> segment vectors [B, D]."""

    def __init__(self, model) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.segment_head = model.segment_head

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        features, frame_mask = self.backbone.equal_length_forward(waveforms)
        return self.segment_head(features, frame_mask)


def export_onnx(model, path: str | os.PathLike) -> Path:
    """Write the model's encoder side to `path` (fp32, CPU copy of the weights; atomic)."""
    if model.backbone.is_whisper:
        raise ValueError("the ONNX encoder is implemented for wav2vec2-family backbones only")
    import copy

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = model.config
    batch = torch.export.Dim("batch", min=1, max=1024)
    samples = torch.export.Dim("samples", min=int(config.sample_rate * config.min_segment_seconds),
                               max=int(config.sample_rate * config.max_segment_seconds))
    spare = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # Outside inference mode, even when called from it: the exporter traces with autograd's machinery.
    with warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")  # the exporter's notes on optional packages (torchvision) and opsets
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        module = EqualLengthEncoder(copy.deepcopy(model).to("cpu").float().eval()).eval()
        example = torch.zeros(2, int(config.sample_rate * config.segment_seconds))
        example[:, ::97] = 0.1  # not silence: normalisation divides by the standard deviation
        torch.onnx.export(module, (example,), spare, dynamo=True, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_shapes={INPUT_NAME: {0: batch, 1: samples}},
                          external_data=False, verbose=False)
    spare.replace(path)
    return path


def quantize_matmuls(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """int8 weights for MatMul only (per channel, dynamic activations); convolutions stay fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = Path(target)
    spare = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    # MatMulConstBOnly: weights only, never an activation-by-activation product (attention scores).
    # Per-tensor scales: ORT 1.32's MatMulInteger refuses the per-channel zero points quantize_dynamic writes.
    quantize_dynamic(str(source), str(spare), op_types_to_quantize=["MatMul"], per_channel=False,
                     weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True})
    spare.replace(target)
    return target


class OnnxEncoder:
    """encode(list of waves) -> float32 vectors [B, D] with an ONNX Runtime session on the CPU."""

    def __init__(self, model, onnx_path: str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.model = model  # for input validation, shared with torch's path
        options = ort.SessionOptions()
        # Basic: constant folding and dead-node removal keep fp32's numbers; the extended fusions moved the
        # base-size fp32 graph's vectors to cosine 0.996, outside the bound, and were no faster for the int8
        # graph (bench/onnx_options.py, docs/performance.md).
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        # Idle pool threads sleep instead of spinning: on cores shared with other work a spinning thread
        # takes the core from the one with work (int8, base size, 2 cores under load: 1.5x faster).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def __call__(self, batch) -> np.ndarray:
        waveforms, lengths = self.model.prepare_waveforms(batch)
        waveforms, lengths = waveforms.numpy(), lengths.numpy()
        vectors = None
        for length in np.unique(lengths):
            rows = np.nonzero(lengths == length)[0]
            out = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(waveforms[rows, :length])})[0]
            if vectors is None:
                vectors = np.empty((len(lengths), out.shape[1]), dtype=np.float32)
            vectors[rows] = out
        return vectors


def onnx_encode_function(model, path_name: str, folder: str | os.PathLike):
    """The encode function for `ort-fp32` / `ort-int8`, exporting (once per model version) into `folder`."""
    if path_name not in ONNX_PATHS:
        raise ValueError(f"ONNX path must be one of {ONNX_PATHS}, got {path_name!r}")
    if model.device.type != "cpu":
        raise ValueError("the ONNX Runtime paths run on the CPU; on a GPU torch's autocast is used")
    folder = Path(folder)
    fp32 = folder / f"{model.model_version}-torch{torch.__version__}.onnx"
    if not fp32.exists():
        log.info("exporting the encoder to %s (once per model version)", fp32)
        export_onnx(model, fp32)
    path = fp32
    if path_name == "ort-int8":
        path = fp32.with_suffix(".int8.onnx")
        if not path.exists():
            quantize_matmuls(fp32, path)
    return OnnxEncoder(model, path)
