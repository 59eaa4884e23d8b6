"""`moodstream model`: create, inspect and export checkpoint folders (torch is imported only when one runs)."""
from __future__ import annotations

import json
from pathlib import Path

from moodstream import SCREENING_NOTICE
from moodstream.user_files import input_folder, output_file_anywhere, output_folder


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "model", help="create or inspect a checkpoint folder",
        description="Create or inspect moodstream checkpoint folders (config.json + safetensors weights).")
    actions = parser.add_subparsers(dest="model_command", required=True)
    info = actions.add_parser("info", help="print a checkpoint's config, parameter counts and model_version")
    info.add_argument("checkpoint", type=input_folder, help="checkpoint folder")
    info.set_defaults(handler=run_model_info)
    init = actions.add_parser(
        "init", help="write a randomly initialised checkpoint (scores mean nothing until trained)",
        description="Write a randomly initialised checkpoint. --tiny builds the toy-size model used by the "
                    "tests and the demo; otherwise the backbone is loaded from --backbone (hub id or folder).")
    init.add_argument("output", type=output_folder, help="folder to write (refused if it holds files, unless --force)")
    init.add_argument("--tiny", action="store_true", help="toy-size wav2vec2 (fast, for tests and demos)")
    init.add_argument("--backbone", default="facebook/wav2vec2-base",
                      help="Hugging Face id or local folder of a pretrained encoder (default: %(default)s)")
    init.add_argument("--seed", type=int, default=0, help="random seed for the heads (default: %(default)s)")
    init.add_argument("--force", action="store_true", help="write into OUTPUT even if it holds files already")
    init.set_defaults(handler=run_model_init)
    export = actions.add_parser(
        "export-onnx", help="write a checkpoint's encoder side as an ONNX graph (for ONNX Runtime, Triton)",
        description="Write the encoder side (waveforms [batch, samples] -> segment vectors [batch, D], dynamic "
                    "batch and length, every row real audio of one length) as an ONNX graph: what the server's "
                    "ort-fp32 path runs, and what Triton's ONNX Runtime or TensorRT backends load "
                    "(docs/performance.md). Needs the onnx extra.")
    export.add_argument("checkpoint", type=input_folder, help="checkpoint folder")
    export.add_argument("output", type=output_file_anywhere, help="the .onnx file to write")
    export.add_argument("--int8", action="store_true",
                        help="also write OUTPUT with .int8.onnx: int8 MatMul weights (the server's ort-int8 path)")
    export.set_defaults(handler=run_model_export_onnx)


def run_model_export_onnx(args) -> int:
    from moodstream.model import ScreeningModel
    from moodstream.model.onnx_export import export_onnx, onnxruntime_available, quantize_matmuls

    if not onnxruntime_available():
        raise ValueError("export-onnx needs ONNX Runtime and onnxscript: pip install 'moodstream[onnx]'")
    model = ScreeningModel.from_pretrained(args.checkpoint).eval()
    written = [export_onnx(model, args.output)]
    if args.int8:
        written.append(quantize_matmuls(written[0], Path(args.output).with_suffix(".int8.onnx")))
    print(f"wrote {', '.join(map(str, written))} (model_version {model.model_version}; input 'waveforms' "
          f"[batch, samples] float32 at {model.config.sample_rate} Hz, output 'segment_vectors' "
          f"[batch, {model.config.segment_vector_size}])")
    return 0


def run_model_info(args) -> int:
    from moodstream.model import ScreeningModel

    model = ScreeningModel.from_pretrained(args.checkpoint)
    print(json.dumps({
        "model_version": model.model_version,
        "parameters": model.parameter_counts(),
        "config": {k: v for k, v in model.config.to_dict().items() if k != "backbone_config"},
        "notice": SCREENING_NOTICE,
    }, indent=2))
    return 0


def run_model_init(args) -> int:
    output = Path(args.output).expanduser()
    if not args.force and output.is_dir() and any(output.iterdir()):
        # A trained checkpoint there would be replaced by random weights without a word.
        raise ValueError(f"{args.output} is not empty: name a new folder, or pass --force to write into it")
    import torch

    from moodstream.model import ModelConfig, ScreeningModel

    torch.manual_seed(args.seed)
    if args.tiny:
        model = ScreeningModel(ModelConfig.tiny(notes={"trained": False}))
    else:
        model = ScreeningModel(ModelConfig(backbone=args.backbone, notes={"trained": False}),
                               load_pretrained_backbone=True)
    folder = model.save_pretrained(args.output)
    print(f"wrote untrained checkpoint {folder} (model_version {model.model_version}); "
          "its scores mean nothing until it is trained")
    return 0
