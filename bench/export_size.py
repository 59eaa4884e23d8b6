"""How large `moodstream export` is per hour of speech.

    python bench/export_size.py [--sessions 10] [--chunks 50]

A real Redis and scoring server; SESSIONS sessions of CHUNKS 7 s chunks of speech-like audio are
streamed through a tiny model with the paper's segment-vector width (80), then exported with the
real `moodstream export` command. Reported: the export's bytes (all three files) per hour of speech,
and as a share of the baseline of the same run: the same speech as 16 kHz PCM s16le, what keeping
audio would take.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import machine, markdown_table  # noqa: E402

CHUNK_SECONDS = 7.0


def run(sessions: int = 10, chunks: int = 50) -> dict:
    import torch

    from moodstream.model import ModelConfig, ScreeningModel
    from moodstream.server.app import BackgroundServer, ServerConfig
    from moodstream.compose.redis_process import redis_url_or_start
    from moodstream.v1 import moodstream_pb2 as pb
    from server_harness import chunk, end, header, make_chunks, stream, stub_for

    torch.manual_seed(0)
    model = ScreeningModel(ModelConfig.tiny(conv_channels=80))
    with tempfile.TemporaryDirectory(prefix="export-size-") as scratch, redis_url_or_start() as redis_server:
        config = ServerConfig(checkpoint="", redis_url=redis_server.url, port=0, allow_unauthenticated=True,
                              precision="fp32", max_batch=1)
        audio_bytes = 0
        with BackgroundServer(config, model) as server, stub_for(server.port) as stub:
            for index in range(sessions):
                pcm = make_chunks(chunks, seed=index, seconds=CHUNK_SECONDS)
                audio_bytes += sum(len(c) for c in pcm)
                requests = [header(f"size-{index}", f"p{index % 3}")] + [chunk(s, c) for s, c in enumerate(pcm)]
                stream(stub, requests + [end(chunks - 1)], [], timeout=600)
        out = Path(scratch) / "export"
        done = subprocess.run([sys.executable, "-P", "-m", "moodstream.compose.cli", "export", "--redis", redis_server.url,
                               str(out)], capture_output=True, text=True, timeout=600)
        if done.returncode:
            raise RuntimeError(done.stderr)
        files = {path.name: path.stat().st_size for path in out.iterdir()}
        manifest = json.loads((out / "export.json").read_text())
    hours = manifest["speech_seconds"] / 3600
    total = sum(files.values())
    return {"sessions": sessions, "chunks_per_session": chunks, "segment_vector_size": 80,
            "hours_of_speech": hours, "files_bytes": files, "export_bytes": total,
            "export_mb_per_hour": total / hours / 1e6, "audio_mb_per_hour": audio_bytes / hours / 1e6,
            "export_share_of_audio": total / audio_bytes,
            "bytes_per_segment": total / manifest["segments"], "machine": machine()}


def table(result: dict) -> str:
    return markdown_table(
        ["what", "MB per hour of speech", "share of the audio"],
        [["export (sessions + segments Parquet + export.json)", result["export_mb_per_hour"],
          result["export_share_of_audio"]],
         ["the same speech as 16 kHz PCM s16le (baseline)", result["audio_mb_per_hour"], 1.0]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10, help="sessions to stream (default: %(default)s)")
    parser.add_argument("--chunks", type=int, default=50, help="7 s chunks per session (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON too")
    args = parser.parse_args()
    result = run(args.sessions, args.chunks)
    print(table(result))
    print(f"{result['hours_of_speech']:.2f} h of speech in {result['sessions']} sessions; "
          f"{result['bytes_per_segment']:.0f} bytes per 7 s segment")
    if args.json:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
