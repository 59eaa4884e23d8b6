"""The `moodstream` command: one entry point, one subcommand per part.

Each part registers its own subcommand from its folder (agent/cli.py,
server/cli.py, trainer/cli.py, dashboard/cli.py, model/cli.py). Parsers are built without importing torch,
so `moodstream agent` stays light.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from moodstream import SCREENING_NOTICE, __version__
from moodstream.user_files import Parser

# subcommand module -> must define add_parser(subparsers) that sets `handler`
SUBCOMMAND_MODULES = (
    "moodstream.agent.cli",
    "moodstream.server.cli",
    "moodstream.compose.demo",
    "moodstream.trainer.cli",
    "moodstream.dashboard.cli",
    "moodstream.model.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="moodstream",
        description="Streaming speech-based depression screening. " + SCREENING_NOTICE)
    parser.add_argument("--version", action="version", version=f"moodstream {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:  # that part is not built/installed
                continue
            raise
        module.add_parser(subparsers)
    # `evaluate --replay` streams through the agent and a server; the trainer is handed the function that does it.
    parser.set_defaults(replay_sessions=_replay_sessions)
    return parser


def _replay_sessions(*args, **kwargs):
    from moodstream.compose.replay import replay_sessions

    return replay_sessions(*args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("moodstream: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, PermissionError) as error:
        # Input and configuration problems: one sentence, no traceback.
        print(f"moodstream {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
