#!/usr/bin/env python3
"""The server's layers (issue 20): each top-level module of server/ may import (`crate::...`)
only the modules of the layers below its own. Prints the module graph, then every import that
goes up or sideways into a layer above; exits 1 if there is one.

    python3 scripts/check-layers.py           # the graph and the verdict
    python3 scripts/check-layers.py --dot     # the graph in Graphviz dot
"""
import re
import sys
from collections import defaultdict
from pathlib import Path

SERVER = Path(__file__).resolve().parent.parent / "server"

# Bottom first. A module may import its own layer's modules only where listed as peers below.
LAYERS = [
    ["text", "config", "metrics", "telemetry"],
    ["domain"],
    ["fault"],
    ["redis"],
    ["cache"],
    ["resilience"],
    ["upstream"],
    ["kb"],
    ["agents"],
    ["pipeline"],
    ["jobs"],
    ["auth", "quota", "error", "validation", "rpc_metrics", "message_size", "net", "tls", "service"],
    ["admin", "app"],
]
# Same-layer imports that are allowed (importer -> imported): the foundations may use text and
# config; the gRPC edge's pieces feed its service.
PEERS = {
    ("telemetry", "config"), ("metrics", "config"), ("metrics", "text"), ("telemetry", "text"),
    ("config", "text"),
    ("service", "auth"), ("service", "quota"), ("service", "validation"), ("service", "error"),
    ("validation", "error"), ("net", "error"), ("tls", "net"), ("service", "net"),
    ("app", "admin"),
}
# Files that are not modules of the service (the binary, test-only modules).
IGNORED = {"main", "lib", "hostile_input", "tests"}

def module_of(path: Path) -> str:
    return path.relative_to(SERVER).parts[0].removesuffix(".rs")


def imports(text: str):
    """The top-level modules named by each `crate::` path, `use crate::{a::x, b::{y, z}}` too."""
    # Comments out: a `crate::x` in a doc comment is not an import.
    text = re.sub(r"//[^\n]*", "", text)
    for match in re.finditer(r"\bcrate::", text):
        rest = text[match.end():]
        if not rest.startswith("{"):
            name = re.match(r"[a-z_][a-z0-9_]*", rest)
            if name:
                yield name.group(0)
            continue
        # The items at depth 1 of the braces: each one's first segment.
        depth, item = 0, ""
        for c in rest:
            if c == "{":
                depth += 1
                if depth == 1:
                    continue
            elif c == "}":
                depth -= 1
                if depth == 0:
                    break
            if depth == 1 and c == ",":
                yield from first_segment(item)
                item = ""
            elif depth >= 1:
                item += c
        yield from first_segment(item)


def first_segment(item: str):
    name = re.match(r"\s*([a-z_][a-z0-9_]*)", item)
    if name and name.group(1) != "self":
        yield name.group(1)


def main() -> int:
    layer = {m: i for i, names in enumerate(LAYERS) for m in names}
    graph = defaultdict(lambda: defaultdict(list))
    for path in sorted(SERVER.rglob("*.rs")):
        importer = module_of(path)
        if importer in IGNORED:
            continue
        for imported in imports(path.read_text()):
            if imported in IGNORED or imported == importer or imported in ("lock", "read", "write"):
                continue
            graph[importer][imported].append(str(path.relative_to(SERVER.parent)))
    if "--dot" in sys.argv:
        print("digraph server {")
        for a, targets in sorted(graph.items()):
            for b in sorted(targets):
                print(f'  "{a}" -> "{b}";')
        print("}")
        return 0
    problems = []
    for a in sorted(graph, key=lambda m: (layer.get(m, 99), m)):
        targets = graph[a]
        print(f"{a} (layer {layer.get(a, '?')}) -> {', '.join(sorted(targets))}")
        for b, files in sorted(targets.items()):
            if a not in layer or b not in layer:
                problems.append(f"{a} -> {b}: not in a layer (add it to LAYERS)")
            elif layer[b] > layer[a] or (layer[b] == layer[a] and (a, b) not in PEERS):
                where = ", ".join(sorted(set(files)))
                problems.append(f"{a} (layer {layer[a]}) imports {b} (layer {layer[b]}) in {where}")
    if problems:
        print(f"\n{len(problems)} import(s) against the layers:")
        for p in problems:
            print(f"  {p}")
        return 1
    print("\nlayers: every import goes down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
