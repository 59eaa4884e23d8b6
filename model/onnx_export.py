"""The encoder side of a checkpoint as an ONNX graph: waveforms [B, T] of equal length -> segment vectors [B, D].

`moodstream model export-onnx` writes it; the server's ort-fp32 / ort-int8 encoder paths run it
(moodstream.server.onnx_encoder); Triton's ONNX Runtime and TensorRT backends load the same file
(docs/performance.md).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

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
    with without_preprocessing_advice():
        quantize_dynamic(str(source), str(spare), op_types_to_quantize=["MatMul"], per_channel=False,
                         weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True})
    spare.replace(target)
    return target


@contextlib.contextmanager
def without_preprocessing_advice():
    """ONNX Runtime's quantize_dynamic advises, on the root logger, to pre-process the graph first (shape inference
    for its image-model examples): a line on stderr that asks nothing of whoever runs the server. Logging it would
    also leave a stderr handler on the root logger; the NullHandler keeps logging from adding one."""
    root = logging.getLogger()
    quiet = logging.NullHandler()

    def advice(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider to run pre-processing before quantization")

    root.addHandler(quiet)
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)
        root.removeHandler(quiet)
