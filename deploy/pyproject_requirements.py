"""Print the requirements of moodstream's base install plus the given extras, one per line.

    python deploy/pyproject_requirements.py server > requirements.txt

The images install these first, in a layer of their own, so that a change to
moodstream's code does not reinstall torch; then they install moodstream itself
with --no-deps. Extras that name moodstream's own extras (``moodstream[model]``)
are followed. Standard library only: it runs before anything is installed.
"""
from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

SELF_REFERENCE = re.compile(r"^\s*moodstream\s*\[([^\]]*)\]\s*$")


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    """The base dependencies plus every extra in `extras`, self-references expanded, in order, no repeats."""
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    lines: list[str] = []
    seen_extras: set[str] = set()

    def add(requirement: str) -> None:
        if requirement not in lines:
            lines.append(requirement)

    def add_extra(name: str) -> None:
        if name in seen_extras:
            return
        if name not in optional:
            raise ValueError(f"moodstream has no extra {name!r} (known: {', '.join(sorted(optional))})")
        seen_extras.add(name)
        for requirement in optional[name]:
            nested = SELF_REFERENCE.match(requirement)
            if nested:
                for inner in nested.group(1).split(","):
                    if inner.strip():
                        add_extra(inner.strip())
            else:
                add(requirement)

    for requirement in project.get("dependencies", []):
        add(requirement)
    for extra in extras:
        add_extra(extra)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extras", nargs="*", help="extras to include (e.g. server, agent)")
    parser.add_argument("--pyproject", default=str(Path(__file__).resolve().parent.parent / "pyproject.toml"),
                        help="pyproject.toml to read (default: the one beside deploy/)")
    parser.add_argument("--without-dependencies", action="store_true",
                        help="print instead the packages to install with --no-deps "
                             "([tool.moodstream] install-without-dependencies)")
    args = parser.parse_args(argv)
    with open(args.pyproject, "rb") as handle:
        document = tomllib.load(handle)
    if args.without_dependencies:
        print("\n".join(document.get("tool", {}).get("moodstream", {}).get("install-without-dependencies", [])))
        return 0
    try:
        lines = requirements(document, args.extras)
    except ValueError as error:
        print(f"pyproject_requirements: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
