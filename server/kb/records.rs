//! Records that exported documents run into a paragraph without list numbers: a table written
//! as prose ("Boston Retirement System Consultant: NEPC Amount: $90M Deadline: June 25, 2025
//! Bristol County Retirement System Consultant: ..."). The same keys in the same order, three
//! times or more, are records; each becomes an item, so that search, the writer and the fact
//! check see rows, never "sentences" running from one record into the next.
use super::lists::{Piece, is_key_word};

/// The fewest records taken for a table.
const MIN_RECORDS: usize = 3;
/// The most words of a record's name, or of a value before its last.
const MAX_NAME_WORDS: usize = 16;
const MAX_VALUE_WORDS: usize = 8;
/// The most keys of one record.
const MAX_CYCLE: usize = 8;

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// The records of a paragraph, with the prose before and after them; `None` when it holds
/// no run of [`MIN_RECORDS`] records whose boundaries can be told.
pub(super) fn records(paragraph: &str) -> Option<Vec<Piece>> {
    let words: Vec<&str> = paragraph.split_whitespace().collect();
    let keys: Vec<usize> = (0..words.len())
        .filter(|&i| is_key_word(words[i]))
        .collect();
    let mut pieces = Vec::new();
    // Words and keys taken so far: a document that repeats itself holds a second table
    // after the first, found from there (each word and key is looked at a bounded number
    // of times, whatever a hostile document holds).
    let (mut floor, mut from) = (0, 0);
    while let Some((table, end, next)) = table(&words, &keys, floor, from) {
        pieces.extend(table);
        (floor, from) = (end, next);
    }
    if pieces.is_empty() {
        return None;
    }
    if floor < words.len() {
        pieces.push(Piece::Prose(words[floor..].join(" ")));
    }
    Some(pieces)
}

/// The first table from key `from` on (and word `floor`): its pieces, the prose before it
/// first; the word it ends at and the first key after it.
fn table(
    words: &[&str],
    keys: &[usize],
    floor: usize,
    from: usize,
) -> Option<(Vec<Piece>, usize, usize)> {
    let (first, cycle) = cycle(words, &keys[from..]).map(|(f, c)| (f + from, c))?;
    // Each record: the index of its first key, its word, and where its last value ends.
    let mut rows: Vec<(usize, usize, usize)> = Vec::new();
    let mut k = first;
    while k + cycle <= keys.len()
        && (0..cycle).all(|m| words[keys[k + m]] == words[keys[first + m]])
    {
        let values = &keys[k..k + cycle];
        let short = values
            .windows(2)
            .all(|w| (1..=MAX_VALUE_WORDS).contains(&(w[1] - w[0] - 1)));
        let last = values[cycle - 1] + 1;
        let bound = keys.get(k + cycle).copied().unwrap_or(words.len());
        let Some(len) = value_len(&words[last..bound]).filter(|_| short) else {
            break;
        };
        rows.push((k, values[0], last + len));
        k += cycle;
    }
    if rows.len() < MIN_RECORDS {
        return None;
    }
    // A record's name starts after the prose's last sentence, a few words before its key.
    let name_start = |at: usize, floor: usize| -> Option<usize> {
        let lowest = floor.max(at.saturating_sub(MAX_NAME_WORDS + 1));
        let start = match (lowest..at)
            .rev()
            .find(|&i| words[i].ends_with(['.', '!', '?']))
        {
            Some(i) => i + 1,
            None if lowest == floor => floor,
            // The sentence before ends further back: the name would be too long.
            None => return None,
        };
        (at > start && at - start <= MAX_NAME_WORDS).then_some(start)
    };
    let (mut pieces, mut taken, mut next) = (Vec::new(), floor, k);
    for (n, &(key, at, end)) in rows.iter().enumerate() {
        let Some(start) = name_start(at, taken) else {
            // A record without a name of its own ends the run here.
            if n < MIN_RECORDS {
                return None;
            }
            next = key;
            break;
        };
        if n == 0 && start > floor {
            pieces.push(Piece::Prose(words[floor..start].join(" ")));
        }
        pieces.push(Piece::Item(render(&words[start..end])));
        taken = end;
    }
    Some((pieces, taken, next))
}

/// The first key that starts a repeating cycle of distinct keys (two to [`MAX_CYCLE`]), as
/// (its index among the keys, the cycle's length).
fn cycle(words: &[&str], keys: &[usize]) -> Option<(usize, usize)> {
    (0..keys.len()).find_map(|first| {
        let key = words[keys[first]];
        let window = first + 1..keys.len().min(first + MAX_CYCLE + 1);
        let next = window.into_iter().find(|&k| words[keys[k]] == key)?;
        let len = next - first;
        let distinct = (first..next)
            .map(|k| words[keys[k]])
            .collect::<std::collections::HashSet<_>>()
            .len();
        (len >= 2 && distinct == len && keys.len() - first >= len * MIN_RECORDS)
            .then_some((first, len))
    })
}

/// How many words the last value of a record takes, judged by its shape, since the next
/// record's name follows it unmarked: a date (`July 29, 2025`), an amount (`$95M`, `12.5
/// billion`, `N/A`); `None` for any other value, whose end cannot be told.
fn value_len(words: &[&str]) -> Option<usize> {
    let first = words.first()?;
    let bare = |w: &str| {
        w.trim_matches(|c: char| !c.is_alphanumeric())
            .to_lowercase()
    };
    if MONTHS.contains(&bare(first).as_str()) {
        let year = words
            .iter()
            .take(4)
            .position(|w| bare(w).len() == 4 && bare(w).bytes().all(|b| b.is_ascii_digit()));
        return Some(year.map_or(2.min(words.len()), |y| y + 1));
    }
    let amount = first.starts_with('$')
        || first.bytes().next().is_some_and(|b| b.is_ascii_digit())
        || matches!(bare(first).as_str(), "n/a" | "tbd" | "none" | "undisclosed");
    if !amount {
        return None;
    }
    let unit = words.get(1).is_some_and(|w| {
        matches!(
            bare(w).as_str(),
            "million" | "billion" | "thousand" | "trillion" | "mm" | "bn"
        )
    });
    Some(if unit { 2 } else { 1 })
}

/// A record as a list line: `Name — Key: value; Key: value`.
fn render(record: &[&str]) -> String {
    let keys: Vec<usize> = (0..record.len())
        .filter(|&i| is_key_word(record[i]))
        .collect();
    let name = record[..keys[0]].join(" ");
    let values: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, &k)| {
            let end = keys.get(i + 1).copied().unwrap_or(record.len());
            format!("{} {}", record[k], record[k + 1..end].join(" "))
        })
        .collect();
    format!("{name} — {}", values.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFPS: &str = "For June, Dakota tracked 4 RFPs. Read on for all of them. Real Estate \
        Pembroke Pines Fire and Police Officers' Pension Fund Consultant: Dahab Associates, Inc. \
        Amount: $95M Deadline: July 29, 2025 Boston Retirement System Consultant: NEPC Amount: \
        $90M Deadline: June 25, 2025 Hedge Funds Plymouth County Retirement Association \
        Consultant: Meketa Investment Group Amount: $30M Deadline: July 16, 2025 Teachers \
        Retirement System of Louisiana Consultant: AON Amount: N/A Deadline: July 8, 2025 For \
        June, Dakota tracked 4 RFPs.";

    #[test]
    fn records_run_into_a_paragraph_become_one_item_each_and_the_prose_around_them_stays() {
        let pieces = records(RFPS).expect("records");
        assert_eq!(
            pieces,
            vec![
                Piece::Prose("For June, Dakota tracked 4 RFPs. Read on for all of them.".into()),
                Piece::Item(
                    "Real Estate Pembroke Pines Fire and Police Officers' Pension Fund — \
                     Consultant: Dahab Associates, Inc.; Amount: $95M; Deadline: July 29, 2025"
                        .into()
                ),
                Piece::Item(
                    "Boston Retirement System — Consultant: NEPC; Amount: $90M; Deadline: June 25, 2025"
                        .into()
                ),
                Piece::Item(
                    "Hedge Funds Plymouth County Retirement Association — Consultant: Meketa \
                     Investment Group; Amount: $30M; Deadline: July 16, 2025"
                        .into()
                ),
                Piece::Item(
                    "Teachers Retirement System of Louisiana — Consultant: AON; Amount: N/A; \
                     Deadline: July 8, 2025"
                        .into()
                ),
                Piece::Prose("For June, Dakota tracked 4 RFPs.".into()),
            ]
        );
    }

    #[test]
    fn a_paragraph_of_many_keys_none_repeating_is_read_in_one_pass() {
        // Distinct keys: once a key was compared with every later one (quadratic).
        let many: String = (0..200_000).map(|n| format!("K{n}: v ")).collect();
        assert_eq!(records(&many), None);
        let tables = format!("{RFPS} {RFPS}");
        let items = records(&tables)
            .unwrap()
            .iter()
            .filter(|p| matches!(p, Piece::Item(_)))
            .count();
        assert_eq!(items, 8, "a document that repeats itself gives both tables");
    }

    #[test]
    fn prose_with_a_colon_or_two_and_records_whose_ends_cannot_be_told_stay_prose() {
        assert_eq!(
            records("The plan: invest. The result: growth. The plan: wait and see."),
            None
        );
        // Last values that are names: where one record ends and the next begins is unknown.
        assert_eq!(
            records(
                "Alpha Metro: Dallas Founded: Austin Beta Metro: Houston Founded: Dallas \
                 Gamma Metro: Plano Founded: Waco"
            ),
            None
        );
    }
}
