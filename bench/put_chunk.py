"""One chunk per call: PutChunk (gRPC and gRPC-web) against Stream, on a real `moodstream server` and Redis.

    python bench/put_chunk.py [--chunks 20] [--rounds 3] [--out FILE]

A phone sends each 7 s chunk as it is cut and waits for its ack, so the
measure is the time per chunk of a stop-and-wait client, over --chunks
chunks of one session:

* baseline, in the same run: one `Stream` call, each chunk sent after the
  previous chunk's ack;
* `PutChunk` over gRPC, one call per chunk on one channel;
* `PutChunk` over gRPC-web on the server's own HTTP port (`--grpc-web-port`),
  one HTTP/1.1 POST per chunk on one keep-alive connection, as a browser's
  fetch sends it;
* the same POSTs without a token: each body is read, then refused
  UNAUTHENTICATED before any work, which leaves the cost of the HTTP round
  trip with this client (httpx, TCP_NODELAY) alone.

The variants take turns each round (bench/common.py interleaved_best); each
round uses new sessions, so every chunk is encoded and applied.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from moodstream.wire import bearer_metadata

sys.path.insert(0, str(Path(__file__).resolve().parent))

from clinic_api import stream_requests  # noqa: E402
from common import bench_main, interleaved_best, machine, markdown_table  # noqa: E402
from encoder import build_model  # noqa: E402
from loopback import Server, pcm_chunks  # noqa: E402


class WebServer(Server):
    """`moodstream server` with a tokens file and its gRPC-web port."""

    def __init__(self, checkpoint: Path, redis_url: str, tokens: Path) -> None:
        from moodstream.compose.redis_process import free_port

        self.port, self.web_port = free_port(), free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="moodstream-bench-server-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moodstream.compose.cli", "server", "--checkpoint", str(checkpoint), "--redis", redis_url,
             "--port", str(self.port), "--grpc-web-port", str(self.web_port), "--tokens", str(tokens),
             "--log-level", "warning"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_ready()


# Browsers send a request's headers and body without waiting on Nagle's algorithm; so does this client.
NO_DELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def header(pb, session: str):
    return pb.SessionHeader(session_id=session, participant_id="bench", device_id="bench", sample_rate=16000,
                            encoding=pb.AUDIO_ENCODING_PCM_S16LE)


def chunk(pb, seq: int, pcm: bytes):
    return pb.Chunk(seq=seq, start_seconds=7.0 * seq, pcm=pcm)


def run(chunk_count: int = 20, rounds: int = 3, log=print) -> dict:
    import grpc
    import httpx
    from sonora import protocol

    from moodstream.server.auth import create_token
    from moodstream.compose.redis_process import RedisProcess
    from moodstream.v1 import moodstream_pb2 as pb
    from moodstream.v1 import moodstream_pb2_grpc as pb_grpc

    model = build_model("tiny")
    chunks = pcm_chunks(chunk_count)
    names = iter(range(10**6))
    with tempfile.TemporaryDirectory() as tmp, \
            RedisProcess(appendonly=True, appendfsync="everysec").start() as redis_server:
        checkpoint = model.save_pretrained(Path(tmp) / "checkpoint")
        del model
        tokens_path = Path(tmp) / "tokens.json"
        token = create_token(tokens_path, "bench", ["*"], ["*"])
        metadata = bearer_metadata(token)
        server = WebServer(checkpoint, redis_server.url, tokens_path)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel, \
                    httpx.Client(base_url=f"http://127.0.0.1:{server.web_port}", timeout=60,
                                 transport=httpx.HTTPTransport(socket_options=NO_DELAY)) as web:
                stub = pb_grpc.ScreeningStub(channel)
                acked: dict[str, int] = {}

                def stream_stop_and_wait():
                    acks = threading.Semaphore(0)
                    requests = stream_requests(pb, f"stream-{next(names)}", chunks)

                    def paced():
                        yield next(requests)
                        for request in requests:
                            yield request
                            if request.WhichOneof("message") == "chunk":
                                acks.acquire()

                    count = 0
                    for response in stub.Stream(paced(), metadata=metadata, timeout=600):
                        if response.WhichOneof("message") == "ack":
                            count += 1
                            acks.release()
                    acked["stream"] = count

                def put_chunk_grpc():
                    session = header(pb, f"grpc-{next(names)}")
                    replies = [stub.PutChunk(pb.PutChunkRequest(header=session, chunk=chunk(pb, seq, pcm)),
                                             metadata=metadata, timeout=60) for seq, pcm in enumerate(chunks)]
                    stub.PutChunk(pb.PutChunkRequest(header=session, end=pb.End(last_seq=len(chunks) - 1)),
                                  metadata=metadata, timeout=60)
                    acked["put_chunk_grpc"] = sum(1 for r in replies if r.HasField("ack"))

                def post(request) -> bytes:
                    response = web.post("/moodstream.v1.Screening/PutChunk",
                                        content=protocol.wrap_message(False, False, request.SerializeToString()),
                                        headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1",
                                                 **dict(bearer_metadata(token))})
                    response.raise_for_status()
                    assert b"grpc-status: 0" in response.content, response.content[-200:]
                    return response.content

                def put_chunk_grpc_web():
                    session = header(pb, f"web-{next(names)}")
                    bodies = [post(pb.PutChunkRequest(header=session, chunk=chunk(pb, seq, pcm)))
                              for seq, pcm in enumerate(chunks)]
                    post(pb.PutChunkRequest(header=session, end=pb.End(last_seq=len(chunks) - 1)))
                    acked["put_chunk_grpc_web"] = len(bodies)

                def refused_grpc_web():
                    # The HTTP round trip alone: the same body, refused for its missing token once read.
                    for seq, pcm in enumerate(chunks):
                        request = pb.PutChunkRequest(header=header(pb, "refused"), chunk=chunk(pb, seq, pcm))
                        response = web.post("/moodstream.v1.Screening/PutChunk",
                                            content=protocol.wrap_message(False, False, request.SerializeToString()),
                                            headers={"content-type": "application/grpc-web+proto"})
                        assert response.headers["grpc-status"] == "16", response.headers
                    acked["refused_grpc_web"] = len(chunks)

                log(f"{rounds} rounds of {chunk_count} chunks per variant ...")
                best = interleaved_best({"stream": stream_stop_and_wait, "put_chunk_grpc": put_chunk_grpc,
                                         "put_chunk_grpc_web": put_chunk_grpc_web,
                                         "refused_grpc_web": refused_grpc_web}, rounds=rounds)
        finally:
            server.close()
    assert acked == {name: chunk_count for name in best}, acked
    per_chunk_ms = {name: seconds / chunk_count * 1e3 for name, seconds in best.items()}
    return {"machine": machine(), "chunks": chunk_count, "rounds": rounds, "per_chunk_ms": per_chunk_ms,
            "over_stream": {name: ms / per_chunk_ms["stream"] for name, ms in per_chunk_ms.items()}}


def report(results: dict) -> str:
    labels = {"stream": "Stream, stop-and-wait (baseline)", "put_chunk_grpc": "PutChunk over gRPC",
              "put_chunk_grpc_web": "PutChunk over gRPC-web (HTTP/1.1)",
              "refused_grpc_web": "the same POSTs over gRPC-web refused without a token (HTTP round trip only)"}
    rows = [[label, f"{results['per_chunk_ms'][name]:.1f} ms", f"{results['over_stream'][name]:.2f}x"]
            for name, label in labels.items()]
    return markdown_table([f"{results['chunks']} chunks of 7 s, one session, each sent after the previous ack",
                           "time per chunk (best round)", "ratio to Stream"], rows)


def main() -> None:
    bench_main(__doc__, run, report, {"chunks": 20, "rounds": 3})


if __name__ == "__main__":
    main()
