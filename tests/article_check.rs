//! What a reader would hold against an article written from a document collection, measured
//! independently of the server's code: sentences found in three or more documents (template
//! text), cited documents that do not name the topic's names, sentences holding two or more
//! list numbers (a list fused into prose), repeated sentences, and words against the target.
//! Used by the e2e test over `tests/fixtures/` and by `cargo bench --bench corpus -- --kb-dir`.
use std::{collections::HashMap, fs, path::Path};

/// One document of the collection as the check sees it: its link and its text.
struct Document {
    url: String,
    /// Lower case, `*` removed, whitespace collapsed: what a lifted sentence is looked for in.
    normalised: String,
    raw: String,
}

/// The documents of a `--kb-dir`.
pub struct Collection {
    documents: Vec<Document>,
}

impl Collection {
    /// Every `.md`, `.markdown` and `.txt` file of `dir` (not recursive).
    pub fn load(dir: &Path) -> Self {
        let mut documents = Vec::new();
        let mut paths: Vec<_> = fs::read_dir(dir)
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        paths.sort();
        for path in paths {
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if !matches!(ext, "md" | "markdown" | "txt") {
                continue;
            }
            let Ok(raw) = fs::read_to_string(&path) else {
                continue;
            };
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            documents.push(Document {
                url: own_url(&raw).unwrap_or_else(|| format!("kb://{stem}")),
                normalised: normalise(&raw),
                raw,
            });
        }
        Self { documents }
    }

    pub fn len(&self) -> usize {
        self.documents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.documents.is_empty()
    }

    fn containing(&self, sentence: &str) -> usize {
        let needle = normalise(sentence);
        let needle = needle.trim_end_matches(['.', '!', '?']);
        self.documents
            .iter()
            .filter(|d| d.normalised.contains(needle))
            .count()
    }

    fn by_url(&self, url: &str) -> Option<&Document> {
        self.documents.iter().find(|d| d.url == url)
    }
}

/// A document's own address: front matter `url:` or a metadata line `Original URL: https://...`.
fn own_url(raw: &str) -> Option<String> {
    raw.lines().take(40).find_map(|line| {
        let line = line.trim().trim_start_matches(['-', ' ']).replace('*', "");
        let (key, value) = line.split_once(':')?;
        let key = key.trim().to_lowercase();
        let value = value.trim().trim_matches(['"', '\'']);
        (matches!(key.as_str(), "url" | "original url") && value.starts_with("http"))
            .then(|| value.to_string())
    })
}

fn normalise(text: &str) -> String {
    text.replace('*', "")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The check of one article.
#[derive(Debug, Default)]
pub struct Report {
    pub topic: String,
    pub target: usize,
    pub words: usize,
    /// The article carries an `INSUFFICIENT_MATERIAL` warning.
    pub insufficient: bool,
    pub boilerplate: Vec<String>,
    pub off_topic: Vec<String>,
    pub fused: Vec<String>,
    pub repeated: Vec<String>,
    pub cited: usize,
}

impl Report {
    /// Within 15% of the target, or short with the warning that says so.
    pub fn length_ok(&self) -> bool {
        let off = (self.words as f64 - self.target as f64).abs() / self.target as f64;
        off <= 0.15 || (self.insufficient && self.words < self.target)
    }

    pub fn passes(&self) -> bool {
        self.boilerplate.is_empty()
            && self.off_topic.is_empty()
            && self.fused.is_empty()
            && self.repeated.is_empty()
            && self.length_ok()
    }

    pub const HEADER: &str = "| topic | words / target | INSUFFICIENT_MATERIAL | cited documents | in 3+ documents | cited, not naming the topic's names | two or more list numbers | repeated | passes |\n|---|---|---|---|---|---|---|---|---|";

    pub fn row(&self) -> String {
        format!(
            "| {} | {} / {} | {} | {} | {} | {} | {} | {} | {} |",
            self.topic,
            self.words,
            self.target,
            if self.insufficient { "yes" } else { "no" },
            self.cited,
            self.boilerplate.len(),
            self.off_topic.len(),
            self.fused.len(),
            self.repeated.len(),
            if self.passes() { "yes" } else { "no" },
        )
    }
}

/// Topic words a source must name: those the topic writes with a capital after its first word
/// (places, firms, months, acronyms) and the years it names, as written.
pub fn topic_names(topic: &str) -> Vec<String> {
    const SMALL: &[&str] = &[
        "The", "And", "Of", "In", "For", "A", "An", "To", "On", "With",
    ];
    topic
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .skip(1)
        .filter(|w| {
            let year = w.len() == 4 && w.bytes().all(|b| b.is_ascii_digit());
            year || (w.starts_with(char::is_uppercase) && !SMALL.contains(w))
        })
        .map(str::to_string)
        .collect()
}

/// The units of an article a reader reads as statements: each list item, and each sentence of
/// its prose, links removed; headings left out.
pub fn statements(markdown: &str) -> Vec<String> {
    let body = markdown
        .strip_prefix("---\n")
        .and_then(|rest| rest.split_once("\n---\n").map(|(_, body)| body))
        .unwrap_or(markdown);
    let mut out = Vec::new();
    for line in body.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with('|') {
            continue;
        }
        let line = strip_links(line);
        let item = line.strip_prefix("- ").or_else(|| {
            let (n, rest) = line.split_once(". ")?;
            n.bytes().all(|b| b.is_ascii_digit()).then_some(rest)
        });
        match item {
            Some(item) => out.push(item.trim().to_string()),
            None => out.extend(sentences(&line)),
        }
    }
    out.retain(|s| s.chars().any(char::is_alphanumeric));
    out
}

/// `text` without Markdown links (`([Title](url))` citations and `[text](url)`).
fn strip_links(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](") else {
            break;
        };
        let Some(end) = rest[open + close..].find(')') else {
            break;
        };
        out.push_str(&rest[..open]);
        rest = &rest[open + close + end + 1..];
    }
    out.push_str(rest);
    out.replace("()", "")
        .replace(" .", ".")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sentences: a full stop, `!` or `?` before a space and a capital or a digit ends one.
fn sentences(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut current = String::new();
    for (i, &c) in chars.iter().enumerate() {
        current.push(c);
        let ends = matches!(c, '.' | '!' | '?')
            && chars.get(i + 1) == Some(&' ')
            && chars
                .get(i + 2)
                .is_some_and(|n| n.is_uppercase() || n.is_ascii_digit());
        if ends {
            out.push(current.trim().to_string());
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

/// A word that is a list number followed by more text: `3.`, `3)`, `#3`.
fn list_numbers(statement: &str) -> usize {
    let words: Vec<&str> = statement.split_whitespace().collect();
    words
        .iter()
        .enumerate()
        .filter(|(i, w)| {
            let digits = w
                .strip_prefix('#')
                .or_else(|| w.strip_suffix(['.', ')']))
                .unwrap_or("");
            !digits.is_empty()
                && digits.len() <= 3
                && digits.bytes().all(|b| b.is_ascii_digit())
                && *i + 1 < words.len()
        })
        .count()
}

/// The article's words as a reader counts them (prose and list items, no headings or links).
pub fn words(markdown: &str) -> usize {
    statements(markdown)
        .iter()
        .map(|s| {
            s.split_whitespace()
                .filter(|w| w.chars().any(char::is_alphanumeric))
                .count()
        })
        .sum()
}

/// Checks one article: its Markdown, the URLs of its sources, and its warnings' codes.
pub fn check(
    collection: &Collection,
    topic: &str,
    target: usize,
    markdown: &str,
    warnings: &[String],
) -> Report {
    let statements = statements(markdown);
    let names = topic_names(topic);
    let cited: Vec<String> = {
        let mut urls: Vec<String> = markdown
            .split("](")
            .skip(1)
            .filter_map(|rest| rest.split(')').next())
            .map(str::to_string)
            .collect();
        urls.sort();
        urls.dedup();
        urls
    };
    let off_topic = cited
        .iter()
        .filter(|url| {
            collection.by_url(url).is_some_and(|doc| {
                let words: Vec<&str> = doc.raw.split(|c: char| !c.is_alphanumeric()).collect();
                !names.iter().all(|name| words.contains(&name.as_str()))
            })
        })
        .cloned()
        .collect();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for statement in &statements {
        *seen.entry(normalise(statement)).or_default() += 1;
    }
    Report {
        topic: topic.to_string(),
        target,
        words: words(markdown),
        insufficient: warnings.iter().any(|w| w == "INSUFFICIENT_MATERIAL"),
        boilerplate: statements
            .iter()
            .filter(|s| s.split_whitespace().count() >= 4 && collection.containing(s) >= 3)
            .cloned()
            .collect(),
        off_topic,
        fused: statements
            .iter()
            .filter(|s| list_numbers(s) >= 2)
            .cloned()
            .collect(),
        repeated: seen
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(s, _)| s)
            .collect(),
        cited: cited.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_items_and_sentences_without_links() {
        let md = "# T\n\nOne fact here ([A](https://a.example/x)). Two facts 1. here 2. there.\n\n1. Firm — AUM: $4B ([A](https://a.example/x)).\n- Item two\n";
        let s = statements(md);
        assert_eq!(
            s,
            [
                "One fact here.",
                "Two facts 1. here 2. there.",
                "Firm — AUM: $4B.",
                "Item two"
            ]
        );
        assert_eq!(list_numbers(&s[1]), 2);
        assert_eq!(
            topic_names("The top offices in California and Texas"),
            ["California", "Texas"]
        );
    }
}
