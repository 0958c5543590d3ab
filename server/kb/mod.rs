//! The local knowledge base: Markdown/text files indexed with tantivy BM25, chunked by heading.
use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use tantivy::{
    Index, IndexReader, IndexWriter, TantivyDocument,
    collector::TopDocs,
    query::QueryParser,
    schema::{
        Field, INDEXED, IndexRecordOption, STORED, Schema, TextFieldIndexing, TextOptions, Value,
    },
    tokenizer::{
        Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, StopWordFilter, TextAnalyzer,
    },
};

mod files;
mod stem;
mod stored;

use crate::{
    resilience::{CallScope, Called, Calls},
    text,
    upstream::vector_store::{VectorHit, VectorStoreClient},
};

const TOKENIZER: &str = "en_stem";

#[derive(Debug, thiserror::Error)]
pub enum KbError {
    #[error("knowledge base folder {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("knowledge base index: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("{0}")]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error("knowledge base search task failed: {0}")]
    Task(String),
}

/// A search hit as researchers and `SearchKnowledgeBase` see it, whichever knowledge base
/// answered.
#[derive(Debug, Clone, PartialEq)]
pub struct KbHit {
    pub title: String,
    pub url: String,
    pub section: String,
    /// The matching chunk.
    pub text: String,
    pub score: f32,
    pub date: Option<String>,
    /// The whole document when the knowledge base has it (the chunk first), else the chunk.
    pub document_text: String,
}

/// The knowledge base in use: the local index (default) or an OpenAI vector store.
#[derive(Clone)]
pub enum KnowledgeSource {
    Local(Arc<KnowledgeBase>),
    VectorStore(Arc<VectorStoreClient>),
}

impl KnowledgeSource {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Local(_) => "local",
            Self::VectorStore(_) => "openai-vector-store",
        }
    }

    /// Several queries at once, one hit list per query in order, at most `per_document`
    /// passages of any one document in a list.
    pub async fn search_batch(
        &self,
        scope: &CallScope,
        queries: &[String],
        limit: usize,
        per_document: usize,
    ) -> Searched {
        match self {
            Self::Local(kb) => {
                let (kb, queries) = (kb.clone(), queries.to_vec());
                let result = tokio::task::spawn_blocking(move || {
                    kb.hits_batch(&queries, limit, per_document)
                })
                .await
                .map_err(|e| KbError::Task(e.to_string()))
                .and_then(|r| r);
                // Searched in the process: no upstream call, nothing a cache could save.
                Searched {
                    hits: result,
                    attempts: 1,
                    calls: Calls::default(),
                }
            }
            Self::VectorStore(store) => {
                let searches = queries.iter().map(|q| store.search(scope, q, limit));
                let answers = futures_util::future::join_all(searches).await;
                let attempts = answers.iter().map(|a| a.attempts).max().unwrap_or(0);
                let calls = answers.iter().map(Called::calls).sum();
                let hits = answers
                    .into_iter()
                    .map(|answer| {
                        let hits: Vec<KbHit> = answer
                            .result?
                            .into_iter()
                            .map(|h| vector_hit(&store.store_id, h))
                            .collect();
                        Ok(at_most_per_document(hits, per_document, |h| h.url.clone()))
                    })
                    .collect();
                Searched {
                    hits,
                    attempts,
                    calls,
                }
            }
        }
    }
}

/// `work` on each item, on every core (at most 4 threads), the results in the items' order;
/// the first error, if any.
fn in_parallel<T: Sync, R: Send>(
    items: &[T],
    work: impl Fn(&T) -> Result<R, KbError> + Sync,
) -> Result<Vec<R>, KbError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let per_thread = items.len().div_ceil(threads).max(1);
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(per_thread)
            .map(|part| scope.spawn(move || part.iter().map(work).collect::<Result<Vec<R>, _>>()))
            .collect();
        let mut results = Vec::with_capacity(items.len());
        for handle in handles {
            let part = handle
                .join()
                .map_err(|_| KbError::Task("a knowledge-base worker panicked".into()))??;
            results.extend(part);
        }
        Ok(results)
    })
}

/// The answer of [`KnowledgeSource::search_batch`].
#[derive(Debug)]
pub struct Searched {
    pub hits: Result<Vec<Vec<KbHit>>, KbError>,
    /// Upstream attempts (1 for the local index; 0 when every query came from the cache).
    pub attempts: u32,
    /// One per query sent to a vector store, and those the cache answered; none for the
    /// local index.
    pub calls: Calls,
}

fn vector_hit(store_id: &str, hit: VectorHit) -> KbHit {
    let text = hit.text();
    KbHit {
        title: text::bounded_title(
            &hit.attribute("title")
                .unwrap_or_else(|| hit.filename.clone()),
        ),
        url: hit
            .attribute("url")
            .and_then(|url| text::http_url(&url))
            .unwrap_or_else(|| format!("openai-vector-store://{store_id}/{}", hit.file_id)),
        section: text::bounded_title(&hit.attribute("section").unwrap_or_default()),
        document_text: text.clone(),
        text,
        score: hit.score,
        date: hit.attribute("date"),
    }
}

/// One heading-delimited piece of a document: the unit that is indexed, found and cited.
/// A protobuf message too: a kept index stores its chunks so (see [`stored`]).
#[derive(Clone, prost::Message)]
pub struct Chunk {
    /// File stem of the document, unique in the knowledge base.
    #[prost(string, tag = "1")]
    pub document: String,
    #[prost(string, tag = "2")]
    pub title: String,
    #[prost(string, tag = "3")]
    pub url: String,
    #[prost(string, optional, tag = "4")]
    pub date: Option<String>,
    /// The heading the chunk sits under (the title for text before the first `##`).
    #[prost(string, tag = "5")]
    pub section: String,
    #[prost(string, tag = "6")]
    pub text: String,
}

/// A search hit: the chunk (an index into [`KnowledgeBase::chunk`]) and its BM25 score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub chunk: usize,
    pub score: f32,
}

pub struct KnowledgeBase {
    reader: IndexReader,
    parser: QueryParser,
    chunk_field: Field,
    chunks: Vec<Chunk>,
    documents: usize,
    /// Opened from `--kb-index-dir` rather than built at this start.
    opened: bool,
}

impl KnowledgeBase {
    /// Reads every `.md`, `.markdown` and `.txt` file in `dir` and indexes it: in memory, or
    /// with `store` (`--kb-index-dir`) on disk, where a later start with the same documents
    /// opens it instead. Blocking: run it off the async executor.
    pub fn load(dir: &Path, store: Option<&Path>) -> Result<Self, KbError> {
        let candidates = files::document_paths(dir)?;
        let root = fs::canonicalize(dir).map_err(|source| KbError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let started = std::time::Instant::now();
        // Documents are read on every core, in order; what may not be read is left out.
        let read = in_parallel(&candidates, |path| Ok(files::read_document(&root, path)))?;
        let (mut paths, mut raws) = (Vec::new(), Vec::new());
        for (path, document) in candidates.iter().zip(read) {
            match document {
                Ok(document) => {
                    if document.lossy {
                        tracing::warn!(path = %path.display(), "knowledge-base document is not UTF-8: read with its invalid bytes replaced");
                    }
                    paths.push(document.path);
                    raws.push(document.text);
                }
                Err(why) => {
                    tracing::warn!(path = %path.display(), reason = %why, "knowledge-base file left out");
                }
            }
        }
        // With a store, the kept index's name: a fingerprint of these documents.
        let kept = store.map(|store| (store, stored::fingerprint(&paths, &raws)));
        if let Some((store, fingerprint)) = &kept {
            match stored::open(store, fingerprint) {
                Ok(Some(kb)) => return Ok(kb),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(
                        %error, store = %store.display(),
                        "the kept knowledge-base index cannot be opened; indexing again"
                    );
                    stored::discard(store, fingerprint);
                }
            }
        }
        let chunks = chunk_documents(&paths, &raws)?;
        let chunked_at = started.elapsed();
        let kb = match kept {
            Some((store, fingerprint)) => stored::build(store, &fingerprint, chunks, paths.len()),
            None => Self::in_memory(chunks, paths.len()),
        };
        tracing::debug!(
            chunk_ms = chunked_at.as_secs_f64() * 1000.0,
            index_ms = (started.elapsed() - chunked_at).as_secs_f64() * 1000.0,
            "knowledge base load, by step"
        );
        kb
    }

    fn in_memory(chunks: Vec<Chunk>, documents: usize) -> Result<Self, KbError> {
        let index = Index::create_in_ram(schema().0);
        Self::index_into(&index, &chunks)?;
        Self::with_index(&index, chunks, documents, false)
    }

    /// Indexes `chunks` into the empty `index` (in memory or in a folder), the chunk's
    /// number beside each.
    fn index_into(index: &Index, chunks: &[Chunk]) -> Result<(), KbError> {
        register_tokenizer(index)?;
        let fields = Fields::of(&index.schema())?;
        // One indexing thread per core (tantivy wants at least 15 MB of budget each).
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let mut writer: IndexWriter<TantivyDocument> =
            index.writer_with_num_threads(threads, threads * 20_000_000)?;
        for (i, chunk) in chunks.iter().enumerate() {
            let mut doc = TantivyDocument::default();
            doc.add_text(fields.title, &chunk.title);
            doc.add_text(fields.section, &chunk.section);
            doc.add_text(fields.body, &chunk.text);
            doc.add_u64(fields.chunk, i as u64);
            writer.add_document(doc)?;
        }
        writer.commit()?;
        Ok(())
    }

    /// The knowledge base over an index already built of `chunks`.
    fn with_index(
        index: &Index,
        chunks: Vec<Chunk>,
        documents: usize,
        opened: bool,
    ) -> Result<Self, KbError> {
        register_tokenizer(index)?;
        let fields = Fields::of(&index.schema())?;
        // The index never changes once built: no watcher on its files.
        let reader = index
            .reader_builder()
            .reload_policy(tantivy::ReloadPolicy::Manual)
            .try_into()?;
        let mut parser =
            QueryParser::for_index(index, vec![fields.title, fields.section, fields.body]);
        parser.set_field_boost(fields.title, 2.0);
        parser.set_field_boost(fields.section, 1.5);
        Ok(Self {
            reader,
            parser,
            chunk_field: fields.chunk,
            chunks,
            documents,
            opened,
        })
    }

    /// Whether the index was opened from `--kb-index-dir` (else it was built at this start).
    pub fn opened(&self) -> bool {
        self.opened
    }

    /// BM25 search over title, section and text, at most `per_document` passages of one
    /// document; any query text is accepted (operators are not interpreted, so user input
    /// cannot produce a syntax error).
    pub fn search(
        &self,
        query: &str,
        limit: usize,
        per_document: usize,
    ) -> Result<Vec<Hit>, KbError> {
        // Only letters and digits, in lower case: the parser then sees words only (no
        // `+`, `-`, quotes, fields, nor the upper-case operators AND, OR and NOT).
        let cleaned: String = query
            .chars()
            .map(|c| if c.is_alphanumeric() { c } else { ' ' })
            .flat_map(char::to_lowercase)
            .collect();
        if cleaned.trim().is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let (query, _errors) = self.parser.parse_query_lenient(&cleaned);
        let searcher = self.reader.searcher();
        // Enough candidates that the best passages of `limit` documents are among them.
        let candidates = limit.saturating_mul(4).saturating_add(16);
        let top = searcher.search(&query, &TopDocs::with_limit(candidates).order_by_score())?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let doc: TantivyDocument = searcher.doc(address)?;
            if let Some(chunk) = doc.get_first(self.chunk_field).and_then(|v| v.as_u64()) {
                hits.push(Hit {
                    chunk: chunk as usize,
                    score,
                });
            }
        }
        let mut hits = at_most_per_document(hits, per_document, |h| {
            self.chunk(h.chunk)
                .map(|c| c.document.clone())
                .unwrap_or_default()
        });
        hits.truncate(limit);
        Ok(hits)
    }

    /// [`KnowledgeBase::search_batch`] as [`KbHit`]s, each carrying its whole document.
    pub fn hits_batch(
        &self,
        queries: &[String],
        limit: usize,
        per_document: usize,
    ) -> Result<Vec<Vec<KbHit>>, KbError> {
        Ok(self
            .search_batch(queries, limit, per_document)?
            .into_iter()
            .map(|hits| hits.into_iter().filter_map(|h| self.hit(h)).collect())
            .collect())
    }

    fn hit(&self, hit: Hit) -> Option<KbHit> {
        let chunk = self.chunk(hit.chunk)?;
        let mut document_text = format!("{}\n\n", chunk.text);
        for other in self.document_chunks(hit.chunk) {
            if !std::ptr::eq(other, chunk) {
                document_text.push_str(&other.text);
                document_text.push_str("\n\n");
            }
        }
        Some(KbHit {
            title: chunk.title.clone(),
            url: chunk.url.clone(),
            section: chunk.section.clone(),
            text: chunk.text.clone(),
            score: hit.score,
            date: chunk.date.clone(),
            document_text,
        })
    }

    /// Several queries in one call, one result list per query, in order.
    pub fn search_batch(
        &self,
        queries: &[String],
        limit: usize,
        per_document: usize,
    ) -> Result<Vec<Vec<Hit>>, KbError> {
        queries
            .iter()
            .map(|q| self.search(q, limit, per_document))
            .collect()
    }

    pub fn chunk(&self, index: usize) -> Option<&Chunk> {
        self.chunks.get(index)
    }

    /// Every chunk of the document a chunk belongs to, in document order (chunks of one
    /// document are stored contiguously).
    pub fn document_chunks(&self, index: usize) -> &[Chunk] {
        let Some(document) = self.chunks.get(index).map(|c| &c.document) else {
            return &[];
        };
        let start = self.chunks[..index]
            .iter()
            .rposition(|c| &c.document != document)
            .map_or(0, |i| i + 1);
        let end = self.chunks[index..]
            .iter()
            .position(|c| &c.document != document)
            .map_or(self.chunks.len(), |i| i + index);
        &self.chunks[start..end]
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    pub fn document_count(&self) -> usize {
        self.documents
    }
}

/// The passages of every document, in order: parsed on every core, boilerplate found across
/// them, then chunked.
fn chunk_documents(paths: &[PathBuf], raws: &[String]) -> Result<Vec<Chunk>, KbError> {
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

/// The index's schema: title, section and text searched; the chunk's number kept.
fn schema() -> (Schema, Fields) {
    let mut schema = Schema::builder();
    let text_options = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(TOKENIZER)
            // Queries are words only (see `search`): no phrase queries, so no positions.
            .set_index_option(IndexRecordOption::WithFreqs),
    );
    let fields = Fields {
        title: schema.add_text_field("title", text_options.clone()),
        section: schema.add_text_field("section", text_options.clone()),
        body: schema.add_text_field("body", text_options),
        chunk: schema.add_u64_field("chunk", STORED | INDEXED),
    };
    (schema.build(), fields)
}

struct Fields {
    title: Field,
    section: Field,
    body: Field,
    chunk: Field,
}

impl Fields {
    /// The fields of an index built with [`schema`] (one opened from disk included).
    fn of(schema: &Schema) -> Result<Self, KbError> {
        Ok(Self {
            title: schema.get_field("title")?,
            section: schema.get_field("section")?,
            body: schema.get_field("body")?,
            chunk: schema.get_field("chunk")?,
        })
    }
}

/// English words: lower case, stop words out, stemmed (the same at indexing and query time).
fn register_tokenizer(index: &Index) -> Result<(), KbError> {
    index.tokenizers().register(
        TOKENIZER,
        TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(RemoveLongFilter::limit(40))
            .filter(LowerCaser)
            .filter(StopWordFilter::new(Language::English).ok_or_else(|| {
                tantivy::TantivyError::InvalidArgument("no English stop words".into())
            })?)
            .filter(stem::MemoStemmer)
            .build(),
    );
    Ok(())
}

/// `hits` (best first) with at most `per_document` of any one document, as `document` names it.
fn at_most_per_document<T>(
    hits: Vec<T>,
    per_document: usize,
    document: impl Fn(&T) -> String,
) -> Vec<T> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    hits.into_iter()
        .filter(|hit| {
            let n = seen.entry(document(hit)).or_default();
            *n += 1;
            *n <= per_document.max(1)
        })
        .collect()
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
                let prose = text.split_whitespace().collect::<Vec<_>>().join(" ");
                let sentences: Vec<Unit> = text::sentences(&prose)
                    .into_iter()
                    .map(|s| Unit::new(s, &mut scratch))
                    .collect();
                if !sentences.is_empty() {
                    out.push(Block::Prose(sentences));
                }
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
            Event::SoftBreak | Event::HardBreak => text.push(' '),
            _ => {}
        }
    }
    out
}

/// The keys of a document's units: each prose sentence and each list item or table row.
fn unit_keys(blocks: &[Block]) -> impl Iterator<Item = u64> + '_ {
    blocks.iter().flat_map(|block| match block {
        Block::Prose(sentences) => sentences.iter().map(|s| s.key).collect(),
        Block::Item(unit) | Block::Row(unit, false) => vec![unit.key],
        _ => Vec::new(),
    })
}

/// Sentences and lines found in at least a quarter of the documents (and in three at least):
/// calls to action, footers, share bars. They are never indexed nor used as evidence.
fn boilerplate<'a>(documents: impl Iterator<Item = &'a [Block]>) -> HashSet<u64> {
    let mut total = 0;
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for blocks in documents {
        total += 1;
        let distinct: HashSet<u64> = unit_keys(blocks).collect();
        for key in distinct {
            *counts.entry(key).or_default() += 1;
        }
    }
    let threshold = (total / 4).max(3);
    counts
        .into_iter()
        .filter(|(_, n)| *n >= threshold)
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
    let (front, body) = split_front_matter(raw);
    Parsed {
        stem: stem.to_string(),
        front,
        blocks: blocks(body),
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
                passage_piece(block, boilerplate)
            }
            Block::Row(line, true) => {
                let piece = passage_piece(block, boilerplate);
                if piece.is_some() {
                    table_head = Some(line.text.clone());
                }
                piece
            }
            _ => passage_piece(block, boilerplate),
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
        field("date").map(|d| text::truncate_words(&d, 40)),
    )
}

/// What a block adds to its passage, boilerplate left out (`None`: nothing). Sub-headings (a
/// ranked entry, "### 3. Firm") stay inside their section as text.
fn passage_piece(block: &Block, boilerplate: &HashSet<u64>) -> Option<String> {
    match block {
        Block::Heading(_, heading) => Some(format!("### {heading}\n")),
        Block::Prose(sentences) => {
            let kept: Vec<&str> = sentences
                .iter()
                .filter(|s| !boilerplate.contains(&s.key))
                .map(|s| s.text.as_str())
                .collect();
            (!kept.is_empty()).then(|| format!("{}\n", kept.join(" ")))
        }
        Block::Item(line) | Block::Row(line, _) if boilerplate.contains(&line.key) => None,
        Block::Item(line) => Some(format!("- {}\n", line.text)),
        Block::Row(line, _) => Some(format!("{}\n", line.text)),
    }
}

/// One document parsed alone (no boilerplate known): for tests and single files.
#[cfg(test)]
fn parse_document(stem: &str, raw: &str) -> Vec<Chunk> {
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

    const DOC: &str = "---\ntitle: Private Credit Basics\nurl: https://kb.example/pc\ndate: 2026-01-05\n---\n# Private Credit Basics\n\nDirect lenders finance mid-market companies.\n\n## Liquidity Risk\nLoans cannot be sold quickly in a downturn.\n\n## Fees\nManagers charge 1.5% on invested capital.\n";

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
    fn search_ranks_matching_chunks_and_tolerates_syntax() -> Result<(), KbError> {
        let kb = KnowledgeBase::in_memory(parse_document("pc", DOC), 1)?;
        let hits = kb.search("liquidity: (downturn", 5, 5)?;
        let first = hits
            .first()
            .and_then(|h| kb.chunk(h.chunk))
            .map(|c| c.section.clone());
        assert_eq!(first.as_deref(), Some("Liquidity Risk"));
        // Stemming: "lender" finds "lenders"; nonsense finds nothing.
        assert!(!kb.search("lender", 5, 5)?.is_empty());
        assert!(kb.search("zzzz qqqq", 5, 5)?.is_empty());
        assert!(kb.search("  ", 5, 5)?.is_empty());
        let batch = kb.search_batch(&["fees".into(), "liquidity".into()], 1, 1)?;
        assert_eq!(batch.len(), 2);
        let whole: Vec<&str> = kb
            .document_chunks(1)
            .iter()
            .map(|c| c.section.as_str())
            .collect();
        assert_eq!(whole, ["Private Credit Basics", "Liquidity Risk", "Fees"]);
        Ok(())
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
