//! Plain-text and Markdown helpers shared by the agents and the contract checks.

/// Words too common to say anything about a topic.
const STOPWORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "an", "and", "any", "are", "as", "at", "be", "because",
    "been", "before", "between", "both", "but", "by", "can", "could", "do", "does", "each", "for",
    "from", "had", "has", "have", "how", "if", "in", "into", "is", "it", "its", "may", "more",
    "most", "much", "must", "not", "of", "on", "one", "or", "other", "our", "over", "own", "per",
    "rather", "same", "should", "so", "some", "such", "than", "that", "the", "their", "them",
    "then", "there", "these", "they", "this", "those", "through", "to", "under", "up", "very",
    "was", "we", "were", "what", "when", "where", "which", "while", "who", "why", "will", "with",
    "within", "without", "would", "you", "your",
];

/// Abbreviations after which a full stop does not end a sentence.
const ABBREVIATIONS: &[&str] = &[
    "e.g", "i.e", "u.s", "u.k", "mr", "mrs", "ms", "dr", "vs", "etc", "inc", "ltd", "co", "corp",
    "st", "no", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov",
    "dec",
];

/// The longest of [`STOPWORDS`], in bytes: a longer word is no stopword, without a search.
const LONGEST_STOPWORD: usize = 7;

/// A word of at most [`LONGEST_STOPWORD`] bytes as one integer (its bytes, zero-padded), so
/// the lookup compares integers; it runs for every word of every sentence scored.
fn packed(word: &str) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[..word.len()].copy_from_slice(word.as_bytes());
    u64::from_le_bytes(bytes)
}

static PACKED_STOPWORDS: std::sync::LazyLock<Vec<u64>> = std::sync::LazyLock::new(|| {
    let mut packed: Vec<u64> = STOPWORDS.iter().map(|w| packed(w)).collect();
    packed.sort_unstable();
    packed
});

pub fn is_stopword(word: &str) -> bool {
    word.len() <= LONGEST_STOPWORD && PACKED_STOPWORDS.binary_search(&packed(word)).is_ok()
}

/// The slug of SPEC §4: lower-case, non-word characters removed, spaces to `-`, at most 50 chars.
pub fn slugify(text: &str) -> String {
    let mut slug = String::new();
    for c in text.to_lowercase().chars() {
        if c.is_alphanumeric() || c == '_' {
            slug.push(c);
        } else if (c.is_whitespace() || c == '-') && !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let mut slug: String = slug.chars().take(50).collect();
    while slug.ends_with('-') {
        slug.pop();
    }
    if slug.is_empty() {
        slug.push_str("article");
    }
    slug
}

/// Lower-case word tokens (letters, digits, inner apostrophes and hyphens dropped).
pub fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
}

/// Tokens worth matching on: no stopwords, no single characters.
pub fn terms(text: &str) -> impl Iterator<Item = String> + '_ {
    tokens(text).filter(|t| t.chars().count() > 1 && !is_stopword(t))
}

/// Words as a reader counts them: whitespace-separated runs containing a letter or digit.
pub fn count_words(text: &str) -> usize {
    text.split_whitespace()
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .count()
}

/// Markdown reduced to the prose a reader sees: headings' marks, list bullets, emphasis and
/// links (citations) removed.
pub fn markdown_to_prose(markdown: &str) -> String {
    let mut prose = String::with_capacity(markdown.len());
    for line in markdown.lines() {
        let line = line.trim_start_matches('#').trim_start();
        let line = line.strip_prefix("- ").unwrap_or(line);
        prose.push_str(&strip_links(line).0);
        prose.push('\n');
    }
    prose.replace("**", "").replace('*', "")
}

/// Removes inline links (citations) from text, returning the rest and the link URLs.
pub fn strip_links(text: &str) -> (String, Vec<String>) {
    let mut prose = String::new();
    let mut urls = Vec::new();
    let mut at = 0;
    for link in links(text) {
        prose.push_str(text.get(at..link.start).unwrap_or_default());
        at = link.end;
        urls.push(link.url);
    }
    prose.push_str(text.get(at..).unwrap_or_default());
    let prose = prose
        .replace("()", "")
        .replace(" .", ".")
        .replace(" ,", ",");
    (prose.split_whitespace().collect::<Vec<_>>().join(" "), urls)
}

/// Word count of a Markdown article, as a reader would count it.
pub fn markdown_word_count(markdown: &str) -> usize {
    count_words(&markdown_to_prose(markdown))
}

/// A Markdown link (inline `[text](url)`, or an autolink) found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub text: String,
    pub url: String,
    /// Byte range of the whole link in the searched text.
    pub start: usize,
    pub end: usize,
}

/// Every link of a Markdown text, as pulldown-cmark parses it: a `)` inside a URL (balanced
/// or in `<...>`), brackets in the text and links inside code are handled as CommonMark says.
pub fn links(text: &str) -> Vec<Link> {
    use pulldown_cmark::{Event, Parser, Tag, TagEnd};
    let mut found = Vec::new();
    // Every link starts with `[` or `<`: most lines have neither and need no parser.
    if !text.contains(['[', '<']) {
        return found;
    }
    let mut open: Option<Link> = None;
    for (event, range) in Parser::new(text).into_offset_iter() {
        match event {
            Event::Start(Tag::Link { dest_url, .. }) => {
                open = Some(Link {
                    text: String::new(),
                    url: dest_url.to_string(),
                    start: range.start,
                    end: range.end,
                });
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some(link) = open.as_mut() {
                    link.text.push_str(&t);
                }
            }
            Event::End(TagEnd::Link) => found.extend(open.take()),
            _ => {}
        }
    }
    found
}

/// Splits prose into sentences, keeping abbreviations (`e.g.`) and decimals (`2.5%`) whole;
/// a blank line ends a sentence too. Each sentence's whitespace is collapsed to single spaces.
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    // The byte where the current sentence starts.
    let mut start = 0;
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        if !matches!(c, '.' | '!' | '?' | '\n') {
            continue;
        }
        let mut ahead = chars.clone().map(|(_, c)| c);
        let (next, after) = (ahead.next(), ahead.next());
        if c == '\n' {
            if next == Some('\n') {
                push_sentence(&mut out, &text[start..i]);
                start = i + 1;
            }
            continue;
        }
        let ends = match (next, after) {
            (None, _) => true,
            (Some(n), Some(a)) if n.is_whitespace() => {
                a.is_uppercase() || a.is_ascii_digit() || matches!(a, '"' | '“' | '‘' | '(')
            }
            _ => false,
        };
        let end = i + c.len_utf8();
        if ends && !(c == '.' && ends_with_abbreviation(&text[start..end])) {
            push_sentence(&mut out, &text[start..end]);
            start = end;
        }
    }
    push_sentence(&mut out, &text[start..]);
    out
}

fn ends_with_abbreviation(sentence: &str) -> bool {
    let last = sentence
        .trim_end_matches('.')
        .rsplit(char::is_whitespace)
        .next()
        .unwrap_or("");
    ABBREVIATIONS.iter().any(|a| last.eq_ignore_ascii_case(a))
}

/// `raw` with its whitespace collapsed, when it has a letter or a digit.
fn push_sentence(out: &mut Vec<String>, raw: &str) {
    if !raw.chars().any(char::is_alphanumeric) {
        return;
    }
    let mut sentence = String::with_capacity(raw.len());
    for word in raw.split_whitespace() {
        if !sentence.is_empty() {
            sentence.push(' ');
        }
        sentence.push_str(word);
    }
    out.push(sentence);
}

/// Title Case for headings: small words stay lower-case except at the start.
pub fn title_case(text: &str) -> String {
    const SMALL: &[&str] = &[
        "a", "an", "and", "as", "at", "but", "by", "for", "in", "of", "on", "or", "the", "to",
        "vs", "with",
    ];
    text.split_whitespace()
        .enumerate()
        .map(|(i, word)| {
            let lower = word.to_lowercase();
            if i > 0 && SMALL.contains(&lower.as_str()) {
                lower
            } else if word.chars().skip(1).any(char::is_uppercase) {
                word.to_string() // keep acronyms and brand casing (ESG, iShares)
            } else {
                let mut chars = word.chars();
                chars
                    .next()
                    .map(|first| first.to_uppercase().chain(chars).collect())
                    .unwrap_or_default()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The leading words of `text` that fit in `max` characters, joined by single spaces.
fn leading_words(text: &str, max: usize) -> String {
    let mut out = String::new();
    for word in text.split_whitespace() {
        if out.chars().count() + usize::from(!out.is_empty()) + word.chars().count() > max {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Cuts `text` to at most `max` characters at a word boundary, adding `…` when cut.
pub fn truncate_words(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    // One character is the `…`.
    let mut out = leading_words(text, max.saturating_sub(1));
    if out.is_empty() {
        // The first word alone is too long: cut it.
        out = text
            .trim_start()
            .chars()
            .take(max.saturating_sub(1))
            .collect();
    }
    let trimmed = out.trim_end_matches([',', ';', ':', '.', '-']).to_string();
    format!("{trimmed}…")
}

/// Cuts `text` to at most `max` characters at a word boundary, without an ellipsis: a title,
/// description or post the LLM agents repair reads as broken when it ends in "…". Unlike
/// [`truncate_words`], it keeps a final full stop.
pub fn cut_at_word(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out = leading_words(text, max);
    if out.is_empty() {
        out = text.chars().take(max).collect();
    }
    let trimmed = out.trim_end_matches([',', ';', ':', '-', '–']);
    if trimmed.is_empty() {
        out
    } else {
        trimmed.to_string()
    }
}

/// The longest title or heading taken from outside (a document, a search result).
pub const MAX_TITLE_CHARS: usize = 200;
/// The longest source URL kept.
pub const MAX_URL_CHARS: usize = 2_048;

/// A title or heading from outside, whitespace collapsed and at most [`MAX_TITLE_CHARS`].
pub fn bounded_title(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate_words(&collapsed, MAX_TITLE_CHARS)
}

/// `url` if it is an absolute http(s) URL of at most [`MAX_URL_CHARS`]: a source link that
/// an article and a client may follow (never `javascript:`, `data:` or `file:`).
pub fn http_url(url: &str) -> Option<String> {
    let url = url.trim();
    if url.len() > MAX_URL_CHARS {
        return None;
    }
    let parsed = url::Url::parse(url).ok()?;
    (matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some())
        .then(|| url.to_string())
}

/// Estimated syllables of an English word (vowel groups, silent final `e`), at least 1.
pub fn syllables(word: &str) -> usize {
    let word: Vec<char> = word
        .chars()
        .filter(char::is_ascii_alphabetic)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if word.is_empty() {
        return 0;
    }
    let is_vowel = |c: char| matches!(c, 'a' | 'e' | 'i' | 'o' | 'u' | 'y');
    let mut count = 0;
    let mut previous_vowel = false;
    for &c in &word {
        let vowel = is_vowel(c);
        if vowel && !previous_vowel {
            count += 1;
        }
        previous_vowel = vowel;
    }
    let n = word.len();
    if n > 2 && word[n - 1] == 'e' && word[n - 2] != 'l' && !is_vowel(word[n - 2]) && count > 1 {
        count -= 1;
    }
    count.max(1)
}

/// Flesch reading ease of prose (higher is easier; 30-50 is typical of professional writing).
pub fn flesch_reading_ease(prose: &str) -> f64 {
    let sentence_count = sentences(prose).len().max(1) as f64;
    let words: Vec<&str> = prose
        .split_whitespace()
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .collect();
    if words.is_empty() {
        return 0.0;
    }
    let syllable_count: usize = words.iter().map(|w| syllables(w)).sum();
    let words_n = words.len() as f64;
    206.835 - 1.015 * (words_n / sentence_count) - 84.6 * (syllable_count as f64 / words_n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_stopword_is_longer_than_the_bound_and_each_is_found() {
        assert!(STOPWORDS.iter().all(|w| is_stopword(w)));
        assert!(!is_stopword("pension") && !is_stopword("") && !is_stopword("th"));
        let longest = STOPWORDS.iter().map(|w| w.len()).max();
        assert_eq!(longest, Some(LONGEST_STOPWORD));
    }

    #[test]
    fn links_are_parsed_as_commonmark() {
        let text = "See [a report (2024)](https://x.example/a_(b)) and [S1] and `[code](https://no)`; \
                    [nested [brackets]](https://y.example/) [spaced](<https://z.example/a b>).";
        let urls: Vec<String> = links(text).into_iter().map(|l| l.url).collect();
        assert_eq!(
            urls,
            [
                "https://x.example/a_(b)",
                "https://y.example/",
                "https://z.example/a b"
            ]
        );
        let (prose, _) = strip_links(text);
        assert!(!prose.contains(".example"), "{prose}");
        assert!(prose.contains("[S1]"), "{prose}");
    }

    #[test]
    fn truncation_cuts_a_word_longer_than_the_limit() {
        let long = "x".repeat(250);
        let cut = truncate_words(&long, 60);
        assert_eq!(cut.chars().count(), 60);
        assert!(cut.ends_with('…') && cut.starts_with("xxx"));
        assert_eq!(
            truncate_words("Private credit markets", 15),
            "Private credit…"
        );
    }

    #[test]
    fn stopwords_are_sorted_for_binary_search() {
        assert!(STOPWORDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn slug_follows_the_spec() {
        assert_eq!(
            slugify("  Private Credit: Risks & Returns!  "),
            "private-credit-risks-returns"
        );
        assert_eq!(slugify("ESG -- in 2026"), "esg-in-2026");
        assert_eq!(slugify("!!!"), "article");
        let long = slugify(&"word ".repeat(40));
        assert!(long.chars().count() <= 50 && !long.ends_with('-'), "{long}");
    }

    #[test]
    fn sentences_keep_abbreviations_and_decimals() {
        let text = "Rates rose 2.5% in 2023. Funds, e.g. pensions, hedged. Is it over? Yes.";
        assert_eq!(
            sentences(text),
            vec![
                "Rates rose 2.5% in 2023.",
                "Funds, e.g. pensions, hedged.",
                "Is it over?",
                "Yes."
            ]
        );
    }

    #[test]
    fn links_are_found_and_prose_drops_their_targets() {
        let md = "# Title\nText ([Source A](https://a.example/x)) and [B](https://b.example).";
        let found = links(md);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].url, "https://a.example/x");
        assert_eq!(found[1].text, "B");
        assert_eq!(&md[found[1].start..found[1].end], "[B](https://b.example)");
        assert_eq!(markdown_to_prose(md), "Title\nText and.\n");
        assert_eq!(markdown_word_count(md), 3);
    }

    #[test]
    fn title_case_and_truncation() {
        assert_eq!(
            title_case("the future of ESG investing"),
            "The Future of ESG Investing"
        );
        let cut = truncate_words("one two three four five", 12);
        assert!(cut.chars().count() <= 12 && cut.ends_with('…'), "{cut}");
    }

    #[test]
    fn readability_is_higher_for_plain_text() {
        let plain = "The cat sat. The dog ran. We ate.";
        let dense =
            "Institutional diversification necessitates sophisticated quantitative methodologies.";
        assert!(flesch_reading_ease(plain) > flesch_reading_ease(dense));
        assert_eq!(syllables("institutional"), 5);
    }
}
