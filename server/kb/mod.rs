//! The local knowledge base: Markdown/text files indexed with tantivy BM25, chunked by heading.
//!
//! Here the knowledge sources and the index's search; `markdown` cuts documents into chunks,
//! `files` finds and reads them, `stored` keeps an index on disk, `stem` stems its words.
use std::{
    collections::HashMap,
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
mod lists;
mod markdown;
mod records;
mod stem;
mod stored;

use crate::{
    resilience::{CallScope, Called, Calls},
    text,
    upstream::vector_store::{VectorHit, VectorStoreClient},
};

use markdown::chunk_documents;

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

#[cfg(test)]
mod tests {
    use super::markdown::parse_document;
    use super::*;

    pub(super) const DOC: &str = "---\ntitle: Private Credit Basics\nurl: https://kb.example/pc\ndate: 2026-01-05\n---\n# Private Credit Basics\n\nDirect lenders finance mid-market companies.\n\n## Liquidity Risk\nLoans cannot be sold quickly in a downturn.\n\n## Fees\nManagers charge 1.5% on invested capital.\n";

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
}
