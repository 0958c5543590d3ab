//! Estimated cost of LLM tokens from a price table (USD per million tokens).
use std::collections::HashMap;

/// Defaults for the default models: OpenAI's list prices (input/output per million tokens)
/// as published when this table was written. Override or extend with `--prices`.
const DEFAULT_PRICES: [(&str, f64, f64); 3] = [
    ("gpt-4.1", 2.00, 8.00),
    ("gpt-4.1-mini", 0.40, 1.60),
    ("gpt-4.1-nano", 0.10, 0.40),
];

#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    per_million: HashMap<String, (f64, f64)>,
}

impl PriceTable {
    /// The defaults plus `model=input/output` overrides.
    pub fn new(overrides: &[(String, String)]) -> Result<Self, String> {
        let mut per_million: HashMap<String, (f64, f64)> = DEFAULT_PRICES
            .iter()
            .map(|(m, i, o)| (m.to_string(), (*i, *o)))
            .collect();
        for (model, prices) in overrides {
            let parsed = prices
                .split_once('/')
                .and_then(|(i, o)| Some((i.trim().parse::<f64>().ok()?, o.trim().parse::<f64>().ok()?)))
                .filter(|(i, o)| *i >= 0.0 && *o >= 0.0)
                .ok_or_else(|| format!("price `{model}={prices}`: expected input/output USD per million tokens, e.g. 2.0/8.0"))?;
            per_million.insert(model.clone(), parsed);
        }
        Ok(Self { per_million })
    }

    /// Cost of a call in USD; 0 for models without a price (and offline agents).
    pub fn cost(&self, model: &str, input_tokens: u64, output_tokens: u64) -> f64 {
        self.per_million
            .get(model)
            .map(|(i, o)| (input_tokens as f64 * i + output_tokens as f64 * o) / 1_000_000.0)
            .unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_follows_the_table_and_overrides() {
        let table = PriceTable::new(&[("local-llama".into(), "0.5/1".into())]).unwrap();
        assert!((table.cost("gpt-4.1", 1_000_000, 500_000) - 6.0).abs() < 1e-9);
        assert!((table.cost("local-llama", 2_000_000, 1_000_000) - 2.0).abs() < 1e-9);
        assert_eq!(table.cost("extractive", 10, 10), 0.0);
        assert!(PriceTable::new(&[("x".into(), "cheap".into())]).is_err());
    }
}
