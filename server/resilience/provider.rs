//! Pacing by what the provider says is left: OpenAI and many compatible servers send
//! `x-ratelimit-remaining-requests`, `x-ratelimit-remaining-tokens` and
//! `x-ratelimit-reset-*` with every answer. When the remaining requests run low, calls are
//! spread over the time to the reset; when none (or almost no tokens) are left, calls wait
//! for the reset. So a burst of jobs slows down before the provider answers 429, whatever
//! the account's other users (other services, other regions) have spent.
use std::{sync::Mutex, time::Duration};

use reqwest::header::HeaderMap;
use serde::Serialize;
use tokio::time::Instant;

use crate::lock;

/// Remaining requests at or below this share of the limit (or this count when the limit is
/// not sent) are spread over the time to the reset.
const LOW_SHARE: f64 = 0.2;
const LOW_REQUESTS: u64 = 5;
/// Remaining tokens at or below this share of the limit (or this count) wait for the reset:
/// one call may need thousands.
const LOW_TOKENS_SHARE: f64 = 0.02;
const LOW_TOKENS: u64 = 4_000;
/// The longest wait for a reset: a provider naming an hour is not waited for an hour here (the
/// call then meets the 429 and its `Retry-After` rules).
const MAX_WAIT: Duration = Duration::from_secs(60);

/// One of the provider's budgets (requests or tokens) as last seen.
#[derive(Debug, Clone, Copy)]
struct Window {
    limit: Option<u64>,
    /// What is left, less the calls sent since the answer that said so.
    remaining: u64,
    reset_at: Instant,
    /// Spread calls go no earlier than this.
    next_at: Instant,
}

#[derive(Debug, Default)]
struct State {
    requests: Option<Window>,
    tokens: Option<Window>,
    /// Calls paced through and not finished: sent, or about to be.
    in_flight: u64,
}

/// The provider's own limits for one upstream.
#[derive(Debug, Default)]
pub struct ProviderLimits {
    state: Mutex<State>,
}

/// A call let through; it counts as in flight until dropped.
pub struct Paced<'a>(&'a ProviderLimits);

impl Drop for Paced<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.0.state);
        state.in_flight = state.in_flight.saturating_sub(1);
    }
}

/// What `/health/detailed` and the gauges show of one budget.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Seen {
    pub limit: Option<u64>,
    pub remaining: u64,
    pub reset_in_seconds: f64,
}

/// `6m0s`, `1s`, `20ms`, `1h2m3.5s` or plain seconds, as providers write their resets.
pub fn parse_reset(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).ok();
    }
    let mut total = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += number * scale;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).ok()
}

fn header<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Option<T> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// One budget from its three headers, less `in_flight` calls the provider had not counted.
fn window(headers: &HeaderMap, kind: &str, in_flight: u64, now: Instant) -> Option<Window> {
    let remaining: u64 = header(headers, &format!("x-ratelimit-remaining-{kind}"))?;
    let reset = headers
        .get(format!("x-ratelimit-reset-{kind}"))
        .and_then(|v| v.to_str().ok())
        .and_then(parse_reset)
        .unwrap_or(Duration::from_secs(1))
        .min(MAX_WAIT);
    Some(Window {
        limit: header(headers, &format!("x-ratelimit-limit-{kind}")),
        remaining: remaining.saturating_sub(in_flight),
        reset_at: now + reset,
        next_at: now,
    })
}

impl Window {
    fn low(&self, share: f64, count: u64) -> bool {
        let threshold = self
            .limit
            .map_or(count, |limit| ((limit as f64 * share) as u64).max(1));
        self.remaining <= threshold
    }
}

impl ProviderLimits {
    /// Takes in what an answer's headers say; the call answered is still counted in flight,
    /// so it is not subtracted twice.
    pub fn observe(&self, headers: &HeaderMap) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let others = state.in_flight.saturating_sub(1);
        if let Some(requests) = window(headers, "requests", others, now) {
            let next_at = state.requests.map_or(now, |w| w.next_at);
            state.requests = Some(Window {
                next_at,
                ..requests
            });
        }
        if let Some(tokens) = window(headers, "tokens", 0, now) {
            state.tokens = Some(tokens);
        }
    }

    /// Waits until the provider's budgets let one more call go.
    pub async fn pace(&self) -> Paced<'_> {
        loop {
            match self.turn(Instant::now()) {
                Ok(()) => return Paced(self),
                Err(at) => tokio::time::sleep_until(at).await,
            }
        }
    }

    /// One call now, or the instant it may go.
    fn turn(&self, now: Instant) -> Result<(), Instant> {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        // A budget past its reset is whole again (the next answer says how whole).
        for window in [&mut state.requests, &mut state.tokens] {
            if window.is_some_and(|w| now >= w.reset_at) {
                *window = None;
            }
        }
        if let Some(tokens) = state.tokens
            && tokens.low(LOW_TOKENS_SHARE, LOW_TOKENS)
        {
            return Err(tokens.reset_at);
        }
        if let Some(requests) = &mut state.requests {
            if requests.remaining == 0 {
                return Err(requests.reset_at);
            }
            if requests.low(LOW_SHARE, LOW_REQUESTS) {
                if now < requests.next_at {
                    return Err(requests.next_at);
                }
                // What is left, spread evenly over the time to the reset.
                let spacing = (requests.reset_at - now) / (requests.remaining as u32).max(1);
                requests.next_at = now + spacing;
            }
            requests.remaining -= 1;
        }
        state.in_flight += 1;
        Ok(())
    }

    /// The budgets as last seen: (requests, tokens).
    pub fn seen(&self) -> (Option<Seen>, Option<Seen>) {
        let now = Instant::now();
        let state = lock(&self.state);
        let seen = |w: Option<Window>| {
            w.map(|w| Seen {
                limit: w.limit,
                remaining: w.remaining,
                reset_in_seconds: w.reset_at.saturating_duration_since(now).as_secs_f64(),
            })
        };
        (seen(state.requests), seen(state.tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap_or_else(|_| unreachable!()));
        }
        map
    }

    #[test]
    fn resets_are_read_as_providers_write_them() {
        assert_eq!(parse_reset("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_reset("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(
            parse_reset("1h2m3.5s"),
            Some(Duration::from_secs_f64(3723.5))
        );
        assert_eq!(parse_reset("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_reset("soon"), None);
        assert_eq!(parse_reset("5x"), None);
    }

    #[tokio::test]
    async fn a_low_budget_is_spread_over_the_reset_and_an_empty_one_waits_for_it() {
        let limits = ProviderLimits::default();
        let _first = limits.pace().await;
        limits.observe(&headers(&[
            ("x-ratelimit-limit-requests", "100"),
            ("x-ratelimit-remaining-requests", "3"),
            ("x-ratelimit-reset-requests", "3s"),
        ]));
        let now = Instant::now();
        assert_eq!(limits.turn(now), Ok(()), "the first of three goes at once");
        let next = limits.turn(now).unwrap_err();
        assert!(
            next > now + Duration::from_millis(900),
            "then spaced: {:?}",
            next - now
        );
        limits.observe(&headers(&[("x-ratelimit-remaining-requests", "0")]));
        let reset = limits.turn(now).unwrap_err();
        assert!(reset >= now + Duration::from_millis(900));
        // Plenty left: no pacing at all.
        limits.observe(&headers(&[
            ("x-ratelimit-limit-requests", "100"),
            ("x-ratelimit-remaining-requests", "90"),
        ]));
        assert_eq!(limits.turn(now), Ok(()));
        assert_eq!(limits.turn(now), Ok(()));
        // Almost no tokens left: wait for their reset.
        limits.observe(&headers(&[
            ("x-ratelimit-limit-tokens", "1000000"),
            ("x-ratelimit-remaining-tokens", "900"),
            ("x-ratelimit-reset-tokens", "2s"),
        ]));
        assert!(limits.turn(now).is_err());
        let (requests, tokens) = limits.seen();
        assert_eq!(requests.map(|r| r.limit), Some(Some(100)));
        assert_eq!(tokens.map(|t| t.remaining), Some(900));
    }
}
