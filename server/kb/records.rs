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
    let (first, cycle) = cycle(&words, &keys)?;
    // Each record: the word index of its first key, and where its last value ends.
    let mut rows: Vec<(usize, usize)> = Vec::new();
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
        rows.push((values[0], last + len));
        k += cycle;
    }
    if rows.len() < MIN_RECORDS {
        return None;
    }
    let name_start = |at: usize, floor: usize| -> Option<usize> {
        // The first record's name starts after the prose's last sentence.
        let start = (floor..at)
            .rev()
            .find(|&i| words[i].ends_with(['.', '!', '?']))
            .map_or(floor, |i| i + 1);
        (at > start && at - start <= MAX_NAME_WORDS).then_some(start)
    };
    let mut pieces = Vec::new();
    let mut floor = 0;
    for (n, &(at, end)) in rows.iter().enumerate() {
        let Some(start) = name_start(at, floor) else {
            // A record without a name of its own ends the run here.
            if n < MIN_RECORDS {
                return None;
            }
            break;
        };
        if n == 0 && start > 0 {
            pieces.push(Piece::Prose(words[..start].join(" ")));
        }
        pieces.push(Piece::Item(render(&words[start..end])));
        floor = end;
    }
    if floor < words.len() {
        // The prose after a table may hold another (a document that repeats itself).
        let after = words[floor..].join(" ");
        pieces.extend(records(&after).unwrap_or_else(|| vec![Piece::Prose(after)]));
    }
    Some(pieces)
}

/// The first key that starts a repeating cycle of distinct keys (at least two), as (its
/// index among the keys, the cycle's length).
fn cycle(words: &[&str], keys: &[usize]) -> Option<(usize, usize)> {
    (0..keys.len()).find_map(|first| {
        let key = words[keys[first]];
        let next = (first + 1..keys.len()).find(|&k| words[keys[k]] == key)?;
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
