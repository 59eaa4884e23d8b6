"""`moodstream server`, `moodstream token` and `moodstream forget` (heavy imports happen inside the handlers)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from moodstream.help_format import HelpFormatter


class JsonLogFormatter(logging.Formatter):
    """One JSON object per log line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, json_logs: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter() if json_logs else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def add_parser(subparsers) -> None:
    server = subparsers.add_parser(
        "server", help="run the gRPC scoring server",
        description="Run the moodstream scoring server: it encodes each chunk, updates the session score "
                    "incrementally and keeps all session state in Redis, so replicas are interchangeable. "
                    "Scores are a screening aid, not a diagnosis.",
        formatter_class=HelpFormatter)
    server.add_argument("--checkpoint", required=True, help="checkpoint folder (config.json + safetensors)")
    server.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                        help="Redis URL (env REDIS_URL)")
    server.add_argument("--redis-cluster", action="store_true", help="the URL is a Redis Cluster node")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all)")
    server.add_argument("--port", type=int, default=50051, help="port to listen on (0 = any free port)")
    server.add_argument("--tokens", help="tokens file (see `moodstream token create`)")
    server.add_argument("--allow-unauthenticated", action="store_true",
                        help="accept calls without a token (local testing only)")
    server.add_argument("--tls-cert", help="server certificate (PEM); enables TLS")
    server.add_argument("--tls-key", help="server private key (PEM)")
    server.add_argument("--tls-client-ca", help="CA (PEM) that client certificates must chain to (mutual TLS)")
    server.add_argument("--max-batch", type=int, default=None,
                        help="most chunks per encoder forward pass (default: measured at start-up with the "
                             "precision, from 1, 2, 4 on a CPU and 1, 4, 8, 16 on a GPU)")
    server.add_argument("--max-wait-ms", type=float, default=5.0, help="longest a chunk waits for a batch")
    server.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16", "int8", "ort-fp32", "ort-int8"),
                        default="auto",
                        help="encoder path: auto times fp32, bf16 (GPU or bf16-capable CPU), fp16 (GPU without "
                             "bf16), int8 (CPU: int8 Linear layers, bf16 front end) and, where ONNX Runtime is "
                             "installed, ort-fp32 and ort-int8 (CPU) at each batch size and keeps the fastest "
                             "within the accuracy bound (docs/performance.md)")
    server.add_argument("--tuning-cache", default=None,
                        help="file that keeps the measured precision and batch limit per model and machine, so a "
                             "restart skips the measuring; '' measures at every start (default: "
                             "encoder-tuning.json in $MOODSTREAM_CACHE_DIR, else ~/.cache/moodstream)")
    server.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    server.add_argument("--ttl-days", type=float, default=30.0, help="keep session data this long (0 = forever)")
    server.add_argument("--store-audio", action="store_true",
                        help="also keep each chunk's raw audio in Redis (off by default: privacy)")
    server.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics here (0 = off)")
    server.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    server.add_argument("--json-logs", action="store_true", help="structured JSON log lines")
    server.set_defaults(handler=run_server)

    token = subparsers.add_parser(
        "token", help="create access tokens", description="Manage the server's tokens file (hashes only).")
    actions = token.add_subparsers(dest="token_command", required=True)
    create = actions.add_parser(
        "create", help="add a token and print it once",
        description="Add a token to the tokens file and print it (only its SHA-256 is stored).")
    create.add_argument("--tokens", required=True, help="tokens file to create or extend")
    create.add_argument("--name", required=True, help="who or what holds the token (e.g. kiosk-3)")
    create.add_argument("--stream", default="", help="comma-separated participants it may stream for (* = all)")
    create.add_argument("--read", default="", help="comma-separated participants whose scores it may read (* = all)")
    create.set_defaults(handler=run_token_create)

    forget = subparsers.add_parser(
        "forget", help="delete everything stored about one participant (right to erasure)",
        description="Delete every key the scoring servers keep in Redis about PARTICIPANT, for every model "
                    "version: session records and scorer states, segment vectors, stored audio (only kept "
                    "with `moodstream server --store-audio`), per-session and per-participant score streams, "
                    "and the keys that tie the participant's session ids to them. Scores already delivered "
                    "to subscribers, and server logs, are outside Redis and not touched. Asks for "
                    "confirmation unless --yes; prints how many keys were deleted. Cannot be undone.")
    forget.add_argument("participant", metavar="PARTICIPANT", help="the participant id, as the agent sent it")
    forget.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                        help="Redis URL of the session store (env REDIS_URL; default %(default)s)")
    forget.add_argument("--redis-cluster", action="store_true",
                        help="the URL is a Redis Cluster node: every master is searched")
    forget.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    forget.set_defaults(handler=run_forget)


def _split(values: str) -> list[str]:
    return [value.strip() for value in values.split(",") if value.strip()]


def run_token_create(args) -> int:
    from moodstream.server.auth import create_token

    stream, read = _split(args.stream), _split(args.read)
    if not stream and not read:
        raise ValueError("give --stream and/or --read: a token with no scope could do nothing")
    print(create_token(args.tokens, args.name, stream, read))
    print(f"added token {args.name!r} to {args.tokens}; it is shown only now", file=sys.stderr)
    return 0


def run_server(args) -> int:
    import asyncio

    configure_logging(args.log_level, args.json_logs)
    from moodstream.server.app import ServerConfig, serve_forever
    from moodstream.server.encoder import default_tuning_cache

    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=args.host)
    if args.ttl_days < 0:
        raise ValueError("--ttl-days must be >= 0")
    config = ServerConfig(
        checkpoint=args.checkpoint, redis_url=args.redis, redis_cluster=args.redis_cluster, host=args.host,
        port=args.port, tokens_file=args.tokens, allow_unauthenticated=args.allow_unauthenticated,
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, precision=args.precision, device=args.device,
        tuning_cache=default_tuning_cache() if args.tuning_cache is None else args.tuning_cache,
        ttl_seconds=int(args.ttl_days * 86400), store_audio=args.store_audio)

    def announce(server) -> None:
        # One machine-readable line, so scripts can start the server on port 0.
        print(json.dumps({"listening": f"{args.host}:{server.port}", "model_version": server.model_version}),
              flush=True)

    asyncio.run(serve_forever(config, on_started=announce))
    return 0


def redact_url(url: str) -> str:
    """The URL without its password, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def run_forget(args) -> int:
    import asyncio
    import re

    participant = args.participant
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", participant):
        raise ValueError(f"{participant!r} is not a participant id (1-64 characters from A-Z a-z 0-9 _ . -)")
    where = redact_url(args.redis)
    if not args.yes:
        sys.stderr.write(f"Delete everything stored about participant {participant!r} in {where}? "
                         "This cannot be undone. Type 'yes' to confirm: ")
        sys.stderr.flush()
        answer = sys.stdin.readline() if sys.stdin is not None else ""
        if answer.strip().lower() not in ("y", "yes"):
            print("moodstream forget: not confirmed; nothing was deleted", file=sys.stderr)
            return 1
    deleted = asyncio.run(_forget(args.redis, args.redis_cluster, participant, where))
    print(f"deleted {deleted} key(s) of participant {participant!r} from {where}")
    return 0


async def _forget(url: str, cluster: bool, participant: str, where: str) -> int:
    import redis.exceptions

    from moodstream.server.store import SessionStore, connect

    failures = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError)
    try:
        client = connect(url, cluster=cluster)
    except (*failures, ValueError) as error:
        raise ValueError(f"cannot use Redis URL {where}: {error}") from None
    try:
        try:
            await client.ping()
            clustered = not cluster and (await client.info("cluster")).get("cluster_enabled") in (1, "1")
        except failures as error:
            raise ValueError(f"cannot reach Redis at {where}: {error}") from None
        if clustered:
            # A plain client would search one node only and report 0 keys for data held elsewhere.
            raise ValueError(f"{where} is a Redis Cluster node: add --redis-cluster")
        # forget_participant covers every model version; the store's own version is not used by it.
        store = SessionStore(client, model_version="forget")
        try:
            return await store.forget_participant(participant)
        except failures as error:
            raise ValueError(f"Redis at {where} failed while deleting ({error}); run the command again") from None
    finally:
        await client.aclose()
