#!/usr/bin/env python3
"""Generates the package's message module from proto/ with grpcio-tools.

    python clients/python/codegen.py           # (re)write src/dakota_client/content_pb2.py and .pyi
    python clients/python/codegen.py --check   # exit 1 when the committed files are not what
                                               # proto/ generates (run by scripts/check-python-client.sh)

Only the messages are generated (`--python_out`, `--pyi_out` for editors and mypy); the client
calls the RPCs through the channel itself (dakota_client/_common.py names each method from the
descriptor), so no generated service module has to be importable as `dakota.content.v1`.

The generated code names the protobuf version it was made with, and the protobuf runtime refuses
older runtimes, so grpcio-tools is pinned here and the `protobuf` floor in pyproject.toml must be
that version: --check verifies both.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

GRPCIO_TOOLS = "1.85.1"

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PROTO_ROOT = REPO / "proto"
PROTO = "dakota/content/v1/content.proto"
PACKAGE = HERE / "src" / "dakota_client"
OUTPUTS = ("content_pb2.py", "content_pb2.pyi")


def generate(out: Path) -> dict[str, bytes]:
    """The generated files, by name."""
    from grpc_tools import protoc

    well_known = str(resources.files("grpc_tools") / "_proto")
    args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}",
            f"--python_out={out}", f"--pyi_out={out}", str(PROTO_ROOT / PROTO)]
    if protoc.main(args) != 0:
        raise SystemExit(f"grpc_tools.protoc failed: {' '.join(args)}")
    folder = out / Path(PROTO).parent
    return {name: (folder / name).read_bytes() for name in OUTPUTS}


def gencode_version(source: bytes) -> str:
    found = re.search(rb"^# Protobuf Python Version: (\S+)$", source, re.M)
    if not found:
        raise SystemExit("content_pb2.py names no 'Protobuf Python Version'")
    return found.group(1).decode()


def protobuf_floor() -> str:
    text = (HERE / "pyproject.toml").read_text()
    found = re.search(r'"protobuf>=([^,"]+)', text)
    if not found:
        raise SystemExit("pyproject.toml has no protobuf>= dependency")
    return found.group(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()

    installed = importlib.metadata.version("grpcio-tools")
    if installed != GRPCIO_TOOLS:
        print(f"grpcio-tools {installed} is installed; the committed code is generated with "
              f"{GRPCIO_TOOLS}: pip install grpcio-tools=={GRPCIO_TOOLS}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))

    version, floor = gencode_version(fresh["content_pb2.py"]), protobuf_floor()
    if version != floor:
        print(f"the generated code needs protobuf>={version}, but pyproject.toml asks for "
              f"protobuf>={floor}: make them the same", file=sys.stderr)
        return 1

    if not args.check:
        for name, content in fresh.items():
            (PACKAGE / name).write_bytes(content)
        print(f"wrote {', '.join(OUTPUTS)} in {PACKAGE.relative_to(REPO)} (protobuf {version})")
        return 0

    stale = [name for name, content in fresh.items()
             if not (PACKAGE / name).exists() or (PACKAGE / name).read_bytes() != content]
    if stale:
        print(f"{', '.join(stale)} in {PACKAGE.relative_to(REPO)} differ from what {PROTO} generates: "
              f"run python clients/python/codegen.py and commit the result", file=sys.stderr)
        return 1
    print(f"generated code is current ({', '.join(OUTPUTS)}, grpcio-tools {GRPCIO_TOOLS}, protobuf {version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
