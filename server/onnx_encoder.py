"""The encoder side as an ONNX graph run by ONNX Runtime: a path the encoder tuner weighs beside torch.

torch stays the reference. The graph is the model's own code exported with
`torch.onnx` (dynamic batch and length): waveforms [B, T] of equal length ->
segment vectors [B, D]. Chunks of different lengths run as separate calls,
one per length, so a segment's vector never depends on what it is batched
with (as in moodstream.model.backbone). The graph is written by moodstream.model.onnx_export,
the same file Triton's ONNX Runtime and TensorRT backends load (docs/performance.md).

Paths: `ort-fp32` (ONNX Runtime's basic graph optimisations: constant
folding and redundant-node removal, which keep fp32's numbers) and `ort-int8`
(dynamic int8 quantisation of the MatMul weights only, per tensor; the
convolutions stay fp32, as quantising them too measured 3x slower and less
accurate). The options were measured with bench/onnx_options.py.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from moodstream.model.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx, quantize_matmuls

log = logging.getLogger("moodstream.server.onnx_encoder")

ONNX_PATHS = ("ort-fp32", "ort-int8")


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
