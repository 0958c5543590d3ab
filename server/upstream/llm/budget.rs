//! How long one LLM call may take: a budget from what the call asks for (its prompt, its
//! `max_tokens`) and the throughput the model has shown, kept per model as a running
//! estimate of prompt and generation tokens a second over all its calls in flight (a server
//! shares its speed between the calls it runs at once: a call measured alongside three others
//! shows a quarter of it). A slow model gets the time it needs; a call is cut only far past
//! what its model's own pace predicts for it, with the calls in flight beside it (or at a
//! fixed flag).
use std::{collections::HashMap, sync::Mutex, time::Duration};

use serde::Serialize;

use crate::lock;

/// Tokens a second assumed for a model not measured yet: a small model on a CPU. Budgets
/// from them are long; the first answers replace them.
const ASSUMED_PROMPT_TPS: f64 = 50.0;
const ASSUMED_GENERATION_TPS: f64 = 5.0;
/// How far past its predicted time a call may run: calls share a server's slots, so one
/// call's pace varies with the others in flight.
const SLACK: f64 = 4.0;
/// Added to every budget: connection, scheduling, a server's queue.
const FLOOR: Duration = Duration::from_secs(30);
/// Weight of a new observation in the running estimate.
const ALPHA: f64 = 0.3;
/// Fewer tokens than this say little about a pace (fixed costs dominate).
const MIN_SAMPLE_TOKENS: u64 = 8;

/// The estimated pace of one model, tokens a second; `None` until measured.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Rates {
    pub prompt_tokens_per_second: Option<f64>,
    pub generation_tokens_per_second: Option<f64>,
    /// Calls measured so far.
    pub samples: u64,
}

/// One measured call: tokens and the seconds spent on them, for the prompt (time to the
/// first token) and for generation (first token to last), and the calls that were in flight
/// to the model meanwhile, itself included.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub prompt_tokens: u64,
    pub prompt_seconds: f64,
    pub generated_tokens: u64,
    pub generation_seconds: f64,
    pub concurrent: usize,
}

/// The running estimates, per model.
#[derive(Debug, Default)]
pub struct Throughput {
    models: Mutex<HashMap<String, Rates>>,
}

fn blend(old: Option<f64>, tokens: u64, seconds: f64) -> Option<f64> {
    if tokens < MIN_SAMPLE_TOKENS || seconds.is_nan() || seconds <= 0.0 {
        return old;
    }
    let rate = tokens as f64 / seconds;
    if !rate.is_finite() {
        return old;
    }
    Some(old.map_or(rate, |old| old + ALPHA * (rate - old)))
}

impl Throughput {
    pub fn observe(&self, model: &str, sample: Sample) {
        // The server's pace over all its calls: this call's, times the calls sharing it.
        let shared = sample.concurrent.max(1) as u64;
        let mut models = lock(&self.models);
        // Models are named by configuration, so the map stays small; an unknown name from a
        // request never reaches here.
        let rates = models.entry(model.to_string()).or_default();
        rates.prompt_tokens_per_second = blend(
            rates.prompt_tokens_per_second,
            sample.prompt_tokens.saturating_mul(shared),
            sample.prompt_seconds,
        );
        rates.generation_tokens_per_second = blend(
            rates.generation_tokens_per_second,
            sample.generated_tokens.saturating_mul(shared),
            sample.generation_seconds,
        );
        rates.samples += 1;
    }

    pub fn rates(&self, model: &str) -> Rates {
        lock(&self.models).get(model).copied().unwrap_or_default()
    }

    /// Every model measured, by name.
    pub fn snapshot(&self) -> Vec<(String, Rates)> {
        let mut all: Vec<_> = lock(&self.models)
            .iter()
            .map(|(model, rates)| (model.clone(), *rates))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// The time limits of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// From sending to the first token: the server reads the prompt in this time.
    pub first_token: Duration,
    /// From sending to the end of the answer.
    pub whole: Duration,
}

/// Fixed limits from the flags, each replacing its estimate when set.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fixed {
    pub first_token: Option<Duration>,
    pub whole: Option<Duration>,
}

impl Rates {
    /// The budget of a call reading `prompt_tokens` and writing up to `max_tokens` while
    /// `concurrent` calls (itself included) share the model: each part the time the model's
    /// pace, shared among them, predicts, times a slack, plus a floor.
    pub fn budget(
        &self,
        prompt_tokens: u64,
        max_tokens: u32,
        fixed: Fixed,
        concurrent: usize,
    ) -> Budget {
        let shared = concurrent.max(1) as f64;
        let seconds = |tokens: f64, rate: Option<f64>, assumed: f64| {
            let rate = rate.filter(|r| *r > 0.0).map_or(assumed, |r| r / shared);
            Duration::try_from_secs_f64(SLACK * tokens / rate).unwrap_or(Duration::MAX)
        };
        let reading = seconds(
            prompt_tokens as f64,
            self.prompt_tokens_per_second,
            ASSUMED_PROMPT_TPS,
        );
        let writing = seconds(
            f64::from(max_tokens),
            self.generation_tokens_per_second,
            ASSUMED_GENERATION_TPS,
        );
        let first_token = fixed
            .first_token
            .unwrap_or_else(|| FLOOR.saturating_add(reading));
        let whole = fixed
            .whole
            .unwrap_or_else(|| first_token.saturating_add(writing));
        Budget {
            first_token: first_token.min(whole),
            whole,
        }
    }
}

/// Tokens a text of `bytes` holds at most, about: English runs near four bytes a token in
/// the tokenizers of common models; three and a half leaves room for markup and JSON.
pub fn tokens_in(bytes: usize) -> u64 {
    (bytes as u64).saturating_mul(2) / 7
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_follow_the_measured_pace_and_fixed_flags_win() {
        let throughput = Throughput::default();
        let unknown = throughput
            .rates("m")
            .budget(1_000, 500, Fixed::default(), 1);
        // 30 s + 4 × 1000/50 = 110 s to the first token; + 4 × 500/5 = 400 s of writing.
        assert_eq!(unknown.first_token, Duration::from_secs(110));
        assert_eq!(unknown.whole, Duration::from_secs(510));
        throughput.observe(
            "m",
            Sample {
                prompt_tokens: 1_000,
                prompt_seconds: 2.0,
                generated_tokens: 200,
                generation_seconds: 10.0,
                concurrent: 1,
            },
        );
        let rates = throughput.rates("m");
        assert_eq!(rates.prompt_tokens_per_second, Some(500.0));
        assert_eq!(rates.generation_tokens_per_second, Some(20.0));
        let measured = rates.budget(1_000, 500, Fixed::default(), 1);
        assert_eq!(measured.first_token, Duration::from_secs(38));
        assert_eq!(measured.whole, Duration::from_secs(138));
        let fixed = rates.budget(
            1_000,
            500,
            Fixed {
                first_token: None,
                whole: Some(Duration::from_secs(20)),
            },
            1,
        );
        // Four calls in flight share the pace: each is given four times the time.
        let shared = rates.budget(1_000, 500, Fixed::default(), 4);
        assert_eq!(shared.first_token, Duration::from_secs(62));
        assert_eq!(shared.whole, Duration::from_secs(462));
        assert_eq!(fixed.whole, Duration::from_secs(20));
        assert_eq!(
            fixed.first_token,
            Duration::from_secs(20),
            "never past the whole"
        );
    }

    #[test]
    fn tiny_or_nonsense_samples_leave_the_estimate_alone() {
        let throughput = Throughput::default();
        for sample in [
            Sample {
                prompt_tokens: 3,
                prompt_seconds: 0.001,
                ..Default::default()
            },
            Sample {
                prompt_tokens: 100,
                prompt_seconds: 0.0,
                generated_tokens: 100,
                generation_seconds: f64::NAN,
                concurrent: 1,
            },
        ] {
            throughput.observe("m", sample);
        }
        let rates = throughput.rates("m");
        assert_eq!(rates.prompt_tokens_per_second, None);
        assert_eq!(rates.generation_tokens_per_second, None);
        assert_eq!(rates.samples, 2);
    }
}
