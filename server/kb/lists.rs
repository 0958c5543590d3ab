//! Lists that exported documents write as prose: a ranking run into one paragraph ("1. Firm
//! AUM: $4B Metro: Dallas 2. Firm ..."), or one item per line without Markdown markers. Found
//! at parse time, so that search, the writer and the fact check all see items.

/// What a paragraph holds once its enumeration is found.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Piece {
    Prose(String),
    /// A list item, already rendered: `3. Firm — AUM: $4B; Metro: Dallas`.
    Item(String),
    /// A long item: its label (`3. Firm`) as a sub-heading, its text as prose after it.
    Entry(String, String),
}

/// The shortest run of numbered items taken for a list.
const MIN_ITEMS: usize = 2;
/// The most words of a key ("Assets Under Management").
const MAX_KEY_WORDS: usize = 3;
/// An item longer than this is an entry with prose of its own, not a list line.
const MAX_ITEM_WORDS: usize = 30;

/// A list marker standing as a word: `3.`, `3)` or `#3`, as (number, style).
fn marker(word: &str) -> Option<(u32, u8)> {
    let (digits, style) = if let Some(d) = word.strip_prefix('#') {
        (d, b'#')
    } else if let Some(d) = word.strip_suffix('.') {
        (d, b'.')
    } else {
        (word.strip_suffix(')')?, b')')
    };
    if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, style))
}

/// The words of a paragraph at which a numbered run 1, 2, 3 ... starts each item, when there
/// are at least [`MIN_ITEMS`] of them.
fn run_starts(words: &[&str]) -> Option<Vec<usize>> {
    let is_marker = |i: usize| {
        let next = words.get(i + 1)?;
        let starts_item = next
            .chars()
            .next()
            .is_some_and(|c| (!c.is_lowercase() && c.is_alphanumeric()) || c == '$' || c == '*');
        marker(words[i]).filter(|_| starts_item)
    };
    let first = (0..words.len()).find(|&i| is_marker(i).is_some_and(|(n, _)| n == 1))?;
    let (_, style) = is_marker(first)?;
    let mut starts = vec![first];
    let mut expected = 2;
    for i in first + 1..words.len() {
        if is_marker(i) == Some((expected, style)) {
            starts.push(i);
            expected += 1;
        }
    }
    (starts.len() >= MIN_ITEMS).then_some(starts)
}

/// A paragraph with a numbered run in it, cut into the prose before it, its items and the
/// prose after it; `None` when it holds no run.
pub(super) fn enumeration(paragraph: &str) -> Option<Vec<Piece>> {
    let words: Vec<&str> = paragraph.split_whitespace().collect();
    let starts = run_starts(&words)?;
    let mut items: Vec<Vec<&str>> = starts
        .iter()
        .zip(starts.iter().skip(1).chain([&words.len()]))
        .map(|(&s, &e)| words[s + 1..e].to_vec())
        .collect();
    let mut after: Vec<&str> = Vec::new();
    let keys = common_keys(&items);
    if let Some((last, others)) = items.split_last_mut() {
        let cut = last_item_end(last, others, &keys);
        after = last.split_off(cut);
    }
    let mut pieces = Vec::new();
    let before = words[..starts[0]].join(" ");
    if !before.is_empty() {
        pieces.push(Piece::Prose(before));
    }
    for (n, item) in items.iter().enumerate() {
        pieces.push(render(n + 1, item, &keys));
    }
    if !after.is_empty() {
        // The prose after a run may hold another (a document that repeats itself).
        let after = after.join(" ");
        pieces.extend(enumeration(&after).unwrap_or_else(|| vec![Piece::Prose(after)]));
    }
    Some(pieces)
}

/// Lines of a paragraph that are each an item: at least three, each short and without a
/// sentence's end, or each holding a `Key: value`; rendered as items.
pub(super) fn line_items(lines: &[&str]) -> Option<Vec<Piece>> {
    let lines: Vec<&str> = lines
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    if lines.len() < 3 {
        return None;
    }
    let short = |l: &&str| l.split_whitespace().count() <= 12 && !l.ends_with(['.', '!', '?']);
    let keyed = |l: &&str| key_at(&l.split_whitespace().collect::<Vec<_>>()).is_some();
    if !(lines.iter().all(short) || lines.iter().all(keyed)) {
        return None;
    }
    let items = lines.iter().map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().and_then(|w| marker(w)) {
            Some((n, _)) if words.len() > 1 => {
                Piece::Item(format!("{n}. {}", words[1..].join(" ")))
            }
            _ => Piece::Item(words.join(" ")),
        }
    });
    Some(items.collect())
}

/// The first word of `words` that ends a key (`AUM:`), if any.
fn key_at(words: &[&str]) -> Option<usize> {
    words.iter().position(|w| is_key_word(w))
}

/// `Metro:`: a capitalised word (or acronym) ending with a colon.
pub(super) fn is_key_word(word: &str) -> bool {
    word.len() > 1
        && word.ends_with(':')
        && word
            .chars()
            .next()
            .is_some_and(|c| c.is_uppercase() || c.is_ascii_digit())
}

/// The keys the items share: for each word ending in a colon, the longest run of words
/// before it (up to [`MAX_KEY_WORDS`]) that at least two items (or half of them) write as a
/// key; the last word alone otherwise.
fn common_keys(items: &[Vec<&str>]) -> Vec<String> {
    let candidates = |item: &[&str]| -> Vec<String> {
        let mut out = Vec::new();
        for (i, word) in item.iter().enumerate().filter(|(_, w)| is_key_word(w)) {
            for len in 1..=MAX_KEY_WORDS.min(i + 1) {
                let mut key = item[i + 1 - len..i].join(" ");
                if !key.is_empty() {
                    key.push(' ');
                }
                key.push_str(word.trim_end_matches(':'));
                out.push(key);
            }
        }
        out
    };
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    for item in items {
        let mut seen = std::collections::HashSet::new();
        for key in candidates(item) {
            if seen.insert(key.clone()) {
                *counts.entry(key).or_default() += 1;
            }
        }
    }
    let needed = (items.len() / 2).max(2);
    // A longer key only where every item with its last word writes it so, in three items
    // at least: two firms named "... Group" do not make "Group Overview" a key.
    let last_word = |k: &str| k.rsplit(' ').next().unwrap_or(k).to_string();
    let mut keys: Vec<String> = counts
        .iter()
        .filter(|(k, n)| match k.contains(' ') {
            false => **n >= needed,
            true => **n >= needed.max(3) && counts.get(&last_word(k)) == Some(*n),
        })
        .map(|(k, _)| k.clone())
        .collect();
    // Longest first, so "Assets Under Management" is tried before "Management".
    keys.sort_by_key(|k| std::cmp::Reverse(k.split_whitespace().count()));
    keys
}

/// The keys of one item as (start word, words of the key), in order.
fn keys_in(item: &[&str], keys: &[String]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    for (i, word) in item.iter().enumerate().filter(|(_, w)| is_key_word(w)) {
        let len = keys
            .iter()
            .map(|k| k.split_whitespace().collect::<Vec<_>>())
            .find(|k| {
                k.len() <= i + 1 && {
                    let start = i + 1 - k.len();
                    let last = word.trim_end_matches(':');
                    k[..k.len() - 1] == item[start..i] && k.last() == Some(&last)
                }
            })
            .map(|k| k.len());
        if let Some(len) = len {
            let start = i + 1 - len;
            // A key never starts inside the previous one.
            if found.last().is_none_or(|&(s, l)| start >= s + l) {
                found.push((start, len));
            }
        }
    }
    found
}

/// Where the last item of a run ends: the prose after a ranking is run into its last item, so
/// the last value is given at most as many words as that key's longest value elsewhere (the
/// whole item as many as the longest other item, when items have no keys).
fn last_item_end(last: &[&str], others: &[Vec<&str>], keys: &[String]) -> usize {
    let longest = |f: &dyn Fn(&[&str]) -> Option<usize>| -> Option<usize> {
        others.iter().filter_map(|o| f(o)).max()
    };
    let own = keys_in(last, keys);
    // The last item has at most as many keys as the others: a key beyond them belongs to
    // text run in after the list (a document that repeats itself).
    let most_keys = others.iter().map(|o| keys_in(o, keys).len()).max();
    let own = match most_keys {
        Some(n) if n > 0 => &own[..own.len().min(n)],
        _ => &own[..],
    };
    let limit = match own.last() {
        Some(&(start, len)) => {
            let key = last[start..start + len].join(" ");
            let value_words = |item: &[&str]| {
                let found = keys_in(item, keys);
                let at = found
                    .iter()
                    .position(|&(s, l)| item[s..s + l].join(" ") == key)?;
                let (s, l) = found[at];
                let end = found.get(at + 1).map_or(item.len(), |&(next, _)| next);
                Some((s + l, end))
            };
            let values: Vec<Vec<&str>> = others
                .iter()
                .filter_map(|o| value_words(o).map(|(s, e)| o[s..e].to_vec()))
                .collect();
            let value = &last[start + len..];
            // The longest start of the value that another item has as its whole value
            // ("San Francisco"), else as many words as the longest value.
            let same = (1..=value.len())
                .rev()
                .find(|&n| values.iter().any(|v| v.as_slice() == &value[..n]));
            same.or_else(|| values.iter().map(Vec::len).max())
                .map(|n| start + len + n.max(1))
        }
        None => longest(&|item: &[&str]| Some(item.len())).map(|n| n.max(1)),
    };
    limit.map_or(last.len(), |limit| limit.min(last.len()))
}

/// Item `n` with its keys recognised: a list line `n. Name — Key: value; Key: value`, or, when
/// it is long, an entry whose values are prose.
fn render(n: usize, item: &[&str], keys: &[String]) -> Piece {
    let found = keys_in(item, keys);
    let name_end = found.first().map_or(item.len(), |&(s, _)| s);
    let name = item[..name_end].join(" ");
    let pairs: Vec<(String, String)> = found
        .iter()
        .enumerate()
        .map(|(i, &(s, l))| {
            let end = found.get(i + 1).map_or(item.len(), |&(next, _)| next);
            let key = item[s..s + l].join(" ");
            (
                key.trim_end_matches(':').to_string(),
                item[s + l..end].join(" "),
            )
        })
        .collect();
    if item.len() > MAX_ITEM_WORDS {
        let prose: Vec<&str> = pairs.iter().map(|(_, v)| v.as_str()).collect();
        let label = if name.is_empty() {
            n.to_string()
        } else {
            format!("{n}. {name}")
        };
        let text = if prose.is_empty() {
            item[name_end..].join(" ")
        } else {
            prose.join(" ")
        };
        return Piece::Entry(label, text);
    }
    let values: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    Piece::Item(match (name.is_empty(), values.is_empty()) {
        (_, true) => format!("{n}. {name}"),
        (true, false) => format!("{n}. {}", values.join("; ")),
        (false, false) => format!("{n}. {name} — {}", values.join("; ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(text: &str) -> Piece {
        Piece::Item(text.into())
    }

    #[test]
    fn a_ranking_run_into_a_paragraph_becomes_items_and_the_prose_after_it_stays_prose() {
        let paragraph = "Here is the list of the largest offices. 1. Pecan Grove Office AUM: $9,000,000,000 Metro: Austin 2. Limestone Family Partners AUM: $4,500,000,000 Metro: Round Rock 3. Bluebonnet Capital AUM: $1,000,000,000 Metro: Austin Our platform helps managers find them.";
        assert_eq!(
            enumeration(paragraph).unwrap(),
            [
                Piece::Prose("Here is the list of the largest offices.".into()),
                item("1. Pecan Grove Office — AUM: $9,000,000,000; Metro: Austin"),
                item("2. Limestone Family Partners — AUM: $4,500,000,000; Metro: Round Rock"),
                item("3. Bluebonnet Capital — AUM: $1,000,000,000; Metro: Austin"),
                Piece::Prose("Our platform helps managers find them.".into()),
            ]
        );
    }

    #[test]
    fn a_document_that_repeats_its_ranking_gives_two_runs() {
        let run = "1. Alder Office AUM: $2,000,000 Metro: Fresno 2. Birch Office AUM: $1,000,000 Metro: Fresno";
        let pieces = enumeration(&format!(
            "{run} The offices grew fast. {run} Find them here."
        ))
        .unwrap();
        assert_eq!(
            pieces,
            [
                item("1. Alder Office — AUM: $2,000,000; Metro: Fresno"),
                item("2. Birch Office — AUM: $1,000,000; Metro: Fresno"),
                Piece::Prose("The offices grew fast.".into()),
                item("1. Alder Office — AUM: $2,000,000; Metro: Fresno"),
                item("2. Birch Office — AUM: $1,000,000; Metro: Fresno"),
                Piece::Prose("Find them here.".into()),
            ]
        );
    }

    #[test]
    fn other_markers_and_plain_numbers() {
        let hash = enumeration("Ranked: #1 Alder Fund #2 Birch Fund #3 Cedar Fund").unwrap();
        assert_eq!(hash[1], item("1. Alder Fund"));
        assert_eq!(hash[3], item("3. Cedar Fund"));
        let paren = enumeration("Steps: 1) Define the budget 2) Pick the managers").unwrap();
        assert_eq!(paren[2], item("2. Pick the managers"));
        // Figures, decimals and a lone "1." are no list.
        assert_eq!(enumeration("Rates rose 2.5% to 3.1% in 2024."), None);
        assert_eq!(enumeration("Phase 1. Then more words follow here."), None);
    }

    #[test]
    fn long_items_are_entries_with_prose() {
        let long = "words ".repeat(40);
        let paragraph = format!(
            "1. Alder Group Overview: {long}Focus: buyouts. 2. Birch Group Overview: {long}Focus: credit."
        );
        let pieces = enumeration(&paragraph).unwrap();
        assert!(
            matches!(&pieces[0], Piece::Entry(label, text) if label == "1. Alder Group" && text.ends_with("buyouts."))
        );
    }

    #[test]
    fn lines_without_markers_are_items() {
        let lines = ["Alder Fund", "Birch Fund", "Cedar Fund"];
        assert_eq!(line_items(&lines).unwrap()[2], item("Cedar Fund"));
        let keyed = [
            "Consultant: Meridian Advisors",
            "Amount: $40M",
            "Deadline: July 1, 2025",
        ];
        assert_eq!(line_items(&keyed).unwrap().len(), 3);
        let prose = ["The fund grew.", "It hired staff.", "Returns were fine."];
        assert_eq!(line_items(&prose), None);
    }
}
