"""`moodstream server`, `moodstream token`, `moodstream forget` and `moodstream export` (heavy imports
happen inside the handlers)."""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import re
import sys
from pathlib import Path

from moodstream.help_format import HelpFormatter, port_number
from moodstream.user_files import (cache_file, input_folder, output_folder, output_file, text_file,
                                   text_file_to_extend)
from moodstream.server.enrolment import DEFAULT_ENROL_MINUTES
from moodstream.server.state_cache import DEFAULT_STATE_CACHE_MB


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
    which = server.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", type=input_folder, help="one checkpoint folder (config.json + safetensors)")
    which.add_argument("--models", metavar="DIR", type=input_folder,
                       help="a model folder: one checkpoint folder per model version, and a file DIR/current "
                            "naming the folder new sessions get (needed when there are several). The server "
                            "checks DIR every 2 s: new folders load and a changed current takes effect without "
                            "a restart; a session stays on the version it started under (docs/models.md)")
    add_redis_options(server, cluster_help="the URL is a Redis Cluster node")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all)")
    server.add_argument("--port", type=port_number, default=50051, help="port to listen on (0 = any free port)")
    server.add_argument("--tokens", type=text_file, help="tokens file (see `moodstream token create`)")
    server.add_argument("--allow-unauthenticated", action="store_true",
                        help="accept calls without a token (local testing only)")
    server.add_argument("--tls-cert", type=text_file, help="server certificate (PEM); enables TLS")
    server.add_argument("--tls-key", type=text_file, help="server private key (PEM)")
    server.add_argument("--tls-client-ca", type=text_file, help="CA (PEM) that client certificates must chain to (mutual TLS)")
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
    server.add_argument("--tuning-cache", default=None, type=cache_file,
                        help="file that keeps the measured precision and batch limit per model and machine, so a "
                             "restart skips the measuring; '' measures at every start (default: "
                             "encoder-tuning.json in $MOODSTREAM_CACHE_DIR, else ~/.cache/moodstream)")
    server.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    server.add_argument("--ttl-days", type=float, default=30.0, help="keep session data this long (0 = forever)")
    server.add_argument("--store-audio", action="store_true",
                        help="also keep each chunk's raw audio in Redis (off by default: privacy)")
    server.add_argument("--metrics-port", type=port_number, default=0,
                        help="serve Prometheus metrics on this port of --host (0 = off)")
    server.add_argument("--grpc-web-port", type=port_number, default=None,
                        help="also serve gRPC-web on this port of --host, with the same TLS files, so that "
                             "browsers can call PutChunk, GetScore, ListSessions and GetModelInfo (off by default; "
                             "0 = any free port)")
    server.add_argument("--grpc-web-origin", action="append", default=None, metavar="ORIGIN",
                        help="an origin (scheme://host[:port]) whose pages may call the gRPC-web port, e.g. the "
                             "dashboard's; repeat for several (default: any origin; calls still need a token)")
    server.add_argument("--state-cache-mb", type=megabytes, default=DEFAULT_STATE_CACHE_MB,
                        help="memory for scorer states this server restored or wrote, least recently used "
                             "dropped first (0 = off). A session's next call (PutChunk, a reconnect) then "
                             "skips reading its rows from Redis and rebuilding its state; an entry is used only "
                             "while Redis still holds its exact head, so other replicas stay safe "
                             "(docs/scorer-state.md)")
    server.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                        help="least severe log messages to print (stderr)")
    server.add_argument("--json-logs", action="store_true", help="structured JSON log lines")
    server.set_defaults(handler=run_server)

    token = subparsers.add_parser(
        "token", help="create, list and revoke access tokens",
        description="Manage the server's tokens file (it keeps only SHA-256 hashes). Running servers reload "
                    "the file within 1 s of a change, without a restart: a new token works and a revoked one "
                    "is refused, and calls still open with a revoked token end UNAUTHENTICATED.",
        formatter_class=HelpFormatter)
    actions = token.add_subparsers(dest="token_command", required=True)
    create = actions.add_parser(
        "create", help="add a token and print it once",
        description="Add a token to the tokens file and print it (only its SHA-256 is stored).",
        formatter_class=HelpFormatter)
    create.add_argument("--tokens", required=True, type=text_file_to_extend, help="tokens file to create or extend")
    create.add_argument("--name", required=True, help="who or what holds the token (e.g. kiosk-3); unique per file")
    create.add_argument("--stream", default="", help="comma-separated participants it may stream for (* = all)")
    create.add_argument("--read", default="", help="comma-separated participants whose scores it may read (* = all)")
    create.add_argument("--record-page", metavar="URL",
                        help="the dashboard's record page (e.g. https://clinic.example.org/record): also print the "
                             "participant's enrolment link and its QR code; the link holds a single-use code that "
                             "the page trades for the token once, never the token (needs --stream for one "
                             "participant)")
    create.add_argument("--enrol-minutes", type=_minutes, metavar="MINUTES",
                        help=f"with --record-page: how long the link's code can be used (default: "
                             f"{DEFAULT_ENROL_MINUTES}, a day, for a link sent by message; pass e.g. 15 for a QR "
                             "code shown at the visit)")
    create.add_argument("--qr", metavar="FILE", type=output_file,
                        help="with --record-page: also save the QR code as FILE (.svg or .png) to print or show")
    create.set_defaults(handler=run_token_create)
    listing = actions.add_parser(
        "list", help="show each token's name and scope",
        description="Show the name and scope of every token in the file (the tokens themselves are not stored).",
        formatter_class=HelpFormatter)
    listing.add_argument("--tokens", required=True, type=text_file, help="tokens file")
    listing.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    listing.set_defaults(handler=run_token_list)
    revoke = actions.add_parser(
        "revoke", help="remove a token; running servers refuse it within 1 s",
        description="Remove the token NAME from the tokens file. Servers reading the file refuse it within "
                    "1 s and end its open calls with UNAUTHENTICATED; no restart is needed.",
        formatter_class=HelpFormatter)
    revoke.add_argument("name", metavar="NAME", help="the token's --name")
    revoke.add_argument("--tokens", required=True, type=text_file, help="tokens file")
    revoke.set_defaults(handler=run_token_revoke)

    forget = subparsers.add_parser(
        "forget", help="delete everything stored about one participant (right to erasure)",
        description="Delete every key the scoring servers keep in Redis about PARTICIPANT, for every model "
                    "version: session records and scorer states, segment vectors, stored audio (only kept "
                    "with `moodstream server --store-audio`), per-session and per-participant score streams, "
                    "and the keys that tie the participant's session ids to them. Scores already delivered "
                    "to subscribers, and server logs, are outside Redis and not touched. Asks for "
                    "confirmation unless --yes; prints how many keys were deleted. Cannot be undone.")
    forget.add_argument("participant", metavar="PARTICIPANT", help="the participant id, as the agent sent it")
    add_redis_options(forget, cluster_help="the URL is a Redis Cluster node: every master is searched")
    forget.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    forget.set_defaults(handler=run_forget)

    export = subparsers.add_parser(
        "export", help="write every session's segment vectors out of Redis, for retraining",
        description="Write, for each session in Redis (every model version), its segment vectors, seqs, "
                    "speech seconds, timestamps, device and model version into the new folder OUT as Parquet "
                    "(sessions.parquet, segments.parquet, export.json; README \"Retraining from the field\"). "
                    "No audio is exported. Export before the data's TTL (30 days by default) expires. Redis is "
                    "only read. The vectors and scores are a screening aid's, not diagnoses.",
        formatter_class=HelpFormatter)
    export.add_argument("out", metavar="OUT", type=output_folder, help="folder to create (must not exist)")
    add_redis_options(export, cluster_help="the URL is a Redis Cluster node: every master is read")
    export.add_argument("--participant", action="append", default=None, metavar="P",
                        help="only this participant's sessions; repeat for several (default: everyone)")
    export.add_argument("--since", default=None, metavar="WHEN",
                        help="only sessions scored at or after WHEN: an ISO 8601 date or date-time (UTC unless "
                             "it names an offset) or Unix seconds (default: every session)")
    export.add_argument("--model-version", action="append", default=None, metavar="V",
                        help="only sessions that ran under model version V (GetModelInfo's model_version, or "
                             "`moodstream model info`); repeat for several (default: every version)")
    export.add_argument("--allow-empty", action="store_true",
                        help="write an export even when no session matches (default: exit 1 and write nothing, "
                             "since training on an empty export can only fail later)")
    export.set_defaults(handler=run_export)


def megabytes(text: str) -> float:
    """argparse type: a size in MB, >= 0."""
    try:
        size = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in MB") from None
    if not (size >= 0 and size != float("inf")):
        raise argparse.ArgumentTypeError(f"{text} is not a size in MB (a number >= 0; 0 = off)")
    return size


def _minutes(text: str) -> float:
    try:
        minutes = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes") from None
    if not 0 < minutes < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number of minutes above 0")
    return minutes


def add_redis_options(parser, cluster_help: str) -> None:
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                        help="Redis URL of the session store (env REDIS_URL; default %(default)s)")
    parser.add_argument("--redis-cluster", action="store_true", help=cluster_help)


def _split(values: str) -> list[str]:
    return [value.strip() for value in values.split(",") if value.strip()]


def run_token_create(args) -> int:
    from datetime import datetime

    from moodstream.record_link import QR_FORMATS, print_qr, record_link, write_qr
    from moodstream.server.auth import add_enrolment, create_token

    stream, read = _split(args.stream), _split(args.read)
    if not stream and not read:
        raise ValueError("give --stream and/or --read: a token with no scope could do nothing")
    if args.qr and not args.record_page:
        raise ValueError("--qr needs --record-page: the QR code holds the record page's link")
    if args.enrol_minutes is not None and not args.record_page:
        raise ValueError("--enrol-minutes needs --record-page: it is how long the link's code works")
    enrol_minutes = DEFAULT_ENROL_MINUTES if args.enrol_minutes is None else args.enrol_minutes
    if args.record_page:
        if len(stream) != 1 or stream == ["*"]:
            raise ValueError("--record-page needs --stream with one participant: the link enrols one device for them")
        record_link(args.record_page, "")  # a bad page or file: refused before any token exists
        if args.qr and Path(args.qr).suffix.lower() not in QR_FORMATS:
            raise ValueError(f"--qr {str(args.qr)!r}: name an .svg or .png file")
    token = create_token(args.tokens, args.name, stream, read)
    print(token)
    print(f"added token {args.name!r} to {args.tokens}; it is shown only now", file=sys.stderr)
    if args.record_page:
        code, expires = add_enrolment(args.tokens, args.name, token, stream[0], enrol_minutes * 60)
        link = record_link(args.record_page, code)
        until = datetime.fromtimestamp(expires).astimezone().strftime("%Y-%m-%d %H:%M %Z")
        print(f"\nenrolment link for participant {stream[0]}: it enrols one device, once, until {until} "
              f"(--enrol-minutes {enrol_minutes:g}); hand it over privately:\n{link}\n", file=sys.stderr)
        print_qr(link, sys.stderr)
        if args.qr:
            print(f"QR code saved to {write_qr(link, args.qr)}", file=sys.stderr)
    return 0


def run_token_list(args) -> int:
    from moodstream.server.auth import list_tokens

    principals = list_tokens(args.tokens)
    rows = [{"name": p.name, "stream": sorted(p.stream), "read": sorted(p.read)} for p in principals]
    if args.json:
        print(json.dumps({"tokens": rows}, indent=2))
        return 0
    width = max([len("NAME"), *(len(row["name"]) for row in rows)])
    print(f"{'NAME':<{width}}  STREAM FOR  /  READ")
    for row in rows:
        print(f"{row['name']:<{width}}  {','.join(row['stream']) or '-'}  /  {','.join(row['read']) or '-'}")
    return 0


def run_token_revoke(args) -> int:
    from moodstream.server.auth import RELOAD_SECONDS, revoke_token

    removed = revoke_token(args.tokens, args.name)
    print(f"revoked token {args.name!r}" + (f" ({removed} entries)" if removed > 1 else "")
          + f" in {args.tokens}; servers reading it refuse it, and its enrolment codes, within "
          f"{RELOAD_SECONDS:g} s (it is re-read that often)",
          file=sys.stderr)
    return 0


def run_server(args) -> int:
    import asyncio

    configure_logging(args.log_level, args.json_logs)
    from moodstream.server.app import ServerConfig, serve_forever
    from moodstream.server.encoder_tuning import default_tuning_cache
    from moodstream.server.service import ServiceSettings

    if args.ttl_days < 0:
        raise ValueError("--ttl-days must be >= 0")
    check_device(args.device)
    if args.port:  # before the model loads: a clash is found in a second, not after a minute
        check_port_free("--port", args.host, args.port)
    if args.grpc_web_port:
        check_port_free("--grpc-web-port", args.host, args.grpc_web_port)
    if args.metrics_port:
        from prometheus_client import start_http_server

        check_port_free("--metrics-port", args.host, args.metrics_port)
        try:
            start_http_server(args.metrics_port, addr=args.host)
        except OSError as error:
            raise ValueError(f"--metrics-port {args.metrics_port}: cannot listen on {args.host}: "
                             f"{error.strerror or error}") from None
    config = ServerConfig(
        checkpoint=args.checkpoint, models=args.models, redis_url=args.redis, redis_cluster=args.redis_cluster, host=args.host,
        port=args.port, tokens_file=args.tokens, allow_unauthenticated=args.allow_unauthenticated,
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, precision=args.precision, device=args.device,
        tuning_cache=default_tuning_cache() if args.tuning_cache is None else args.tuning_cache,
        ttl_seconds=int(args.ttl_days * 86400), store_audio=args.store_audio, grpc_web_port=args.grpc_web_port,
        grpc_web_origins=tuple(args.grpc_web_origin or ("*",)),
        settings=ServiceSettings(state_cache_mb=args.state_cache_mb))

    def announce(server) -> None:
        # One machine-readable line, so scripts can start the server on port 0.
        announced = {"listening": f"{args.host}:{server.port}", "model_version": server.model_version,
                     "model_versions": server.repository.held()}
        if server.grpc_web_port is not None:
            announced["grpc_web"] = f"{args.host}:{server.grpc_web_port}"
        print(json.dumps(announced), flush=True)

    asyncio.run(serve_forever(config, on_started=announce))
    return 0


def check_port_free(option: str, host: str, port: int) -> None:
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise ValueError(f"--host {host!r} cannot be resolved: {error.strerror}") from None
    family, kind, _, _, address = infos[0]
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server sets it
        try:
            probe.bind(address)
        except OSError as error:
            reason = "the port is already in use" if error.errno == errno.EADDRINUSE else error.strerror
            raise ValueError(f"{option} {port}: cannot listen on {host}: {reason}") from None


def check_device(device: str) -> None:
    if device == "auto" or re.fullmatch(r"cpu|cuda(:[0-9]+)?", device):
        return
    raise ValueError(f"--device {device!r} is not supported: use auto, cpu, cuda or cuda:N")


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

    from moodstream.ids import ID_RULE, is_id

    participant = args.participant
    if not is_id(participant):
        raise ValueError(f"{participant!r} is not a participant id ({ID_RULE})")
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

    from moodstream.server.session_directory import SessionDirectory

    async with _command_client(url, cluster, where) as client:
        try:
            return await SessionDirectory(client).forget_participant(participant)
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as error:
            raise ValueError(f"Redis at {where} failed while deleting ({error}); run the command again") from None


@contextlib.asynccontextmanager
async def _command_client(url: str, cluster: bool, where: str):
    """A store client for a command run by hand (forget, export): ValueError, one line, when Redis cannot be
    reached or is a cluster node reached without --redis-cluster; closed on the way out."""
    import redis.exceptions

    from moodstream.server.redis_connection import connect

    failures = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError)
    try:
        client = connect(url, cluster=cluster, retry_seconds=2)  # a command run by hand: say soon
    except (*failures, ValueError) as error:
        raise ValueError(f"cannot use Redis URL {where}: {error}") from None
    try:
        store_log = logging.getLogger("moodstream.server")
        level = store_log.level
        store_log.setLevel(logging.ERROR)  # the answer is the one line below, not one line per retry
        try:
            await client.ping()
            clustered = not cluster and (await client.info("cluster")).get("cluster_enabled") in (1, "1")
        except failures as error:
            raise ValueError(f"cannot reach Redis at {where}: {error}") from None
        finally:
            store_log.setLevel(level)
        if clustered:
            # A plain client would search one node only and report 0 keys for data held elsewhere.
            raise ValueError(f"{where} is a Redis Cluster node: add --redis-cluster")
        yield client
    finally:
        await client.aclose()


def run_export(args) -> int:
    import asyncio

    from moodstream.ids import ID_RULE, is_id
    from moodstream.server.export import parse_since

    try:
        import pyarrow  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError:
        raise ValueError("moodstream export needs pyarrow and tqdm: pip install 'moodstream[export]'") from None
    participants = args.participant
    for participant in participants or ():
        if not is_id(participant):
            raise ValueError(f"--participant {participant!r} is not a participant id ({ID_RULE})")
    since = parse_since(args.since) if args.since else 0.0
    if os.path.exists(args.out):
        raise ValueError(f"{args.out} exists: choose a new folder for the export")
    for version in args.model_version or ():
        if not is_id(version):
            raise ValueError(f"--model-version {version!r} is not a model version ({ID_RULE})")
    where = redact_url(args.redis)
    sessions, stored = asyncio.run(_collect(args.redis, args.redis_cluster, participants, since, args.model_version,
                                            where))
    if not sessions and not args.allow_empty:
        print(f"moodstream export: error: no session in {where} matches {_filters_text(args)} (model versions "
              f"stored: {', '.join(sorted(stored)) or 'none'}); nothing written (--allow-empty writes an empty "
              "export)", file=sys.stderr)
        return 1
    from moodstream.field_export import write_export

    filters = {"participants": participants or [], "since_unix": since, "model_versions": args.model_version or []}
    manifest = write_export(args.out, sessions, filters)
    print(f"exported {manifest['sessions']} session(s), {manifest['segments']} segment(s), "
          f"{manifest['speech_seconds'] / 3600:.2f} h of speech (model versions: "
          f"{', '.join(manifest['model_versions']) or 'none'}) from {where} to {args.out}")
    return 0


def _filters_text(args) -> str:
    parts = [f"participant {', '.join(args.participant)}" if args.participant else "",
             f"since {args.since}" if args.since else "",
             f"model version {', '.join(args.model_version)}" if args.model_version else ""]
    return "; ".join(p for p in parts if p) or "any filter (Redis holds no session)"


async def _collect(url: str, cluster: bool, participants, since: float, versions, where: str):
    import redis.exceptions
    from tqdm import tqdm

    from moodstream.server.export import collect_sessions, stored_versions

    async with _command_client(url, cluster, where) as client:
        with tqdm(desc="sessions", unit="session", disable=None) as progress:
            try:
                stored = await stored_versions(client)
                sessions = await collect_sessions(client, participants, since, progress, versions)
            except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as error:
                raise ValueError(f"Redis at {where} failed while reading ({error}); run the command again") from None
    return sessions, stored
