//! A structured answer cut off at `max_tokens`, closed by code where that is safe: the JSON
//! object up to its last complete value (a string, a number, an item of an array), its open
//! arrays and objects closed. The value cut in half is left out, never guessed at; the
//! closed answer is then checked like any other (a missing property is still unfit).
use serde_json::Value;

/// Cut points tried, from the end: enough for any answer a `max_tokens` bound allows.
const MAX_TRIES: usize = 256;

/// The object a cut-off answer began, closed after its last complete value, if it has one
/// that parses; `None` for an answer whose object was already complete (the model went on
/// after it: not an answer to close) or that never began one.
pub(super) fn close(content: &str) -> Option<Value> {
    let text = &content[content.find('{')?..];
    // (byte offset to cut at, the containers open there)
    let mut cuts: Vec<(usize, Vec<char>)> = Vec::new();
    let mut open: Vec<char> = Vec::new();
    let (mut in_string, mut escaped) = (false, false);
    for (i, c) in text.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' | '[' => {
                // Empty, it is a value of its own only where it is no array's item: an
                // array keeps the items before it (the comma's cut).
                let item = open.last() == Some(&'[');
                open.push(c);
                if !item {
                    cuts.push((i + 1, open.clone()));
                }
            }
            '}' | ']' => {
                open.pop();
                if open.is_empty() {
                    return None;
                }
                cuts.push((i + 1, open.clone()));
            }
            // Before a comma, the value it follows is complete.
            ',' => cuts.push((i, open.clone())),
            _ => {}
        }
    }
    cuts.iter().rev().take(MAX_TRIES).find_map(|(at, open)| {
        let mut closed = text.get(..*at)?.to_string();
        closed.extend(open.iter().rev().map(|c| if *c == '{' { '}' } else { ']' }));
        match serde_json::from_str(&closed) {
            Ok(value @ Value::Object(_)) => Some(value),
            _ => None,
        }
    })
}

/// Whether every object of `value` has only properties its `schema` names: an answer that
/// wandered off the schema before it was cut off is not one to close.
pub(super) fn within_schema(value: &Value, schema: &Value) -> bool {
    match value {
        Value::Object(map) => match schema.get("properties").and_then(Value::as_object) {
            Some(properties) => map.iter().all(|(key, value)| {
                properties
                    .get(key)
                    .is_some_and(|schema| within_schema(value, schema))
            }),
            None => true,
        },
        Value::Array(items) => match schema.get("items") {
            Some(schema) => items.iter().all(|item| within_schema(item, schema)),
            None => true,
        },
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_answer_cut_inside_an_array_of_strings_keeps_its_complete_items() {
        let closed = close(r#"{"queries": ["private credit", "liquidity risk", "pension allo"#);
        assert_eq!(
            closed,
            Some(json!({"queries": ["private credit", "liquidity risk"]}))
        );
        let closed = close(r#"{"a": "x, \"y\"", "b": ["one", "tw"#);
        assert_eq!(closed, Some(json!({"a": "x, \"y\"", "b": ["one"]})));
    }

    #[test]
    fn nested_objects_close_after_their_last_complete_item() {
        let cut = r#"{"outline": [{"heading": "One", "source_ids": ["S1"]}, {"heading": "Tw"#;
        assert_eq!(
            close(cut),
            Some(json!({"outline": [{"heading": "One", "source_ids": ["S1"]}]}))
        );
        // A cut inside the first property leaves an empty object, which the checks refuse.
        assert_eq!(close(r#"{"title": "A very long ti"#), Some(json!({})));
    }

    #[test]
    fn complete_objects_and_prose_are_not_closed() {
        assert_eq!(close(r#"{"queries": ["a"]} and then more"#), None);
        assert_eq!(close("no json at all"), None);
    }

    #[test]
    fn only_answers_within_the_schema_are_kept() {
        let schema = json!({"type": "object", "properties": {
            "queries": {"type": "array", "items": {"type": "string"}},
            "outline": {"type": "array", "items": {"type": "object", "properties": {"heading": {}}}},
        }});
        assert!(within_schema(&json!({"queries": ["a"]}), &schema));
        assert!(!within_schema(
            &json!({"queries": ["a"], "more": "x"}),
            &schema
        ));
        assert!(!within_schema(
            &json!({"outline": [{"heading": "h", "extra": 1}]}),
            &schema
        ));
    }
}
