//! Reading the documents of `--kb-dir`, which nobody here wrote: a folder synced from a
//! repository may hold symlinks out of it (`environ.txt -> /proc/self/environ`), devices,
//! FIFOs, binaries, Latin-1 text or a file of gigabytes. Only regular files whose resolved
//! path stays inside the folder are read, each up to [`MAX_DOCUMENT_BYTES`]; what is left
//! out is named in a warning at start-up, and never stops the start.
use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
};

use super::KbError;

/// A document larger than this is left out (the largest of the real collection is 66 kB).
pub const MAX_DOCUMENT_BYTES: u64 = 8 << 20;

/// Why a file of the folder was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skipped {
    /// A symlink whose target lies outside the folder (or does not resolve).
    Outside,
    /// A directory, device, FIFO or socket, or a symlink to one.
    NotRegular,
    TooLarge(u64),
    /// Holds NUL bytes: not text.
    Binary,
    Unreadable(String),
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Outside => write!(f, "a link out of the folder; only files inside it are read"),
            Self::NotRegular => write!(f, "not a regular file"),
            Self::TooLarge(size) => write!(
                f,
                "{size} bytes, over the {MAX_DOCUMENT_BYTES}-byte limit of a document"
            ),
            Self::Binary => write!(f, "binary (holds NUL bytes), not text"),
            Self::Unreadable(error) => write!(f, "cannot be read: {error}"),
        }
    }
}

/// A document's text, and whether it had to be read lossily (not UTF-8).
pub struct Document {
    pub path: PathBuf,
    pub text: String,
    pub lossy: bool,
}

/// The `.md`, `.markdown` and `.txt` entries of `dir`, by name. Only the folder itself
/// failing to list is an error.
pub fn document_paths(dir: &Path) -> Result<Vec<PathBuf>, KbError> {
    let io = |source| KbError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("md" | "markdown" | "txt")
            )
        })
        .collect();
    paths.sort();
    Ok(paths)
}

/// Reads `path`, an entry of the folder `root` (canonical), if it may be read.
pub fn read_document(root: &Path, path: &Path) -> Result<Document, Skipped> {
    // The resolved path, symlinks followed: it must stay inside the folder.
    let resolved = fs::canonicalize(path).map_err(|_| Skipped::Outside)?;
    if !resolved.starts_with(root) {
        return Err(Skipped::Outside);
    }
    // Looked at before opening: opening a FIFO would wait for a writer.
    let is_file = fs::symlink_metadata(&resolved).is_ok_and(|m| m.file_type().is_file());
    if !is_file {
        return Err(Skipped::NotRegular);
    }
    let file = fs::File::open(&resolved).map_err(|e| Skipped::Unreadable(e.to_string()))?;
    // The opened file's own type and size (not the path's, which may change meanwhile).
    let meta = file
        .metadata()
        .map_err(|e| Skipped::Unreadable(e.to_string()))?;
    if !meta.file_type().is_file() {
        return Err(Skipped::NotRegular);
    }
    if meta.len() > MAX_DOCUMENT_BYTES {
        return Err(Skipped::TooLarge(meta.len()));
    }
    // Bounded even if the file grows (or lies about its size, as /proc files do).
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(MAX_DOCUMENT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Skipped::Unreadable(e.to_string()))?;
    if bytes.len() as u64 > MAX_DOCUMENT_BYTES {
        return Err(Skipped::TooLarge(bytes.len() as u64));
    }
    if bytes.contains(&0) {
        return Err(Skipped::Binary);
    }
    let (text, lossy) = match String::from_utf8(bytes) {
        Ok(text) => (text, false),
        Err(error) => (String::from_utf8_lossy(error.as_bytes()).into_owned(), true),
    };
    Ok(Document {
        path: path.to_path_buf(),
        text,
        lossy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_inside_the_folder_are_read() {
        let base = std::env::temp_dir().join(format!("dakota-kb-files-{}", std::process::id()));
        let (dir, outside) = (base.join("kb"), base.join("outside"));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&dir).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(dir.join("a.md"), "# A\n\nText.").unwrap();
        fs::write(outside.join("secret.md"), "OPENAI_API_KEY=sk-1").unwrap();
        let link = |target: &Path, name: &str| {
            let _ = fs::remove_file(dir.join(name));
            std::os::unix::fs::symlink(target, dir.join(name)).unwrap();
        };
        link(Path::new("/proc/self/environ"), "environ.txt");
        link(Path::new("/etc/passwd"), "passwd.md");
        link(&outside.join("secret.md"), "secret.md");
        link(&dir.join("a.md"), "inside.md");
        link(Path::new("/nowhere"), "dangling.md");
        link(Path::new("/dev/zero"), "zero.txt");
        fs::create_dir_all(dir.join("folder.md")).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .arg(dir.join("fifo.md"))
            .status();
        assert!(fifo.unwrap().success());
        fs::write(dir.join("latin1.txt"), b"Caf\xe9 society.").unwrap();
        fs::write(dir.join("binary.md"), b"PK\x03\x04\x00\x00").unwrap();

        let root = fs::canonicalize(&dir).unwrap();
        let paths = document_paths(&dir).unwrap();
        let read = |name: &str| {
            let path = paths.iter().find(|p| p.ends_with(name)).unwrap();
            read_document(&root, path)
        };
        for name in ["environ.txt", "passwd.md", "secret.md", "dangling.md"] {
            assert_eq!(read(name).err(), Some(Skipped::Outside), "{name}");
        }
        assert_eq!(read("zero.txt").err(), Some(Skipped::Outside));
        assert_eq!(read("folder.md").err(), Some(Skipped::NotRegular));
        assert_eq!(read("fifo.md").err(), Some(Skipped::NotRegular));
        assert_eq!(read("binary.md").err(), Some(Skipped::Binary));
        assert_eq!(read("inside.md").unwrap().text, "# A\n\nText.");
        let latin1 = read("latin1.txt").unwrap();
        assert!(latin1.lossy && latin1.text.starts_with("Caf\u{fffd} society"));
        let _ = fs::remove_dir_all(&base);
    }
}
