"""`moodstream dashboard`: the clinician dashboard (web), fed through the public gRPC API.

Only argparse here; the web stack is imported by the handler, so building the
`moodstream` parser stays light (and never imports torch).
"""
from __future__ import annotations

import argparse
import os
import sys

from moodstream import SCREENING_NOTICE

from moodstream.help_format import HelpFormatter, port_number
from moodstream.user_files import input_folder, text_file


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "dashboard", help="serve the clinician dashboard (live score streams in a browser)",
        description="Serve a web dashboard of live and recent sessions, each session's score over time and "
                    "each participant's history. It reads scores from a scoring server with Subscribe, using "
                    "a read-scoped token, so it works against any replica and needs no Redis access. "
                    + SCREENING_NOTICE,
        formatter_class=HelpFormatter)
    parser.add_argument("--server", required=True, metavar="HOST:PORT", help="scoring server (any replica)")
    parser.add_argument("--token", default=argparse.SUPPRESS,
                        help="read-scoped bearer token (default: env MOODSTREAM_TOKEN; --token-file keeps it out "
                             "of the process list)")
    parser.add_argument("--token-file", type=text_file, help="file holding the token (first line)")
    parser.add_argument("--participant", action="append", default=[], metavar="ID",
                        help="participant to follow (repeat for more); without --participant and "
                             "--participants-file, the dashboard asks the server's session directory every 5 s "
                             "and shows every session the token may read that had a score in the last "
                             "--recent-seconds")
    parser.add_argument("--participants-file", metavar="FILE", type=text_file,
                        help="file with one participant id per line (# comments allowed)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address the web page listens on; it has no login of its own, so expose it only "
                             "behind an authenticating reverse proxy")
    parser.add_argument("--port", type=port_number, default=8080, help="web port (0 = any free port)")
    parser.add_argument("--tls", action="store_true", help="connect to the server with TLS (system CAs)")
    parser.add_argument("--tls-ca", metavar="FILE", type=text_file, help="connect with TLS, trusting this CA bundle (PEM)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="FOLDER", type=input_folder,
                        help="the scoring server's checkpoint folder (repeat for more models): the dashboard "
                             "reads from its config.json what the probability estimates and shows it beside "
                             "every score (only config.json is read)")
    parser.add_argument("--idle-seconds", type=float, default=60.0,
                        help="an open session without a new score for this long is shown as idle")
    parser.add_argument("--recent-seconds", type=float, default=3600.0,
                        help="without --participant: the overview lists the sessions (streaming, idle, "
                             "interrupted or finished) whose latest score is at most this old")
    parser.add_argument("--gap-seconds", type=float, default=60.0,
                        help="more speech time than this between two chunks is drawn as a gap (no speech kept)")
    parser.add_argument("--late-seconds", type=float, default=30.0,
                        help="a score that reached the server this much later than its speech allows is marked "
                             "late (it waited out an outage)")
    parser.add_argument("--record-endpoint", default="", metavar="URL",
                        help="base URL of the scoring server's gRPC-web port (its --grpc-web-port, e.g. "
                             "https://scores.example.org:8443); the /record page sends participants' speech there")
    parser.add_argument("--no-access-log", action="store_true", help="do not log each HTTP request")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                        help="least severe log messages to print (stderr)")
    parser.set_defaults(handler=run)


def read_token(args) -> str:
    if args.token_file:
        try:
            lines = open(args.token_file, encoding="utf-8").read().splitlines()
        except FileNotFoundError:
            raise ValueError(f"token file {args.token_file} does not exist") from None
        return lines[0].strip() if lines else ""
    return getattr(args, "token", None) or os.environ.get("MOODSTREAM_TOKEN", "")


def run(args) -> int:
    try:
        from moodstream.dashboard.feed import FeedConfig, participants_from
        from moodstream.dashboard.server import WebConfig, serve
    except ModuleNotFoundError as error:
        print(f"moodstream dashboard: {error.name} is not installed; install the dashboard extra "
              "(pip install 'moodstream[dashboard]')", file=sys.stderr)
        return 2
    import logging

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not (0 <= args.port <= 65535):
        raise ValueError(f"--port {args.port} is not a port number")
    from moodstream.model_description import ModelDescription

    config = FeedConfig(server=args.server, token=read_token(args),
                        participants=participants_from(args.participant, args.participants_file),
                        tls=args.tls, tls_ca=args.tls_ca, idle_seconds=args.idle_seconds,
                        gap_seconds=args.gap_seconds, late_seconds=args.late_seconds,
                        recent_seconds=args.recent_seconds, record_endpoint=args.record_endpoint,
                        models=[ModelDescription.from_checkpoint(folder) for folder in args.checkpoint])
    web = WebConfig(host=args.host, port=args.port, access_log=not args.no_access_log, log_level=args.log_level)

    def started(url: str, feed) -> None:
        following = (f"following {len(config.participants)} participant(s)" if config.participants
                     else "following the session directory's recent sessions")
        print(f"moodstream dashboard: {url} ({following} on {config.server}). {SCREENING_NOTICE}",
              file=sys.stderr, flush=True)

    serve(config, web, on_started=started)
    return 0
