#!/usr/bin/env python3
"""Writes src/dakota_client/_alnum.py: the characters Rust's `char::is_alphanumeric` accepts
that Python's `unicodedata` does not class as a letter or number (combining marks that are
part of letters in Indic, Thai, Arabic... scripts, circled letters, and letters of Unicode
versions newer than this Python's), and the lower cases of such new letters. The article
folder's slug keeps exactly the characters that function accepts, lower-cased, so the
Python client needs them to name folders as the CLI does.

The `dakota` CLI is the oracle: a stand-in server hands it articles whose slugs hold every
candidate character, and the folder names it writes say which it kept.

    DAKOTA_BIN_DIR=target/debug python clients/python/tools/alnum_table.py

tests/test_folder.py checks the table's edges against the CLI in every run.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import unicodedata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from helpers import CLI_BIN, ArticleServer  # noqa: E402

from dakota_client import content_pb2 as pb  # noqa: E402

OUT = HERE.parent / "src" / "dakota_client" / "_alnum.py"
LAST = 0x3FFFF  # past the last assigned letter (planes 0-3)
PER_SLUG = 30  # "a" + 2 per candidate stays within the 80 characters of a folder slug


def python_alnum(c: str) -> bool:
    return unicodedata.category(c)[0] in "LN"


def kept_by_cli(candidates: list[str]) -> dict[str, str]:
    """The candidates the CLI keeps in a folder name, each with what it wrote for it (its
    lower case)."""
    chunks = [candidates[i:i + PER_SLUG] for i in range(0, len(candidates), PER_SLUG)]
    server = ArticleServer({f"j{i}": pb.Article(job_id=f"j{i}", slug="a" + "".join(c + "a" for c in chunk))
                            for i, chunk in enumerate(chunks)})
    kept: dict[str, str] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i, chunk in enumerate(chunks):
                out = Path(tmp) / str(i)
                subprocess.run([str(CLI_BIN), "--server", server.url, "get", f"j{i}", "--out", str(out)],
                               check=True, capture_output=True)
                (folder,) = out.iterdir()
                written = folder.name[len("YYYY-MM-DD-"):].split("a")[1:-1]
                assert len(written) == len(chunk), (folder.name, chunk)
                kept.update((c, w) for c, w in zip(chunk, written) if w != "-")
    finally:
        server.stop()
    return kept


def main() -> None:
    candidates = [chr(c) for c in range(0x80, LAST + 1)
                  if not python_alnum(chr(c)) and unicodedata.category(chr(c)) != "Cs"]
    written = kept_by_cli(candidates)
    kept = sorted(ord(c) for c in written)
    # Letters newer than this Python's Unicode may have a lower case it does not know.
    lower = {ord(c): w for c, w in written.items() if w != c.lower()}
    # Ranges, merged over gaps of characters Python already takes as letters or numbers.
    ranges: list[list[int]] = []
    for code in kept:
        if ranges and all(python_alnum(chr(c)) for c in range(ranges[-1][1] + 1, code)):
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    lines = [f"    (0x{a:05X}, 0x{b:05X})," for a, b in ranges]
    OUT.write_text(
        '"""Characters Rust\'s `char::is_alphanumeric` accepts beyond Python\'s letters and numbers\n'
        f"(unicodedata {unicodedata.unidata_version}), as inclusive ranges; written by tools/alnum_table.py"
        ' from the `dakota` CLI."""\n\n'
        "ALNUM_BEYOND_L_N: tuple[tuple[int, int], ...] = (\n" + "\n".join(lines) + "\n)\n\n"
        "# Lower cases Rust's `char::to_lowercase` knows and this Python's `str.lower` does not.\n"
        "LOWER_BEYOND: dict[int, str] = {\n"
        + "".join(f"    0x{code:05X}: {text!r},\n" for code, text in sorted(lower.items())) + "}\n"
    )
    print(f"{len(kept)} characters in {len(ranges)} ranges, {len(lower)} lower cases -> {OUT}")


if __name__ == "__main__":
    main()
