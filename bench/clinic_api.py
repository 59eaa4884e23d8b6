"""The clinic API's bounds, measured on a real `moodstream server` process and a real Redis.

    python bench/clinic_api.py [--participants 50] [--sessions-each 20] [--out FILE]

1. Backlog: an agent back from an outage sends 41 chunks at once, more than
   the 32 a stream buffers. The server must pace it (stop reading) and ack
   all 41. Baseline in the same run: the same 41 chunks sent stop-and-wait
   (each after the previous ack), the slowest correct client.
2. Calls without a request message: 500 GetScore / Subscribe / ListSessions /
   Health.Check calls half-closed with no message and no deadline. How many
   ended, how fast, and the server's RSS before and after.
3. ListSessions: participants x sessions stored through the server's own
   store; one 100-session page for a token scoped to one participant and
   for a token reading everyone, against GetScore of one session (the
   baseline: one owner lookup and one hash read).
4. Token revocation: seconds from `revoke_token` to UNAUTHENTICATED on a
   new call and on an open Subscribe, over 5 rounds.
"""
from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from moodstream.wire import bearer_metadata

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import bench_main, machine, markdown_table, rss_mb  # noqa: E402
from encoder import build_model  # noqa: E402
from loopback import Server, pcm_chunks  # noqa: E402

BACKLOG = 41
ZERO_MESSAGE_CALLS = 500


class TokenServer(Server):
    """`moodstream server` with a tokens file (the loopback bench runs without authentication)."""

    def __init__(self, checkpoint: Path, redis_url: str, tokens: Path) -> None:
        from moodstream.compose.redis_process import free_port

        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="moodstream-bench-server-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moodstream.compose.cli", "server", "--checkpoint", str(checkpoint), "--redis", redis_url,
             "--port", str(self.port), "--tokens", str(tokens), "--log-level", "warning"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_ready()


def stream_requests(pb, session: str, chunks: list[bytes]):
    yield pb.StreamRequest(header=pb.SessionHeader(session_id=session, participant_id="bench", device_id="bench",
                                                   sample_rate=16000, encoding=pb.AUDIO_ENCODING_PCM_S16LE))
    for seq, pcm in enumerate(chunks):
        yield pb.StreamRequest(chunk=pb.Chunk(seq=seq, start_seconds=7.0 * seq, pcm=pcm))
    yield pb.StreamRequest(end=pb.End(last_seq=len(chunks) - 1))


def backlog(stub, pb, metadata, chunks: list[bytes], round_index: int) -> dict:
    started = time.perf_counter()
    responses = list(stub.Stream(stream_requests(pb, f"backlog-{round_index}", chunks), metadata=metadata,
                                 timeout=600))
    at_once = time.perf_counter() - started
    acked = sum(1 for r in responses if r.WhichOneof("message") == "ack")

    acks = threading.Semaphore(0)
    requests = stream_requests(pb, f"stop-and-wait-{round_index}", chunks)

    def paced():
        yield next(requests)  # header
        for request in requests:
            yield request
            if request.WhichOneof("message") == "chunk":
                acks.acquire()

    started = time.perf_counter()
    stop_and_wait_acked = 0
    for response in stub.Stream(paced(), metadata=metadata, timeout=600):
        if response.WhichOneof("message") == "ack":
            stop_and_wait_acked += 1
            acks.release()
    stop_and_wait = time.perf_counter() - started
    return {"acked": acked, "seconds": at_once, "stop_and_wait_acked": stop_and_wait_acked,
            "stop_and_wait_seconds": stop_and_wait}


def zero_message_calls(port: int, pid: int) -> dict:
    import grpc

    methods = ["/moodstream.v1.Screening/GetScore", "/moodstream.v1.Screening/Subscribe",
               "/moodstream.v1.Screening/ListSessions", "/grpc.health.v1.Health/Check"]
    rss_before = rss_mb(pid)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        started = time.perf_counter()
        calls = [channel.stream_unary(methods[index % len(methods)]).future(iter(()))  # no message, no deadline
                 for index in range(ZERO_MESSAGE_CALLS)]
        codes: dict[str, int] = {}
        for call in calls:
            try:
                call.result(timeout=60)
                code = "OK"
            except grpc.RpcError as error:
                code = error.code().name
            codes[code] = codes.get(code, 0) + 1
        seconds = time.perf_counter() - started
    time.sleep(0.5)
    return {"calls": ZERO_MESSAGE_CALLS, "ended": sum(codes.values()), "codes": codes, "seconds": seconds,
            "server_rss_mb_before": rss_before, "server_rss_mb_after": rss_mb(pid)}


async def seed_sessions(redis_url: str, model_version: str, participants: int, each: int) -> None:
    from moodstream.server.redis_connection import connect
    from moodstream.server.store import SessionStore

    client = connect(redis_url)
    store = SessionStore(client, model_version=model_version)
    vector, state = b"\0" * 64, b"bench-state"

    async def one(participant: str, session: str) -> None:
        await store.claim_session(session, participant, "bench")
        await store.apply_segment(session, participant, 0, vector, state,
                                  {"probability": 0.5, "above_threshold": True, "threshold": 0.5,
                                   "speech_seconds": 7.0}, None)

    try:
        for p in range(participants):
            await asyncio.gather(*(one(f"p{p:03d}", f"p{p:03d}-s{s:03d}") for s in range(each)))
    finally:
        await client.aclose()


def timed_best(call, rounds: int = 15) -> float:
    call()
    return min(_timed(call) for _ in range(rounds))


def _timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def listing(stub, pb, tokens: dict) -> dict:
    reader, admin = [bearer_metadata(tokens[name]) for name in ("reader-p007", "admin")]
    get_score = timed_best(lambda: stub.GetScore(pb.GetScoreRequest(session_id="p007-s000"), metadata=admin))
    one = timed_best(lambda: stub.ListSessions(pb.ListSessionsRequest(page_size=100), metadata=reader))
    everyone = timed_best(lambda: stub.ListSessions(pb.ListSessionsRequest(page_size=100), metadata=admin))
    listed = len(stub.ListSessions(pb.ListSessionsRequest(page_size=100), metadata=reader).sessions)
    return {"get_score_ms": get_score * 1e3, "one_participant_page_ms": one * 1e3,
            "one_participant_sessions": listed, "everyone_page_ms": everyone * 1e3,
            "one_participant_over_get_score": one / get_score, "everyone_over_get_score": everyone / get_score}


def revocation(port: int, pb, pb_grpc, tokens_path: Path, rounds: int = 5) -> dict:
    import grpc

    from moodstream.server.auth import create_token, revoke_token

    new_call, open_call = [], []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ScreeningStub(channel)
        for index in range(rounds):
            name = f"leaked-{index}"
            metadata = bearer_metadata(create_token(tokens_path, name, [], ["*"]))
            while True:  # until the server has it
                try:
                    stub.ListSessions(pb.ListSessionsRequest(page_size=1), metadata=metadata, timeout=5)
                    break
                except grpc.RpcError:
                    time.sleep(0.05)
            subscription = stub.Subscribe(pb.SubscribeRequest(participant_id="nobody"), metadata=metadata,
                                          timeout=60)
            ended = {}

            def drain():
                try:
                    for _ in subscription:
                        pass
                except grpc.RpcError as error:
                    ended["at"], ended["code"] = time.monotonic(), error.code().name

            reader = threading.Thread(target=drain)
            reader.start()
            time.sleep(0.3)
            revoked = time.monotonic()
            revoke_token(tokens_path, name)
            while True:
                try:
                    stub.ListSessions(pb.ListSessionsRequest(page_size=1), metadata=metadata, timeout=5)
                    time.sleep(0.02)
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
                    new_call.append(time.monotonic() - revoked)
                    break
            reader.join(30)
            assert ended.get("code") == "UNAUTHENTICATED", ended
            open_call.append(ended["at"] - revoked)
    return {"rounds": rounds, "new_call_mean_s": statistics.mean(new_call), "new_call_max_s": max(new_call),
            "open_call_mean_s": statistics.mean(open_call), "open_call_max_s": max(open_call)}


def run(participants: int = 50, sessions_each: int = 20, log=print) -> dict:
    import grpc

    from moodstream.server.auth import create_token
    from moodstream.compose.redis_process import RedisProcess
    from moodstream.v1 import moodstream_pb2 as pb
    from moodstream.v1 import moodstream_pb2_grpc as pb_grpc

    model = build_model("tiny")
    chunks = pcm_chunks(BACKLOG)
    with tempfile.TemporaryDirectory() as tmp, \
            RedisProcess(appendonly=True, appendfsync="everysec").start() as redis_server:
        checkpoint = model.save_pretrained(Path(tmp) / "checkpoint")
        model_version = model.model_version
        del model
        tokens_path = Path(tmp) / "tokens.json"
        tokens = {"admin": create_token(tokens_path, "admin", ["*"], ["*"]),
                  "reader-p007": create_token(tokens_path, "reader-p007", [], ["p007"])}
        server = TokenServer(checkpoint, redis_server.url, tokens_path)
        try:
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = pb_grpc.ScreeningStub(channel)
                admin = bearer_metadata(tokens["admin"])
                log("backlog ...")
                rounds = [backlog(stub, pb, admin, chunks, index) for index in range(3)]
                best = min(rounds, key=lambda r: r["seconds"])
                best["stop_and_wait_seconds"] = min(r["stop_and_wait_seconds"] for r in rounds)
                best["all_acked_every_round"] = all(r["acked"] == r["stop_and_wait_acked"] == BACKLOG
                                                    for r in rounds)
                best["speedup_vs_stop_and_wait"] = best["stop_and_wait_seconds"] / best["seconds"]
                log("calls without a request message ...")
                zero = zero_message_calls(server.port, server.process.pid)
                log(f"seeding {participants} x {sessions_each} sessions ...")
                asyncio.run(seed_sessions(redis_server.url, model_version, participants, sessions_each))
                log("listing ...")
                listed = listing(stub, pb, tokens)
                log("revocation ...")
                revoked = revocation(server.port, pb, pb_grpc, tokens_path)
        finally:
            server.close()
    return {"machine": machine(), "backlog": {"chunks": BACKLOG, **best}, "zero_message_calls": zero,
            "list_sessions": {"participants": participants, "sessions_each": sessions_each, **listed},
            "revocation": revoked}


def report(results: dict) -> str:
    b, z, ls, r = (results[k] for k in ("backlog", "zero_message_calls", "list_sessions", "revocation"))
    rows = [
        [f"backlog of {b['chunks']} chunks sent at once", f"{b['acked']} acked in {b['seconds']:.2f} s",
         f"stop-and-wait: {b['stop_and_wait_seconds']:.2f} s",
         f"{1 / b['speedup_vs_stop_and_wait']:.2f}x the stop-and-wait time"],
        [f"{z['calls']} calls without a request message", f"{z['ended']} ended in {z['seconds']:.2f} s "
         f"({', '.join(f'{k} {v}' for k, v in z['codes'].items())})",
         f"server RSS {z['server_rss_mb_before']:.0f} MB before", f"{z['server_rss_mb_after']:.0f} MB after"],
        [f"ListSessions page, one participant ({ls['one_participant_sessions']} sessions)",
         f"{ls['one_participant_page_ms']:.1f} ms", f"GetScore: {ls['get_score_ms']:.1f} ms",
         f"{ls['one_participant_over_get_score']:.1f}x"],
        [f"ListSessions page of 100, token reading all {ls['participants'] * ls['sessions_each']} sessions",
         f"{ls['everyone_page_ms']:.1f} ms", f"GetScore: {ls['get_score_ms']:.1f} ms",
         f"{ls['everyone_over_get_score']:.1f}x"],
        [f"revoked token refused ({r['rounds']} rounds)", f"mean {r['new_call_mean_s']:.2f} s, max "
         f"{r['new_call_max_s']:.2f} s", "bound 1 s", ""],
        ["open call of a revoked token ended", f"mean {r['open_call_mean_s']:.2f} s, max {r['open_call_max_s']:.2f} s",
         "bound 2 s", ""],
    ]
    return markdown_table(["measure", "result", "baseline / bound", "ratio"], rows)


def main() -> None:
    bench_main(__doc__, run, report, {"participants": 50, "sessions-each": 20})


if __name__ == "__main__":
    main()
