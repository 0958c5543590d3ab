"""Generate one article and write its folder, as `dakota generate --out out` does.

    pip install ./clients/python            # add tqdm for a progress bar
    python clients/python/examples/generate.py "Private credit and liquidity" --out out

The server is DAKOTA_SERVER (default http://127.0.0.1:50051, where scripts/demo.sh starts one);
DAKOTA_API_KEY and DAKOTA_CA_CERT as for the CLI.
"""

from __future__ import annotations

import argparse
import os
import sys

from dakota_client import Client, DakotaError, write_folder
from dakota_client.progress import Progress


def main() -> int:
    parser = argparse.ArgumentParser(description="Generate an article with the Dakota Content Service")
    parser.add_argument("topic", nargs="?", default="Private credit and liquidity for pension funds")
    parser.add_argument("--word-count", type=int, default=800)
    parser.add_argument("--out", default="out", help="folder to write the article folder in")
    args = parser.parse_args()

    server = os.environ.get("DAKOTA_SERVER", "http://127.0.0.1:50051")
    api_key, ca_cert = os.environ.get("DAKOTA_API_KEY"), os.environ.get("DAKOTA_CA_CERT")
    try:
        with Client(server, api_key=api_key, ca_cert=ca_cert, timeout=600) as client, Progress() as progress:
            article = client.run(args.topic, word_count=args.word_count, on_event=progress)
    except DakotaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    folder = write_folder(article, args.out)
    content = article.metadata.content
    print(f"wrote {folder}: {article.title!r}, {content.word_count} words, {len(article.sources)} sources")
    return 0


if __name__ == "__main__":
    sys.exit(main())
