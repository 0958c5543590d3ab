//! How the offline writer cites: `[S1]` markers after each run of one source's sentences
//! (the pipeline turns them into links), and words counted without them.
use crate::text;

/// Words of writer output as the reader will count them: `[S1]` markers become citations,
/// which are not prose.
pub(super) fn prose_words(markdown: &str) -> usize {
    text::markdown_to_prose(markdown)
        .split_whitespace()
        .filter(|w| w.chars().any(char::is_alphanumeric) && !w.starts_with("[S"))
        .count()
}

/// Sentences of one source with the citation before the last full stop: `... text [S1].`
pub(super) fn cite_run(sentences: &[String], id: &str) -> String {
    let mut text = sentences.join(" ");
    if text.is_empty() {
        return text;
    }
    match text.pop() {
        Some(end @ ('.' | '!' | '?')) => format!("{text} [{id}]{end}"),
        Some(other) => format!("{text}{other} [{id}]."),
        None => text,
    }
}

/// Groups (sentence, source id) pairs into paragraphs of up to four sentences of one source.
pub(super) fn paragraphs(body: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut run: Vec<String> = Vec::new();
    let mut run_id = "";
    for (sentence, id) in body {
        if (id != run_id || run.len() == 4) && !run.is_empty() {
            out.push(cite_run(&run, run_id));
            run.clear();
        }
        run_id = id;
        run.push(sentence.clone());
    }
    if !run.is_empty() {
        out.push(cite_run(&run, run_id));
    }
    out
}
