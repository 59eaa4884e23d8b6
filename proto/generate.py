"""Regenerate the Python stubs from proto/moodstream/v1/*.proto.

    python proto/generate.py          # rewrite the checked-in stubs
    python proto/generate.py --check  # exit 1 if the checked-in stubs are stale

The stubs are checked in so the light agent needs no code generator; the
test suite runs --check so a .proto edit without regeneration fails CI.
"""
import argparse
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE_DIR = PROTO_ROOT / "moodstream" / "v1"
DESCRIPTOR_SET_SUFFIX = ".descriptor.binpb"


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc  # only needed by developers, not at run time
    import importlib.resources

    include = str(importlib.resources.files("grpc_tools") / "_proto")
    protos = sorted(PACKAGE_DIR.glob("*.proto"))
    for proto in protos:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            # With comments, for the server's reflection service: the _pb2 modules drop them.
            f"--descriptor_set_out={out_dir / 'moodstream' / 'v1' / (proto.stem + DESCRIPTOR_SET_SUFFIX)}",
            "--include_source_info",
            str(proto.relative_to(PROTO_ROOT)),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto}")
    folder = out_dir / "moodstream" / "v1"
    return sorted([*folder.glob("*_pb2*.py*"), *folder.glob(f"*{DESCRIPTOR_SET_SUFFIX}")])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = []
        for path in fresh:
            target = PACKAGE_DIR / path.name
            if not target.exists() or target.read_bytes() != path.read_bytes():
                stale.append(target)
                if not args.check:
                    target.write_bytes(path.read_bytes())
    if args.check and stale:
        print("stale stubs (run `python proto/generate.py`): " + ", ".join(p.name for p in stale), file=sys.stderr)
        return 1
    if not args.check:
        print(f"wrote {len(stale)} stub file(s)" if stale else "stubs are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
