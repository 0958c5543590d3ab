"""`write_folder` writes what `dakota get JOB --out DIR` writes for the same job, byte for byte."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Any, cast

import pytest
from google.protobuf import duration_pb2, timestamp_pb2

import dakota_client as dc
from dakota_client import Client, content_pb2 as pb, folder_slug, write_folder
from dakota_client._alnum import ALNUM_BEYOND_L_N
from helpers import CLI_BIN, ArticleServer, Server

FILES = ["article.md", "fact-check.json", "generation_metrics.json", "metadata.json", "social.md", "summary.md"]


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root`, by path relative to it."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def cli_get(server_url: str, job_id: str, out: Path) -> None:
    done = subprocess.run([str(CLI_BIN), "--server", server_url, "get", job_id, "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("topic", "options"),
    [
        ("Private credit and liquidity for pension funds", {}),
        ("Café-Straße: ESG & über-returns in 2026 — «private credit»", {"include_social": False}),
        ("Private credit in India (भारत में निजी ऋण)", {"include_summary": False, "audience": "family offices"}),
    ],
)
def test_the_folder_is_the_clis_byte_for_byte(server: Server, tmp_path: Path, topic: str, options: Any) -> None:
    with Client(server.url, timeout=60) as client:
        streamed = client.run(topic, word_count=500, **options)
        fetched = client.get_article(streamed.job_id)
    folder = write_folder(fetched, tmp_path / "python")
    write_folder(streamed, tmp_path / "streamed")
    cli_get(server.url, streamed.job_id, tmp_path / "cli")

    written = tree(tmp_path / "python")
    assert sorted(Path(name).name for name in written) == FILES
    assert folder.parent == tmp_path / "python" and folder.name.endswith(dc.folder_slug(fetched))
    assert written == tree(tmp_path / "cli")
    assert tree(tmp_path / "streamed") == written


def _edge_case_articles() -> dict[str, pb.Article]:
    """Articles no offline job produces: floats in every layout Rust has, hostile and
    non-Latin slugs, missing parts, unknown enum values, negative durations."""
    floats = [1e-7, 1e-5, 0.0001, 0.1 + 0.2, 1e16, 1.5e16, 123456789.125, -0.0, math.nan, math.inf, -math.inf,
              5e-324, 1.7976931348623157e308, 2.5, 100.0, -3.25e-12, 9007199254740993.0]
    numbers = pb.Article(
        job_id="6b1c0e4e-0000-4000-8000-000000000001", slug="floats", title="Floats",
        markdown="# Floats\n", created_at=timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=5),
        sources=[pb.Source(id=f"S{i}", domain=f"d{i % 3}.example", authority_tier=i % 4, relevance=f, kind=cast(pb.SourceKind, i % 4))
                 for i, f in enumerate(floats)],
        metadata=pb.ArticleMetadata(
            content=pb.ContentMetrics(flesch_reading_ease=-12.5, avg_sentence_words=1 / 3, word_count=7),
            quality=pb.QualityScores(overall=99.99999999999999, fact_check_score=2 / 3),
            related_articles=[pb.RelatedArticle(title="r", relevance=f) for f in floats[:5]],
        ),
        metrics=pb.RunMetrics(
            total_duration=duration_pb2.Duration(seconds=-1, nanos=5),
            estimated_cost_usd=1e-9,
            phases=[pb.PhaseMetrics(phase="setup", duration=duration_pb2.Duration(seconds=2, nanos=-1))],
            agents=[pb.AgentMetrics(agent="content_writer", estimated_cost_usd=c,
                                    usage=pb.TokenUsage(input_tokens=2**40, output_tokens=3),
                                    duration=duration_pb2.Duration(seconds=0, nanos=1_999_999_999))
                    for c in (0.1, 0.2, 1e-9)],
        ),
        fact_check=pb.FactCheckReport(claims=[pb.Claim(text="t", verdict=cast(pb.Verdict, v)) for v in range(6)]),
    )
    hostile = pb.Article(
        job_id="job-2", slug="../../Ünïcode Straße/..\x1b[2J\u202e", title='Say "hi"\nnext\t\x07',
        markdown="# T\r\n\tx \\ \"q\" \u2028", topic="\x00\x1f\x7f\u0085",
        summary=pb.Summary(key_value="k", overview="o", takeaways=["a", "b\nc"]),
        social=pb.SocialContent(linkedin_posts=["p1", "p2\n\nmore"], thread=["t1\nt1b", "t2"]),
        sources=[pb.Source(domain="bücher.example"), pb.Source(domain="Zürich.example"), pb.Source(domain="a.example")],
    )
    return {
        numbers.job_id: numbers,
        hostile.job_id: hostile,
        "3F2A-9C1E": pb.Article(job_id="3F2A-9C1E"),
        "../..": pb.Article(job_id="../.."),
        "marks": pb.Article(job_id="marks", slug="हिन्दी-ภาษาไทย-ⓐⓑ-e\u0301-a\u0363-١٢٣-ǅ-ᲈ"),
        "long": pb.Article(job_id="long", slug="ü" * 200),
        "wide": pb.Article(job_id="wide", slug="\U00010348" * 100),
    }


def test_edge_case_articles_are_written_as_the_cli_writes_them(tmp_path: Path) -> None:
    articles = _edge_case_articles()
    server = ArticleServer(articles)
    try:
        for i, (job_id, article) in enumerate(articles.items()):
            folder = write_folder(article, tmp_path / f"python-{i}")
            cli_get(server.url, job_id, tmp_path / f"cli-{i}")
            assert tree(tmp_path / f"python-{i}") == tree(tmp_path / f"cli-{i}"), job_id
            assert folder.parent == tmp_path / f"python-{i}"
    finally:
        server.stop()


def test_the_characters_kept_in_folder_names_are_the_clis_at_every_edge_of_the_table(tmp_path: Path) -> None:
    # Each range of _alnum.py's table: its first and last character and the ones just outside.
    codes = sorted({c for a, b in ALNUM_BEYOND_L_N for c in (a - 1, a, b, b + 1)} - set(range(0xD800, 0xE000)))
    chunks = [codes[i:i + 30] for i in range(0, len(codes), 30)]
    articles = {f"j{i}": pb.Article(job_id=f"j{i}", slug="a" + "".join(chr(c) + "a" for c in chunk))
                for i, chunk in enumerate(chunks)}
    server = ArticleServer(articles)
    try:
        for job_id, article in articles.items():
            cli_get(server.url, job_id, tmp_path / job_id)
            (written,) = (tmp_path / job_id).iterdir()
            assert written.name.endswith("-" + folder_slug(article)), job_id
    finally:
        server.stop()
