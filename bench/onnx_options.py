"""ONNX Runtime's options for the encoder graph: graph optimisation level, threads, spinning, quantisation.

    python bench/onnx_options.py [--size base|tiny | --checkpoint DIR] [--batch-sizes 1 2] [--rounds 3]

Every variant runs the model's exported encoder graph (moodstream.server.onnx_encoder) on the same
speech-like 7 s chunks; they take turns round by round and each keeps its best round. The baseline is
torch fp32 eager at batch 1 in the same run. Accuracy is measured against torch fp32 with the server's
own bound (min cosine of a segment vector, |Δ session probability|), on the tuner's speech-like probe
chunks and on the bundled interview cut into chunks by the agent's speech path (real speech). This is how the settings of the
`ort-fp32` and `ort-int8` paths were chosen (docs/performance.md).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import interleaved_best, machine, markdown_table  # noqa: E402
from encoder import build_model, speech_like_chunks  # noqa: E402

LEVELS = ("BASIC", "EXTENDED", "ALL")


def quantised(source: Path, target: Path, **options) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8,
                     extra_options={"MatMulConstBOnly": True}, **options)
    return target


class Calibration:
    """ONNX Runtime's calibration reader over a list of waves, one per call."""

    def __init__(self, model, waves) -> None:
        from moodstream.model.onnx_export import INPUT_NAME

        self.items = iter([{INPUT_NAME: model.prepare_waveforms([wave])[0].numpy()} for wave in waves])

    def get_next(self):
        return next(self.items, None)


def static_cnn(model, source: Path, target: Path, calibration_waves) -> Path:
    """Convolutions statically quantised (int8, calibrated activation ranges), then MatMuls as the server does."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from moodstream.model.onnx_export import quantize_matmuls

    convolutions = target.with_suffix(".conv.onnx")
    quantize_static(str(source), str(convolutions), Calibration(model, calibration_waves),
                    quant_format=QuantFormat.QOperator, op_types_to_quantize=["Conv"], per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return quantize_matmuls(convolutions, target)


def session(path: Path, level: str, threads: int, spinning: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(size: str, checkpoint: str | None, batch_sizes: list[int], rounds: int, which: str = "all",
        log=print) -> dict:
    from moodstream.server.encoder_tuning import accuracy, interview_probe, within_bound
    from moodstream.model.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx

    model = build_model(size, checkpoint)
    waves = speech_like_chunks(max(max(batch_sizes), 4))
    threads = torch.get_num_threads()
    folder = Path(tempfile.mkdtemp(prefix="moodstream-onnx-options-"))
    fp32 = export_onnx(model, folder / "fp32.onnx")
    graphs = {"fp32": fp32, "int8 per tensor": quantised(fp32, folder / "int8.onnx", op_types_to_quantize=["MatMul"])}
    if which == "all":
        graphs.update({
            "int8 per tensor, reduce_range": quantised(fp32, folder / "int8-rr.onnx", op_types_to_quantize=["MatMul"],
                                                       reduce_range=True),
            "int8 per channel": quantised(fp32, folder / "int8-pc.onnx", op_types_to_quantize=["MatMul"],
                                          per_channel=True),
            "int8 MatMul + Conv": quantised(fp32, folder / "int8-conv.onnx",
                                            op_types_to_quantize=["MatMul", "Conv"])})
        settings = [(graph, level, threads, True) for graph in graphs for level in LEVELS]
        settings += [("int8 per tensor", "EXTENDED", 1, True), ("int8 per tensor", "EXTENDED", threads, False),
                     ("fp32", "EXTENDED", threads, False)]
    elif which == "static-cnn":  # the CNN front end in int8 too, calibrated on synthetic or on real speech
        lively = [wave for wave in interview_probe(model, max_chunks=None)[1] if len(wave) == len(waves[0])]
        graphs["int8 + static int8 CNN, synthetic calibration"] = static_cnn(
            model, fp32, folder / "static-synthetic.onnx", speech_like_chunks(6, seed=11))
        graphs["int8 + static int8 CNN, calibrated on the other interview"] = static_cnn(
            model, fp32, folder / "static-lively.onnx", lively[:6])
        settings = [(graph, "BASIC", threads, False) for graph in graphs]
    else:  # spinning: the two graphs the server runs, thread pools spinning or sleeping between tasks
        settings = [("fp32", "BASIC", threads, spinning) for spinning in (True, False)]
        settings += [("int8 per tensor", level, threads, spinning) for level in LEVELS for spinning in (True, False)]
        settings += [("int8 per tensor", "EXTENDED", 1, False)]
    encoders = {}
    for graph, level, thread_count, spinning in settings:
        name = f"{graph}, {level}, {thread_count} threads{'' if spinning else ', no spinning'}"
        try:
            onnx_session = session(graphs[graph], level, thread_count, spinning)
        except Exception as error:  # a graph this ONNX Runtime cannot run is a result, not a crash
            log(f"{name}: refused: {str(error).splitlines()[0][:160]}")
            continue

        def encode(batch, onnx_session=onnx_session):
            prepared, _ = model.prepare_waveforms(batch)
            return onnx_session.run([OUTPUT_NAME], {INPUT_NAME: prepared.numpy()})[0]
        encoders[name] = encode
    reference = model.encode_segments(waves[:4]).numpy()
    # Full-length chunks only: this bench's graphs run a batch as one equal-length call, without the server's
    # per-length split.
    speech = [wave for wave in interview_probe(model, max_chunks=None)[0] if len(wave) == len(waves[0])]
    speech_reference = model.encode_segments(speech).numpy()
    quality, speech_quality = {}, {}
    for name, encode in list(encoders.items()):
        try:
            quality[name] = accuracy(model, reference, encode(waves[:4]))
            speech_quality[name] = accuracy(model, speech_reference, encode(speech))
        except Exception as error:
            log(f"{name}: failed: {str(error).splitlines()[0][:160]}")
            del encoders[name]
    calls = {("torch fp32 eager", 1): lambda: model.encode_segments(waves[:1])}
    calls.update({(name, batch): (lambda encode=encode, batch=batch: encode(waves[:batch]))
                  for batch in batch_sizes for name, encode in encoders.items()})
    best = interleaved_best(calls, rounds=rounds)
    baseline = 1 / best["torch fp32 eager", 1]
    rows = []
    for (name, batch), seconds in best.items():
        cosine, probability_error = quality.get(name, (1.0, 0.0))
        speech_cosine, speech_error = speech_quality.get(name, (1.0, 0.0))
        rows.append({"variant": name, "batch": batch, "chunks_per_second": batch / seconds,
                     "vs_torch_fp32": batch / seconds / baseline, "min_cosine": cosine,
                     "abs_diff_probability": probability_error, "interview_min_cosine": speech_cosine,
                     "interview_abs_diff_probability": speech_error,
                     "within_bound": within_bound(cosine, probability_error) and within_bound(speech_cosine, speech_error)})
        log(f"{name} batch {batch}: {batch / seconds:.2f} chunks/s ({rows[-1]['vs_torch_fp32']:.2f}x torch fp32), "
            f"probe cos {cosine:.5f}, |dp| {probability_error:.1e}; interview cos {speech_cosine:.5f}, "
            f"|dp| {speech_error:.1e}")
    return {"size": "checkpoint" if checkpoint else size, "checkpoint": checkpoint, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("base", "tiny"), default="base")
    parser.add_argument("--checkpoint", help="a checkpoint folder instead of --size (accuracy on trained weights)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", choices=("all", "spinning", "static-cnn"), default="all",
                        help="all: every graph, level and quantisation option; spinning: the served graphs with "
                             "ONNX Runtime's thread pool spinning or not, and levels for int8; static-cnn: the "
                             "int8 graph with its convolutions statically quantised too, calibrated two ways")
    args = parser.parse_args()
    info = machine()
    result = {"machine": info, **run(args.size, args.checkpoint, args.batch_sizes, args.rounds, args.variants,
                                     log=lambda line: print(line, file=sys.stderr))}
    import os

    result["machine"]["load_average_at_end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))
    print(markdown_table(["variant", "batch", "chunks/s", "vs torch fp32", "min cosine (probe)", "|Δp| (probe)",
                          "min cosine (interview)", "|Δp| (interview)"],
                         [[r["variant"], r["batch"], r["chunks_per_second"], f"{r['vs_torch_fp32']:.2f}×",
                           f"{r['min_cosine']:.5f}", f"{r['abs_diff_probability']:.1e}",
                           f"{r['interview_min_cosine']:.5f}", f"{r['interview_abs_diff_probability']:.1e}"]
                          for r in result["rows"]]))


if __name__ == "__main__":
    main()
