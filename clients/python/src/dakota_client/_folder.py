"""The article folder of SPEC §7, written byte for byte as `dakota generate --out` writes it
(the CLI's `api/output.rs`): `YYYY-MM-DD-<slug>/` with article.md, metadata.json, social.md,
summary.md, fact-check.json and generation_metrics.json.

The JSON files are rendered as serde_json's pretty printer does: keys sorted (serde_json's
maps are ordered), two-space indents, floats in serde_json's shortest form (`0.0`, `1e-7`, `1e+16`),
non-finite numbers as `null`, non-ASCII text unescaped.
"""

from __future__ import annotations

import bisect
import datetime
import json
import math
import os
import unicodedata
from decimal import Decimal
from pathlib import Path
from typing import Union

from google.protobuf import duration_pb2

from . import content_pb2 as pb
from ._alnum import ALNUM_BEYOND_L_N, LOWER_BEYOND

Json = Union[None, bool, int, float, str, list["Json"], dict[str, "Json"]]

# The longest slug of a folder name, in characters and in UTF-8 bytes (as output.rs).
_MAX_SLUG_CHARS = 80
_MAX_SLUG_BYTES = 200

_NANOS = 1_000_000_000

_FILES = (
    "article.md",
    "metadata.json",
    "social.md",
    "summary.md",
    "fact-check.json",
    "generation_metrics.json",
)


def write_folder(article: pb.Article, out_dir: str | os.PathLike[str]) -> Path:
    """Writes the article folder under `out_dir` (created if needed) and returns its path,
    always one direct child of `out_dir` whatever slug the server sent."""
    date = date_of(article)
    slug = folder_slug(article)
    folder = Path(out_dir) / f"{date}-{slug}"
    folder.mkdir(parents=True, exist_ok=True)
    contents = {
        "article.md": _article_markdown(article, date, slug),
        "metadata.json": _pretty(_metadata_json(article, date, slug)),
        "social.md": _social_markdown(article),
        "summary.md": _summary_markdown(article),
        "fact-check.json": _pretty(_fact_check_json(article)),
        "generation_metrics.json": _pretty(_run_metrics_json(article)),
    }
    for name in _FILES:
        (folder / name).write_bytes(contents[name].encode("utf-8"))
    return folder


def folder_slug(article: pb.Article) -> str:
    """The slug that names the folder: the server's slug made one safe path component
    (lower-case letters, digits and `_` kept, other runs one inner `-`, bounded), else the
    job id made safe the same way, else `article`."""
    for text in (article.slug, article.job_id):
        slug = _path_component(text)
        if slug:
            return slug
    return "article"


_BEYOND_STARTS = [start for start, _ in ALNUM_BEYOND_L_N]


def _is_alphanumeric(c: str) -> bool:
    """Rust's `char::is_alphanumeric`: Unicode letters and numbers, and the marks and symbols
    that are Alphabetic too (`_alnum.py`)."""
    if unicodedata.category(c)[0] in "LN":
        return True
    i = bisect.bisect_right(_BEYOND_STARTS, ord(c)) - 1
    return i >= 0 and ord(c) <= ALNUM_BEYOND_L_N[i][1]


def _path_component(text: str) -> str:
    slug = ""
    chars = 0
    for original in text:
        for c in LOWER_BEYOND.get(ord(original)) or original.lower():
            if not (_is_alphanumeric(c) or c == "_"):
                c = "-"
            if c == "-" and (not slug or slug.endswith("-")):
                continue
            if chars == _MAX_SLUG_CHARS or len(slug.encode()) + len(c.encode()) > _MAX_SLUG_BYTES:
                return slug.rstrip("-")
            slug += c
            chars += 1
    return slug.rstrip("-")


def date_of(article: pb.Article) -> str:
    """`YYYY-MM-DD` (UTC) of the article's `created_at`; today when it has none."""
    if article.HasField("created_at"):
        seconds = article.created_at.seconds
    else:
        seconds = int(datetime.datetime.now(datetime.timezone.utc).timestamp())
    try:
        moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        moment = datetime.datetime.fromtimestamp(0, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d")


def _millis(duration: duration_pb2.Duration) -> int:
    """Whole milliseconds of a `Duration` (normalised as prost does); 0 for a negative one."""
    seconds, nanos = duration.seconds, duration.nanos
    carry = abs(nanos) // _NANOS * (1 if nanos >= 0 else -1)  # Rust's `/`: towards zero
    seconds, nanos = seconds + carry, nanos - carry * _NANOS
    if seconds < 0 < nanos:
        seconds, nanos = seconds + 1, nanos - _NANOS
    elif nanos < 0 < seconds:
        seconds, nanos = seconds - 1, nanos + _NANOS
    if seconds < 0 or nanos < 0:
        return 0
    return seconds * 1000 + nanos // 1_000_000


def _article_markdown(article: pb.Article, date: str, slug: str) -> str:
    content = article.metadata.content
    title = article.title.replace('"', '\\"')
    return (
        f'---\ntitle: "{title}"\ndate: {date}\nword_count: {content.word_count}\n'
        f"reading_time_minutes: {content.reading_time_minutes}\nslug: {slug}\njob_id: {article.job_id}\n---\n\n"
        f"{article.markdown}"
    )


def _social_markdown(article: pb.Article) -> str:
    if not article.HasField("social"):
        return f"# Social content: {article.title}\n\nNot requested for this article.\n"
    social = article.social
    md = f"# Social content: {article.title}\n\n## LinkedIn\n\n"
    for i, post in enumerate(social.linkedin_posts, start=1):
        md += f"### Post {i}\n\n{post}\n\n"
    md += "## Thread\n\n"
    for post in social.thread:
        md += "- " + post.replace("\n", " ") + "\n"
    md += (
        f"\n## Email snippet\n\n{social.email_snippet}\n\n## Instagram\n\n{social.instagram_post}\n\n"
        f"## Facebook\n\n{social.facebook_post}\n"
    )
    return md


def _summary_markdown(article: pb.Article) -> str:
    if not article.HasField("summary"):
        return f"# Summary: {article.title}\n\nNot requested for this article.\n"
    summary = article.summary
    md = f"# Summary: {article.title}\n\n**Key value:** {summary.key_value}\n\n{summary.overview}\n\n## Takeaways\n\n"
    for takeaway in summary.takeaways:
        md += f"- {takeaway}\n"
    return md


_VERDICTS = {
    pb.VERDICT_SUPPORTED: "supported",
    pb.VERDICT_UNSUPPORTED: "unsupported",
    pb.VERDICT_UNVERIFIABLE: "unverifiable",
    pb.VERDICT_QUOTED: "quoted",
}
_KINDS = {pb.SOURCE_KIND_KNOWLEDGE_BASE: "knowledge_base", pb.SOURCE_KIND_WEB: "web"}


def _fact_check_json(article: pb.Article) -> Json:
    if not article.HasField("fact_check"):
        return None
    report = article.fact_check
    return {
        "passed": report.passed,
        "quoted": report.quoted,
        "supported": report.supported,
        "unsupported": report.unsupported,
        "unverifiable": report.unverifiable,
        "invalid_citations": list(report.invalid_citations),
        "claims": [
            {
                "text": c.text,
                "kind": c.kind,
                "verdict": _VERDICTS.get(c.verdict, "unspecified"),
                "source_id": c.source_id,
                "source_url": c.source_url,
                "evidence": c.evidence,
            }
            for c in report.claims
        ],
    }


def _run_metrics_json(article: pb.Article) -> Json:
    if not article.HasField("metrics"):
        return None
    m = article.metrics
    return {
        "total_duration_ms": _millis(m.total_duration),
        "phases": [{"phase": p.phase, "duration_ms": _millis(p.duration), "runs": p.runs} for p in m.phases],
        "agents": [
            {
                "agent": a.agent,
                "phase": a.phase,
                "duration_ms": _millis(a.duration),
                "provider": a.provider,
                "model": a.model,
                "input_tokens": a.usage.input_tokens,
                "output_tokens": a.usage.output_tokens,
                "cache_hit": a.cache_hit,
                "attempts": a.attempts,
                "calls": a.calls,
                "cached_calls": a.cached_calls,
                "estimated_cost_usd": a.estimated_cost_usd,
            }
            for a in m.agents
        ],
        "total_input_tokens": m.total_input_tokens,
        "total_output_tokens": m.total_output_tokens,
        "estimated_cost_usd": m.estimated_cost_usd,
        "cache_hits": m.cache_hits,
        "calls": m.calls,
        "cached_calls": m.cached_calls,
        "upstream_calls": [{"upstream": u.upstream, "calls": u.calls, "errors": u.errors} for u in m.upstream_calls],
        "revision_iterations": m.revision_iterations,
    }


def _source_kind(source: pb.Source) -> str:
    return _KINDS.get(source.kind, "unspecified")


def _source_json(s: pb.Source) -> Json:
    return {
        "id": s.id,
        "title": s.title,
        "url": s.url,
        "kind": _source_kind(s),
        "domain": s.domain,
        "authority_tier": s.authority_tier,
        "published": s.published,
        "relevance": s.relevance,
        "snippet": s.snippet,
    }


def _count(counts: dict[str, Json], key: str) -> None:
    previous = counts.get(key, 0)
    assert isinstance(previous, int)
    counts[key] = previous + 1


def _metadata_json(article: pb.Article, date: str, slug: str) -> Json:
    metadata = article.metadata
    seo, content, quality = metadata.seo, metadata.content, metadata.quality
    metrics = article.metrics

    by_tier: dict[str, Json] = {}
    by_domain: dict[str, Json] = {}
    by_kind: dict[str, Json] = {}
    for s in article.sources:
        _count(by_tier, str(s.authority_tier))
        _count(by_domain, s.domain)
        _count(by_kind, _source_kind(s))

    tokens_by_agent: dict[str, dict[str, int | float]] = {}
    agents: dict[str, Json] = {}
    for a in metrics.agents:
        entry = tokens_by_agent.setdefault(
            a.agent, {"input_tokens": 0, "output_tokens": 0, "estimated_cost_usd": 0.0, "runs": 0}
        )
        entry["input_tokens"] += a.usage.input_tokens
        entry["output_tokens"] += a.usage.output_tokens
        entry["estimated_cost_usd"] += a.estimated_cost_usd
        entry["runs"] += 1
        agents[a.agent] = {"provider": a.provider, "model": a.model}

    return {
        "generation": {
            "job_id": article.job_id,
            "topic": article.topic,
            "slug": slug,
            "date": date,
            "created_at_unix": article.created_at.seconds if article.HasField("created_at") else None,
            "audience": metadata.audience,
            "tone": metadata.tone,
            "target_word_count": metadata.target_word_count,
            "custom_instructions": metadata.custom_instructions,
            "agents": agents,
        },
        "seo": {
            "title": seo.title,
            "meta_description": seo.meta_description,
            "keywords": list(seo.keywords),
        },
        "content_metrics": {
            "word_count": content.word_count,
            "section_count": content.section_count,
            "citation_count": content.citation_count,
            "distinct_sources_cited": content.distinct_sources_cited,
            "paragraph_count": content.paragraph_count,
            "sentence_count": content.sentence_count,
            "reading_time_minutes": content.reading_time_minutes,
            "flesch_reading_ease": content.flesch_reading_ease,
            "avg_sentence_words": content.avg_sentence_words,
        },
        "quality": {
            "overall": quality.overall,
            "contract_satisfied": quality.contract_satisfied,
            "contract_violations": list(quality.contract_violations),
            "fact_check_score": quality.fact_check_score,
            "revision_iterations": quality.revision_iterations,
        },
        "key_themes": list(metadata.key_themes),
        "outline": list(metadata.outline),
        "sources": {
            "count": len(article.sources),
            "by_authority_tier": by_tier,
            "by_domain": by_domain,
            "by_kind": by_kind,
            "list": [_source_json(s) for s in article.sources],
        },
        "cost": {
            "total_input_tokens": metrics.total_input_tokens,
            "total_output_tokens": metrics.total_output_tokens,
            "estimated_cost_usd": metrics.estimated_cost_usd,
            "tokens_by_agent": {agent: dict(entry) for agent, entry in tokens_by_agent.items()},
        },
        "related_articles": [
            {"title": r.title, "url": r.url, "relevance": r.relevance} for r in metadata.related_articles
        ],
    }


# -- serde_json's pretty printer ------------------------------------------------------------


def _pretty(value: Json) -> str:
    """`serde_json::to_string_pretty` of `value`, and a newline."""
    parts: list[str] = []
    _write(value, parts, "")
    parts.append("\n")
    return "".join(parts)


def _write(value: Json, out: list[str], indent: str) -> None:
    if isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        inner = indent + "  "
        out.append("{")
        for i, key in enumerate(sorted(value)):
            out.append(("," if i else "") + "\n" + inner + _string(key) + ": ")
            _write(value[key], out, inner)
        out.append("\n" + indent + "}")
    elif isinstance(value, list):
        if not value:
            out.append("[]")
            return
        inner = indent + "  "
        out.append("[")
        for i, item in enumerate(value):
            out.append(("," if i else "") + "\n" + inner)
            _write(item, out, inner)
        out.append("\n" + indent + "]")
    elif value is None:
        out.append("null")
    elif isinstance(value, bool):
        out.append("true" if value else "false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(rust_float(value))
    else:
        out.append(_string(value))


def _string(text: str) -> str:
    # The same escapes as serde_json: quote, backslash, \b \f \n \r \t, other C0 as \u00xx.
    return json.dumps(text, ensure_ascii=False)


def rust_float(value: float) -> str:
    """An f64 as serde_json writes it (the shortest digits that read back the same, in its
    layout): `0.0`, `12.5`, `0.00001`, `1e-7`, `1.5e+16`; NaN and infinities (which
    serde_json's `json!` makes `null`) as `null`."""
    if not math.isfinite(value):
        return "null"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0.0"
    _, digit_tuple, exponent = Decimal(repr(abs(value))).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    assert isinstance(exponent, int)
    exponent += len(digit_tuple) - len(digits)  # the zeros stripped move into the exponent
    length = len(digits)
    kk = length + exponent  # 10^(kk-1) <= value < 10^kk
    if 0 <= exponent and kk <= 16:
        text = digits + "0" * exponent + ".0"
    elif 0 < kk <= 16:
        text = digits[:kk] + "." + digits[kk:]
    elif -5 < kk <= 0:
        text = "0." + "0" * -kk + digits
    else:
        mantissa = digits if length == 1 else f"{digits[0]}.{digits[1:]}"
        text = f"{mantissa}e{kk - 1:+d}" if kk > 0 else f"{mantissa}e{kk - 1}"
    return sign + text
