//! The local knowledge base: Markdown/text files indexed with tantivy BM25, chunked by heading.
use std::{
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
        Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter,
        TextAnalyzer,
    },
};

use crate::server::{
    resilience::CallScope,
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
    Upstream(#[from] crate::server::upstream::UpstreamError),
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

    /// Several queries at once, one hit list per query in order, and the upstream attempts
    /// it took (1 for the local index).
    pub async fn search_batch(
        &self,
        scope: &CallScope,
        queries: &[String],
        limit: usize,
    ) -> (Result<Vec<Vec<KbHit>>, KbError>, u32) {
        match self {
            Self::Local(kb) => {
                let (kb, queries) = (kb.clone(), queries.to_vec());
                let result = tokio::task::spawn_blocking(move || kb.hits_batch(&queries, limit))
                    .await
                    .map_err(|e| KbError::Task(e.to_string()))
                    .and_then(|r| r);
                (result, 1)
            }
            Self::VectorStore(store) => {
                let searches = queries.iter().map(|q| store.search(scope, q, limit));
                let answers = futures_util::future::join_all(searches).await;
                let attempts = answers.iter().map(|(_, a)| *a).max().unwrap_or(1);
                let result = answers
                    .into_iter()
                    .map(|(hits, _)| {
                        Ok(hits?
                            .into_iter()
                            .map(|h| vector_hit(&store.store_id, h))
                            .collect())
                    })
                    .collect();
                (result, attempts)
            }
        }
    }
}

fn vector_hit(store_id: &str, hit: VectorHit) -> KbHit {
    let text = hit.text();
    KbHit {
        title: hit
            .attribute("title")
            .unwrap_or_else(|| hit.filename.clone()),
        url: hit
            .attribute("url")
            .unwrap_or_else(|| format!("openai-vector-store://{store_id}/{}", hit.file_id)),
        section: hit.attribute("section").unwrap_or_default(),
        document_text: text.clone(),
        text,
        score: hit.score,
        date: hit.attribute("date"),
    }
}

/// One heading-delimited piece of a document: the unit that is indexed, found and cited.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// File stem of the document, unique in the knowledge base.
    pub document: String,
    pub title: String,
    pub url: String,
    pub date: Option<String>,
    /// The heading the chunk sits under (the title for text before the first `##`).
    pub section: String,
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
}

impl KnowledgeBase {
    /// Reads every `.md`, `.markdown` and `.txt` file in `dir` and indexes it in memory.
    /// Blocking: run it off the async executor.
    pub fn load(dir: &Path) -> Result<Self, KbError> {
        let io_error = |source| KbError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut paths: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(io_error)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("md" | "markdown" | "txt")
                    )
            })
            .collect();
        paths.sort();
        let mut chunks = Vec::new();
        for path in &paths {
            let raw = fs::read_to_string(path).map_err(|source| KbError::Io {
                path: path.clone(),
                source,
            })?;
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("document");
            chunks.extend(parse_document(stem, &raw));
        }
        Self::from_chunks(chunks, paths.len())
    }

    fn from_chunks(chunks: Vec<Chunk>, documents: usize) -> Result<Self, KbError> {
        let mut schema = Schema::builder();
        let text_options = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(TOKENIZER)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        );
        let title = schema.add_text_field("title", text_options.clone());
        let section = schema.add_text_field("section", text_options.clone());
        let body = schema.add_text_field("body", text_options);
        let chunk_field = schema.add_u64_field("chunk", STORED | INDEXED);
        let index = Index::create_in_ram(schema.build());
        index.tokenizers().register(
            TOKENIZER,
            TextAnalyzer::builder(SimpleTokenizer::default())
                .filter(RemoveLongFilter::limit(40))
                .filter(LowerCaser)
                .filter(StopWordFilter::new(Language::English).ok_or_else(|| {
                    tantivy::TantivyError::InvalidArgument("no English stop words".into())
                })?)
                .filter(Stemmer::new(Language::English))
                .build(),
        );
        let mut writer: IndexWriter<TantivyDocument> =
            index.writer_with_num_threads(1, 32_000_000)?;
        for (i, chunk) in chunks.iter().enumerate() {
            let mut doc = TantivyDocument::default();
            doc.add_text(title, &chunk.title);
            doc.add_text(section, &chunk.section);
            doc.add_text(body, &chunk.text);
            doc.add_u64(chunk_field, i as u64);
            writer.add_document(doc)?;
        }
        writer.commit()?;
        let reader = index.reader()?;
        let mut parser = QueryParser::for_index(&index, vec![title, section, body]);
        parser.set_field_boost(title, 2.0);
        parser.set_field_boost(section, 1.5);
        Ok(Self {
            reader,
            parser,
            chunk_field,
            chunks,
            documents,
        })
    }

    /// BM25 search over title, section and text; any query text is accepted (operators are
    /// not interpreted, so user input cannot produce a syntax error).
    pub fn search(&self, query: &str, limit: usize) -> Result<Vec<Hit>, KbError> {
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
        let top = searcher.search(&query, &TopDocs::with_limit(limit).order_by_score())?;
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
        Ok(hits)
    }

    /// [`KnowledgeBase::search_batch`] as [`KbHit`]s, each carrying its whole document.
    pub fn hits_batch(&self, queries: &[String], limit: usize) -> Result<Vec<Vec<KbHit>>, KbError> {
        Ok(self
            .search_batch(queries, limit)?
            .into_iter()
            .map(|hits| hits.into_iter().filter_map(|h| self.hit(h)).collect())
            .collect())
    }

    fn hit(&self, hit: Hit) -> Option<KbHit> {
        let chunk = self.chunk(hit.chunk)?;
        let mut document_text = format!("{}\n\n", chunk.text);
        for other in self.document_chunks(hit.chunk) {
            if other.section != chunk.section {
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
    pub fn search_batch(&self, queries: &[String], limit: usize) -> Result<Vec<Vec<Hit>>, KbError> {
        queries.iter().map(|q| self.search(q, limit)).collect()
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

/// Splits one file into chunks by heading; front matter gives title, url and date.
fn parse_document(stem: &str, raw: &str) -> Vec<Chunk> {
    let (front, body) = split_front_matter(raw);
    let field = |key: &str| front.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let title = field("title")
        .or_else(|| {
            body.lines()
                .find_map(|l| l.strip_prefix("# ").map(|t| t.trim().to_string()))
        })
        .unwrap_or_else(|| text::title_case(&stem.replace(['-', '_'], " ")));
    let url = field("url").unwrap_or_else(|| format!("kb://{stem}"));
    let date = field("date");

    let mut chunks = Vec::new();
    let mut section = title.clone();
    let mut current = String::new();
    let mut flush = |section: &str, current: &mut String| {
        let text = current.trim().to_string();
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
        current.clear();
    };
    for line in body.lines() {
        if let Some(heading) = line.strip_prefix('#') {
            flush(&section, &mut current);
            let heading = heading.trim_start_matches('#').trim();
            if !heading.is_empty() {
                section = heading.to_string();
            }
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    flush(&section, &mut current);
    chunks
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
        let kb = KnowledgeBase::from_chunks(parse_document("pc", DOC), 1)?;
        let hits = kb.search("liquidity: (downturn", 5)?;
        let first = hits
            .first()
            .and_then(|h| kb.chunk(h.chunk))
            .map(|c| c.section.clone());
        assert_eq!(first.as_deref(), Some("Liquidity Risk"));
        // Stemming: "lender" finds "lenders"; nonsense finds nothing.
        assert!(!kb.search("lender", 5)?.is_empty());
        assert!(kb.search("zzzz qqqq", 5)?.is_empty());
        assert!(kb.search("  ", 5)?.is_empty());
        let batch = kb.search_batch(&["fees".into(), "liquidity".into()], 1)?;
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
