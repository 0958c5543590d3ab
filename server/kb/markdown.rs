//! Markdown into passages: documents parsed into blocks (pulldown-cmark), boilerplate found
//! across them, and each cut into heading-delimited chunks of at most `MAX_PASSAGE_CHARS`.
use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
};

use super::{
    Chunk, KbError, in_parallel,
    lists::{self, Piece},
    records,
};
use crate::text;

/// The passages of every document, in order: parsed on every core, boilerplate found across
/// them, then chunked.
pub(super) fn chunk_documents(paths: &[PathBuf], raws: &[String]) -> Result<Vec<Chunk>, KbError> {
    let documents: Vec<(&PathBuf, &String)> = paths.iter().zip(raws).collect();
    let parsed = in_parallel(&documents, |(path, raw)| {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("document");
        Ok(parse(stem, raw))
    })?;
    let boilerplate = boilerplate(parsed.iter().map(|p| p.blocks.as_slice()));
    if !boilerplate.is_empty() {
        tracing::info!(
            units = boilerplate.len(),
            "boilerplate recognised across documents; left out of the index"
        );
    }
    Ok(in_parallel(&parsed, |p| Ok(chunks_of(p, &boilerplate)))?
        .into_iter()
        .flatten()
        .collect())
}

/// Headings that exporting CMSs put on every page ("Content", "Overview"): they say nothing
/// about their text and never become section titles.
const GENERIC_HEADINGS: &[&str] = &[
    "content",
    "contents",
    "table of contents",
    "introduction",
    "intro",
    "overview",
    "summary",
    "article information",
    "article info",
    "details",
    "main content",
    "body",
    "more",
    "related articles",
    "share this article",
];

/// A heading that names no topic of its own.
pub fn is_generic_heading(heading: &str) -> bool {
    let lower = heading.trim().trim_end_matches(':').to_lowercase();
    GENERIC_HEADINGS.contains(&lower.as_str())
}

/// The largest passage indexed as one chunk; a longer section is split between blocks.
const MAX_PASSAGE_CHARS: usize = 1_500;

/// One block of a Markdown body as the knowledge base keeps it.
#[derive(Debug, Clone, PartialEq)]
enum Block {
    Heading(u8, String),
    /// A paragraph, as its sentences.
    Prose(Vec<Unit>),
    /// A list item, nested items flattened, each on its own line.
    Item(Unit),
    /// A table row; `true` for the header row.
    Row(Unit, bool),
}

/// A sentence, list item or table row, whitespace collapsed, with the key that finds it
/// again across documents (its lower-case text, hashed): boilerplate is counted and left out
/// by key, so each unit is normalised once.
#[derive(Debug, Clone, PartialEq)]
struct Unit {
    text: String,
    key: u64,
}

impl Unit {
    /// `text` (whitespace already collapsed); `scratch` is reused for its lower case.
    fn new(mut text: String, scratch: &mut String) -> Self {
        // A unit is kept whole in one passage: one without an end (a 1 MB list item) is cut.
        if text.len() > MAX_PASSAGE_CHARS {
            text = text::truncate_words(&text, MAX_PASSAGE_CHARS);
        }
        scratch.clear();
        scratch.extend(text.chars().flat_map(char::to_lowercase));
        Self {
            key: xxhash_rust::xxh3::xxh3_64(scratch.as_bytes()),
            text,
        }
    }
}

/// The blocks of a Markdown body, parsed with pulldown-cmark: headings, paragraphs, list
/// items and table rows, with inline markup reduced to its text (links to their text).
fn blocks(body: &str) -> Vec<Block> {
    use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};
    let mut out = Vec::new();
    let mut text = String::new();
    let mut cells: Vec<String> = Vec::new();
    // Open list items: text of an item is flushed when a nested item or its end comes.
    let mut items = 0usize;
    let mut in_head = false;
    let mut scratch = String::new();
    let flush_item = |text: &mut String, out: &mut Vec<Block>, scratch: &mut String| {
        let item = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if !item.is_empty() {
            out.push(Block::Item(Unit::new(item, scratch)));
        }
        text.clear();
    };
    for event in Parser::new_ext(body, Options::ENABLE_TABLES) {
        match event {
            Event::Start(Tag::Item) => {
                if items > 0 {
                    flush_item(&mut text, &mut out, &mut scratch);
                }
                text.clear();
                items += 1;
            }
            // Code is not evidence: its text is dropped (a `##` inside a fence is no heading).
            Event::Start(Tag::CodeBlock(_)) | Event::End(TagEnd::CodeBlock) => text.clear(),
            Event::Start(Tag::Table(_)) => text.clear(),
            Event::End(TagEnd::Item) => {
                flush_item(&mut text, &mut out, &mut scratch);
                items = items.saturating_sub(1);
            }
            Event::Start(Tag::Heading { .. } | Tag::Paragraph) if items == 0 => text.clear(),
            Event::End(TagEnd::Heading(level)) => {
                out.push(Block::Heading(level as u8, text::bounded_title(&text)));
                text.clear();
            }
            Event::End(TagEnd::Paragraph) if items == 0 => {
                paragraph(&text, &mut out, &mut scratch);
                text.clear();
            }
            Event::End(TagEnd::Paragraph) => text.push(' '),
            Event::Start(Tag::TableHead) => in_head = true,
            Event::End(TagEnd::TableCell) => {
                cells.push(text.split_whitespace().collect::<Vec<_>>().join(" "));
                text.clear();
            }
            Event::End(TagEnd::TableHead | TagEnd::TableRow) => {
                if cells.iter().any(|c| !c.is_empty()) {
                    let row = format!("| {} |", cells.join(" | "));
                    out.push(Block::Row(Unit::new(row, &mut scratch), in_head));
                }
                cells.clear();
                in_head = false;
            }
            Event::Text(t) | Event::Code(t) => text.push_str(&t),
            // A paragraph's lines may each be an item (see `paragraph`).
            Event::SoftBreak | Event::HardBreak => text.push('\n'),
            _ => {}
        }
    }
    out
}

/// A paragraph's blocks: its sentences, or the items it writes as prose (a numbered run, or
/// one item per line), with the prose around them.
fn paragraph(text: &str, out: &mut Vec<Block>, scratch: &mut String) {
    let lines: Vec<&str> = text.lines().collect();
    let prose = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let pieces = lists::line_items(&lines)
        .or_else(|| lists::enumeration(&prose))
        .or_else(|| records::records(&prose))
        .unwrap_or_else(|| vec![Piece::Prose(prose)]);
    let sentences = |prose: &str, out: &mut Vec<Block>, scratch: &mut String| {
        let units: Vec<Unit> = text::sentences(prose)
            .into_iter()
            .map(|s| Unit::new(s, scratch))
            .collect();
        if !units.is_empty() {
            out.push(Block::Prose(units));
        }
    };
    for piece in pieces {
        match piece {
            Piece::Prose(prose) => sentences(&prose, out, scratch),
            Piece::Item(item) => out.push(Block::Item(Unit::new(item, scratch))),
            Piece::Entry(label, prose) => {
                out.push(Block::Heading(3, text::bounded_title(&label)));
                sentences(&prose, out, scratch);
            }
        }
    }
}

/// A document's units: each prose sentence and each list item or table row.
fn units(blocks: &[Block]) -> impl Iterator<Item = &Unit> + '_ {
    blocks.iter().flat_map(|block| match block {
        Block::Prose(sentences) => sentences.iter().collect(),
        Block::Item(unit) | Block::Row(unit, false) => vec![unit],
        _ => Vec::new(),
    })
}

/// Documents that make a unit of [`TEMPLATE_WORDS`] words or more template text, whatever
/// the collection's size.
const TEMPLATE_DOCUMENTS: usize = 3;
const TEMPLATE_WORDS: usize = 4;

/// Whether a unit holds a quotation: a quote repeated across documents is still a quote.
fn is_quotation(text: &str) -> bool {
    text.contains(['“', '”']) || text.matches('"').count() >= 2
}

/// Template text, never indexed nor used as evidence: a sentence or line of several words
/// found in [`TEMPLATE_DOCUMENTS`] documents or more (quotations excepted), and any unit
/// found in a quarter of them (share bars: "Share this article").
fn boilerplate<'a>(documents: impl Iterator<Item = &'a [Block]>) -> HashSet<u64> {
    let mut total = 0;
    // Per key: documents holding it, and whether it is long enough to be template text.
    let mut counts: HashMap<u64, (usize, bool)> = HashMap::new();
    for blocks in documents {
        total += 1;
        let mut distinct: HashSet<u64> = HashSet::new();
        for unit in units(blocks) {
            if distinct.insert(unit.key) {
                let entry = counts.entry(unit.key).or_insert_with(|| {
                    let long = text::count_words(&unit.text) >= TEMPLATE_WORDS
                        && !is_quotation(&unit.text);
                    (0, long)
                });
                entry.0 += 1;
            }
        }
    }
    let quarter = (total / 4).max(TEMPLATE_DOCUMENTS);
    counts
        .into_iter()
        .filter(|(_, (n, long))| *n >= quarter || (*long && *n >= TEMPLATE_DOCUMENTS))
        .map(|(key, _)| key)
        .collect()
}

/// A parsed file: its front matter fields and its blocks.
struct Parsed {
    stem: String,
    front: Vec<(String, String)>,
    blocks: Vec<Block>,
}

fn parse(stem: &str, raw: &str) -> Parsed {
    let (mut front, body) = split_front_matter(raw);
    let mut blocks = blocks(body);
    metadata_list(&mut blocks, &mut front);
    Parsed {
        stem: stem.to_string(),
        front,
        blocks,
    }
}

/// Keys of a metadata list ("- **Original URL:** https://...") and the front matter field
/// each gives.
const METADATA_KEYS: &[(&str, &str)] = &[
    ("original url", "url"),
    ("url", "url"),
    ("canonical url", "url"),
    ("source url", "url"),
    ("published", "date"),
    ("date", "date"),
    ("published on", "date"),
    ("updated", "updated"),
    ("author", "author"),
    ("authors", "author"),
];

/// Takes a document's metadata list (its items of a metadata key before any prose) out of
/// its blocks and into its fields, where front matter did not set them: metadata is never
/// text.
fn metadata_list(blocks: &mut Vec<Block>, front: &mut Vec<(String, String)>) {
    let end = blocks
        .iter()
        .position(|b| matches!(b, Block::Prose(_) | Block::Row(..)))
        .unwrap_or(blocks.len());
    let mut kept = Vec::with_capacity(blocks.len());
    for (i, block) in std::mem::take(blocks).into_iter().enumerate() {
        let field = match &block {
            Block::Item(unit) if i < end => unit.text.split_once(':').and_then(|(key, value)| {
                let key = key.trim().to_lowercase();
                let (_, field) = METADATA_KEYS.iter().find(|(k, _)| *k == key)?;
                Some((field.to_string(), value.trim().to_string()))
            }),
            _ => None,
        };
        match field {
            Some((key, value)) => {
                if !front.iter().any(|(k, _)| *k == key) {
                    front.push((key, value));
                }
            }
            None => kept.push(block),
        }
    }
    *blocks = kept;
}

/// A date as `YYYY-MM-DD` when it is written `M/D/YY` or `M/D/YYYY` (as CMS exports write
/// it), else as written.
fn iso_date(date: &str) -> String {
    let parts: Vec<u32> = date
        .split('/')
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    match parts.as_slice() {
        [m, d, y] if (1..=12).contains(m) && (1..=31).contains(d) => {
            let year = if *y < 100 { 2000 + y } else { *y };
            format!("{year:04}-{m:02}-{d:02}")
        }
        _ => date.to_string(),
    }
}

/// Splits one document into passages: under the section heading they belong to (generic
/// headings do not count), at most [`MAX_PASSAGE_CHARS`] each, list items and table rows
/// kept whole and on lines of their own, boilerplate left out. Front matter gives title,
/// url and date and is never text.
fn chunks_of(parsed: &Parsed, boilerplate: &HashSet<u64>) -> Vec<Chunk> {
    let stem = parsed.stem.as_str();
    let (title, url, date) = document_meta(parsed);
    let mut chunks = Vec::new();
    let mut section = title.clone();
    let mut passage = String::new();
    let mut table_head: Option<String> = None;
    let mut flush = |section: &str, passage: &mut String| {
        let text = passage.trim().to_string();
        if text.chars().any(char::is_alphanumeric) {
            chunks.push(Chunk {
                document: stem.to_string(),
                title: title.clone(),
                url: url.clone(),
                date: date.clone(),
                section: section.to_string(),
                text,
            });
        }
        passage.clear();
    };
    let mut previous_was_line = false;
    // A document that repeats itself (exports often hold the text twice) gives each sentence
    // and line once.
    let mut seen: HashSet<u64> = HashSet::new();
    for block in &parsed.blocks {
        let piece = match block {
            Block::Heading(level, heading) if *level <= 2 => {
                table_head = None;
                flush(&section, &mut passage);
                // The title's own `#` line starts no section; any other `#` or `##` does,
                // unless it is one of the headings that name nothing.
                section = if heading.is_empty() || *heading == title || is_generic_heading(heading)
                {
                    title.clone()
                } else {
                    heading.clone()
                };
                continue;
            }
            Block::Heading(..) => {
                table_head = None;
                passage_piece(block, boilerplate, &mut seen)
            }
            Block::Row(line, true) => {
                let piece = passage_piece(block, boilerplate, &mut seen);
                if piece.is_some() {
                    table_head = Some(line.text.clone());
                }
                piece
            }
            _ => passage_piece(block, boilerplate, &mut seen),
        };
        let Some(piece) = piece else { continue };
        let line = matches!(block, Block::Item(_) | Block::Row(..));
        if passage.len() + piece.len() > MAX_PASSAGE_CHARS && !passage.is_empty() {
            flush(&section, &mut passage);
            // A table split across passages keeps its header in each.
            if let (Block::Row(_, false), Some(head)) = (block, &table_head) {
                passage.push_str(head);
                passage.push('\n');
            }
        } else if !passage.is_empty() && (!line || !previous_was_line) {
            passage.push('\n'); // a blank line between paragraphs, lists and tables
        }
        passage.push_str(&piece);
        previous_was_line = line;
    }
    flush(&section, &mut passage);
    chunks
}

/// A document's title (front matter, else its `#` heading, else its file name), url
/// (front matter, else `kb://<stem>`) and date.
fn document_meta(parsed: &Parsed) -> (String, String, Option<String>) {
    let field = |key: &str| {
        parsed
            .front
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let stem = parsed.stem.as_str();
    let title = field("title")
        .or_else(|| {
            parsed.blocks.iter().find_map(|b| match b {
                Block::Heading(1, t) => Some(t.clone()),
                _ => None,
            })
        })
        .unwrap_or_else(|| text::title_case(&stem.replace(['-', '_'], " ")));
    // Front matter is the document's word: bounded, and a link only if it is http(s).
    let title = text::bounded_title(&title);
    let url = field("url")
        .and_then(|url| text::http_url(&url))
        .unwrap_or_else(|| format!("kb://{stem}"));
    (
        title,
        url,
        field("date").map(|d| text::truncate_words(&iso_date(&d), 40)),
    )
}

/// What a block adds to its passage, boilerplate left out (`None`: nothing). Sub-headings (a
/// ranked entry, "### 3. Firm") stay inside their section as text.
fn passage_piece(
    block: &Block,
    boilerplate: &HashSet<u64>,
    seen: &mut HashSet<u64>,
) -> Option<String> {
    // Sentences and numbered items are given once a document (a line such as "- Metro:
    // Houston" may rightly stand under several firms).
    let mut left_out = |unit: &Unit, once: bool| {
        boilerplate.contains(&unit.key) || (once && !seen.insert(unit.key))
    };
    match block {
        Block::Heading(_, heading) => Some(format!("### {heading}\n")),
        Block::Prose(sentences) => {
            let kept: Vec<&str> = sentences
                .iter()
                .filter(|s| !left_out(s, true))
                .map(|s| s.text.as_str())
                .collect();
            (!kept.is_empty()).then(|| format!("{}\n", kept.join(" ")))
        }
        Block::Item(line) if left_out(line, is_numbered(&line.text)) => None,
        Block::Row(line, _) if left_out(line, false) => None,
        // A numbered item found in prose keeps its number: `3. Firm — AUM: $4B`.
        Block::Item(line) if is_numbered(&line.text) => Some(format!("{}\n", line.text)),
        Block::Item(line) => Some(format!("- {}\n", line.text)),
        Block::Row(line, _) => Some(format!("{}\n", line.text)),
    }
}

/// `3. ...`: a numbered list line.
fn is_numbered(line: &str) -> bool {
    line.split_once(". ").is_some_and(|(n, _)| {
        !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit())
    })
}

/// One document parsed alone (no boilerplate known): for tests and single files.
#[cfg(test)]
pub(super) fn parse_document(stem: &str, raw: &str) -> Vec<Chunk> {
    chunks_of(&parse(stem, raw), &HashSet::new())
}

/// `---`-delimited `key: value` lines at the top of a file, and the rest.
fn split_front_matter(raw: &str) -> (Vec<(String, String)>, &str) {
    let raw = raw.strip_prefix('\u{feff}').unwrap_or(raw);
    let Some(rest) = raw
        .strip_prefix("---\n")
        .or_else(|| raw.strip_prefix("---\r\n"))
    else {
        return (Vec::new(), raw);
    };
    let Some(end) = rest.find("\n---") else {
        return (Vec::new(), raw);
    };
    let fields = rest[..end]
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            let value = value.trim().trim_matches(['"', '\'']).to_string();
            Some((key.trim().to_lowercase(), value))
        })
        .collect();
    let body = rest[end + 4..].trim_start_matches(['-', '\r', '\n']);
    (fields, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kb::tests::DOC;

    #[test]
    fn documents_are_chunked_by_heading_with_front_matter() {
        let chunks = parse_document("pc", DOC);
        let sections: Vec<&str> = chunks.iter().map(|c| c.section.as_str()).collect();
        assert_eq!(
            sections,
            ["Private Credit Basics", "Liquidity Risk", "Fees"]
        );
        assert!(chunks.iter().all(|c| c.url == "https://kb.example/pc"));
        assert_eq!(chunks[2].date.as_deref(), Some("2026-01-05"));
        assert_eq!(
            chunks[1].text,
            "Loans cannot be sold quickly in a downturn."
        );
    }

    #[test]
    fn markdown_is_parsed_not_scanned() {
        let doc = "---\ntitle: Firms in Dallas\ntags:\n  - texas\n---\n## Content\n\nDallas is a hub for sponsors. It keeps growing.\n\n```\n## not a heading\n```\n\n1. **Keystone** - Metro: Dallas. AUM: $4B.\n2. **Ridge** - Metro: Plano.\n   - Founded: 1998\n\n| Firm | AUM |\n|---|---|\n| Keystone | $4B |\n\n## How Dallas Grew\n\nSee [the report](https://example.com/a_(b)) for more.\n";
        let chunks = parse_document("dallas", doc);
        let sections: Vec<&str> = chunks.iter().map(|c| c.section.as_str()).collect();
        // "Content" names nothing: its text sits under the title; the fenced `##` is text.
        assert_eq!(sections, ["Firms in Dallas", "How Dallas Grew"]);
        let text = &chunks[0].text;
        assert!(!text.contains("title:") && !text.contains("tags"), "{text}");
        assert!(
            text.contains(
                "- Keystone - Metro: Dallas. AUM: $4B.\n- Ridge - Metro: Plano.\n- Founded: 1998"
            ),
            "{text}"
        );
        assert!(
            text.contains("| Firm | AUM |\n| Keystone | $4B |"),
            "{text}"
        );
        assert_eq!(chunks[1].text, "See the report for more.");
    }

    #[test]
    fn sentences_repeated_across_documents_are_left_out() {
        let doc = |n: usize| {
            format!(
                "# Doc {n}\n\nFact number {n} about pensions is here. Start a free trial today.\n\n- Share this article\n"
            )
        };
        let parsed: Vec<Parsed> = (0..4).map(|n| parse(&format!("d{n}"), &doc(n))).collect();
        let boilerplate = boilerplate(parsed.iter().map(|p| p.blocks.as_slice()));
        let chunks = chunks_of(&parsed[0], &boilerplate);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].text, "Fact number 0 about pensions is here.");
    }

    #[test]
    fn a_metadata_list_is_metadata_and_a_repeated_text_is_given_once() {
        let doc = "# Offices in Fresno\n\n## Article Information\n- **Published:** 8/7/24\n- **Author:** Ana Ruiz\n- **Original URL:** https://blog.example/offices-in-fresno\n\n## Content\n\nFresno offices favour farmland and water rights. Fresno offices favour farmland and water rights.\n";
        let chunks = parse_document("article_001_offices", doc);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].url, "https://blog.example/offices-in-fresno");
        assert_eq!(chunks[0].date.as_deref(), Some("2024-08-07"));
        assert_eq!(
            chunks[0].text,
            "Fresno offices favour farmland and water rights."
        );
    }

    #[test]
    fn a_sentence_in_three_documents_is_template_text_whatever_their_number() {
        let doc = |n: usize| {
            let shared = if n < 3 {
                "Our directory changes how managers meet offices. “Patience wins every time,” the chair said."
            } else {
                ""
            };
            format!("# Doc {n}\n\nPlan {n} committed to credit this month. {shared}\n")
        };
        let parsed: Vec<Parsed> = (0..16).map(|n| parse(&format!("d{n}"), &doc(n))).collect();
        let boilerplate = boilerplate(parsed.iter().map(|p| p.blocks.as_slice()));
        assert_eq!(
            chunks_of(&parsed[0], &boilerplate)[0].text,
            "Plan 0 committed to credit this month. “Patience wins every time,” the chair said."
        );
    }

    #[test]
    fn long_sections_are_split_into_bounded_passages_keeping_table_headers() {
        let rows: String = (0..200)
            .map(|i| format!("| Firm {i} | ${i}B |\n"))
            .collect();
        let doc = format!("# Big\n\n## Ranked\n\n| Firm | AUM |\n|---|---|\n{rows}");
        let chunks = parse_document("big", &doc);
        assert!(chunks.len() > 1);
        for chunk in &chunks {
            assert!(
                chunk.text.len() <= MAX_PASSAGE_CHARS,
                "{}",
                chunk.text.len()
            );
            assert!(
                chunk.text.starts_with("| Firm | AUM |"),
                "{}",
                &chunk.text[..40]
            );
            assert_eq!(chunk.section, "Ranked");
        }
    }
}
