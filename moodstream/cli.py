"""The `moodstream` command: one entry point, one subcommand per part."""
import argparse
import sys

from moodstream import SCREENING_NOTICE, __version__


def main(argv=None):
    parser = argparse.ArgumentParser(prog="moodstream", description=SCREENING_NOTICE)
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_subparsers(dest="command", required=True)
    args = parser.parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
