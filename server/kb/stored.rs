//! The local knowledge base's index kept on disk between starts (`--kb-index-dir`).
//!
//! Each index lives in a folder named by a fingerprint of the documents (names and contents)
//! and of this build's index format, so a restart with the same documents opens it
//! (memory-mapped) instead of parsing, chunking and indexing them again, and any change to a
//! document builds a new one. A folder is complete once it has its name: an index is built
//! under a temporary name and renamed, so replicas sharing the folder never read half of one.
use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use prost::Message as _;
use tantivy::Index;

use super::{Chunk, KbError, KnowledgeBase, schema};

/// The index format: change it when parsing, chunking, the tokenizer or the schema change, so
/// indexes kept by an older build are not opened by this one.
const FORMAT: &str = "dakota-kb-index-1";
/// The chunks of a kept index, next to tantivy's files.
const CHUNKS_FILE: &str = "dakota-chunks.pb";
const BUILDING_PREFIX: &str = ".building-";
/// A temporary folder older than this is left over from a start that died while indexing.
const ABANDONED_AFTER: Duration = Duration::from_secs(600);

/// What a kept index stores beside tantivy's files.
#[derive(Clone, prost::Message)]
struct StoredChunks {
    #[prost(message, repeated, tag = "1")]
    chunks: Vec<Chunk>,
    #[prost(uint64, tag = "2")]
    documents: u64,
}

/// The name of the index of these documents (file names and contents, in order).
pub(super) fn fingerprint(paths: &[PathBuf], raws: &[String]) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for part in [FORMAT, env!("CARGO_PKG_VERSION")] {
        hasher.update(part.as_bytes());
        hasher.update(&[0]);
    }
    for (path, raw) in paths.iter().zip(raws) {
        let name = path
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or(b"");
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name);
        hasher.update(&(raw.len() as u64).to_le_bytes());
        hasher.update(raw.as_bytes());
    }
    format!("{:032x}", hasher.digest128())
}

/// The kept index of `fingerprint`, if `store` has it.
pub(super) fn open(store: &Path, fingerprint: &str) -> Result<Option<KnowledgeBase>, KbError> {
    let folder = store.join(fingerprint);
    if !folder.is_dir() {
        return Ok(None);
    }
    let file = folder.join(CHUNKS_FILE);
    let invalid = |message: String| KbError::Io {
        path: file.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, message),
    };
    let bytes = fs::read(&file).map_err(|source| KbError::Io {
        path: file.clone(),
        source,
    })?;
    let stored = StoredChunks::decode(bytes.as_slice()).map_err(|e| invalid(e.to_string()))?;
    let index = Index::open_in_dir(&folder)?;
    let documents = usize::try_from(stored.documents).unwrap_or(usize::MAX);
    let kb = KnowledgeBase::with_index(&index, stored.chunks, documents, true)?;
    // A stored index whose passages do not match its chunks is not one this build wrote.
    let passages = kb.reader.searcher().num_docs();
    if passages != kb.chunks.len() as u64 {
        return Err(invalid(format!(
            "{passages} indexed passages for {} chunks",
            kb.chunks.len()
        )));
    }
    Ok(Some(kb))
}

/// Indexes `chunks` into `store` under `fingerprint` and opens the result. When the folder
/// cannot be written (read-only, full), the index is built in memory as without a store: a
/// cache that fails costs a rebuild at the next start, never the start itself.
pub(super) fn build(
    store: &Path,
    fingerprint: &str,
    chunks: Vec<Chunk>,
    documents: usize,
) -> Result<KnowledgeBase, KbError> {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let building = store.join(format!(
        "{BUILDING_PREFIX}{fingerprint}-{}-{nanos}",
        std::process::id()
    ));
    let stored = StoredChunks {
        chunks,
        documents: documents as u64,
    };
    match write(&building, &stored) {
        Ok(()) => {}
        Err(error) => {
            tracing::warn!(
                %error, store = %store.display(),
                "cannot keep the knowledge-base index; indexing in memory"
            );
            let _ = fs::remove_dir_all(&building);
            return KnowledgeBase::in_memory(stored.chunks, documents);
        }
    }
    let folder = store.join(fingerprint);
    // Another replica may have kept the same index first: then its folder is used.
    if fs::rename(&building, &folder).is_err() {
        let _ = fs::remove_dir_all(&building);
    }
    prune(store, fingerprint);
    match Index::open_in_dir(&folder) {
        Ok(index) => KnowledgeBase::with_index(&index, stored.chunks, documents, false),
        Err(error) => {
            tracing::warn!(%error, folder = %folder.display(), "the kept knowledge-base index cannot be opened; indexing in memory");
            KnowledgeBase::in_memory(stored.chunks, documents)
        }
    }
}

/// Removes the kept index of `fingerprint` (one that cannot be opened), so it is built again.
pub(super) fn discard(store: &Path, fingerprint: &str) {
    let _ = fs::remove_dir_all(store.join(fingerprint));
}

/// The index and its chunks, written into `folder` (made for it).
fn write(folder: &Path, stored: &StoredChunks) -> Result<(), KbError> {
    let io = |source| KbError::Io {
        path: folder.to_path_buf(),
        source,
    };
    fs::create_dir_all(folder).map_err(io)?;
    let index = Index::create_in_dir(folder, schema().0)?;
    // Built like the in-memory index; only the chunks are written here.
    KnowledgeBase::index_into(&index, &stored.chunks)?;
    let mut file = fs::File::create(folder.join(CHUNKS_FILE)).map_err(io)?;
    file.write_all(&stored.encode_to_vec())
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    Ok(())
}

/// Removes the indexes of other documents and temporary folders abandoned by a dead start:
/// a store keeps one knowledge base's index (replicas on another version of the documents
/// may remove this one; that costs them or us one rebuild, and open indexes stay readable).
fn prune(store: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(store) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let old_index =
            name.len() == 32 && name != keep && name.bytes().all(|b| b.is_ascii_hexdigit());
        let abandoned = name.starts_with(BUILDING_PREFIX)
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > ABANDONED_AFTER));
        if old_index || abandoned {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder under the system's temporary folder.
    fn folder(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "dakota-kb-store-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn documents() -> PathBuf {
        let dir = folder("docs");
        for (name, topic) in [
            ("credit", "Private credit"),
            ("pensions", "Pension buy-ins"),
        ] {
            let doc = format!(
                "---\ntitle: {topic}\n---\n# {topic}\n\n## Risks\n\n{topic} carry liquidity risk in a downturn.\n\n## Fees\n\nManagers of {topic} charge fees on committed capital.\n"
            );
            fs::write(dir.join(format!("{name}.md")), doc).unwrap();
        }
        dir
    }

    fn hits(kb: &KnowledgeBase, query: &str) -> Vec<(String, String)> {
        kb.search(query, 5, 5)
            .unwrap()
            .into_iter()
            .filter_map(|h| kb.chunk(h.chunk))
            .map(|c| (c.document.clone(), c.section.clone()))
            .collect()
    }

    /// The fingerprint folders a store holds.
    fn kept(store: &Path) -> Vec<String> {
        fs::read_dir(store)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_restart_with_the_same_documents_opens_the_kept_index() {
        let (docs, store) = (documents(), folder("store"));
        let first = KnowledgeBase::load(&docs, Some(&store)).unwrap();
        assert!(!first.opened());
        let second = KnowledgeBase::load(&docs, Some(&store)).unwrap();
        assert!(second.opened());
        assert_eq!(second.chunk_count(), first.chunk_count());
        assert_eq!(second.document_count(), 2);
        for query in ["liquidity downturn", "pension fees", "credit"] {
            assert_eq!(hits(&second, query), hits(&first, query), "{query}");
        }
        assert!(!hits(&second, "liquidity").is_empty());

        // A changed document is indexed again, and the old index removed.
        let changed = fs::read_to_string(docs.join("credit.md")).unwrap()
            + "\nInfrastructure debt is senior secured.\n";
        fs::write(docs.join("credit.md"), changed).unwrap();
        let third = KnowledgeBase::load(&docs, Some(&store)).unwrap();
        assert!(!third.opened());
        assert_eq!(hits(&third, "infrastructure").len(), 1);
        assert!(hits(&second, "infrastructure").is_empty());
        assert_eq!(kept(&store).len(), 1, "{:?}", kept(&store));
        let _ = (fs::remove_dir_all(docs), fs::remove_dir_all(store));
    }

    #[test]
    fn a_damaged_or_unwritable_store_costs_a_rebuild_not_the_start() {
        let (docs, store) = (documents(), folder("store"));
        let built = KnowledgeBase::load(&docs, Some(&store)).unwrap();
        let [index] = kept(&store).try_into().unwrap();
        // Damaged chunks, then damaged tantivy files: both are rebuilt.
        fs::write(
            store.join(&index).join(CHUNKS_FILE),
            b"\xff\xff not protobuf",
        )
        .unwrap();
        let again = KnowledgeBase::load(&docs, Some(&store)).unwrap();
        assert!(!again.opened());
        assert_eq!(hits(&again, "liquidity"), hits(&built, "liquidity"));
        fs::write(store.join(&index).join("meta.json"), b"{").unwrap();
        let again = KnowledgeBase::load(&docs, Some(&store)).unwrap();
        assert!(!again.opened());
        assert!(KnowledgeBase::load(&docs, Some(&store)).unwrap().opened());

        // A store that cannot be written (here a file): indexed in memory.
        let file = store.join("not-a-folder");
        fs::write(&file, b"").unwrap();
        let in_memory = KnowledgeBase::load(&docs, Some(&file)).unwrap();
        assert!(!in_memory.opened());
        assert_eq!(hits(&in_memory, "liquidity"), hits(&built, "liquidity"));
        let _ = (fs::remove_dir_all(docs), fs::remove_dir_all(store));
    }
}
