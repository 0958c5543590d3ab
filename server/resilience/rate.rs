//! Requests-per-minute limits per upstream, counted across replicas with Redis.
use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::time::Instant;

use super::*;

/// A requests-per-minute limit: calls are spaced evenly, waiting when they come too fast.
/// A call takes its turn only when it goes out, so a call cancelled while waiting uses none.
///
/// With Redis, the limit is the provider account's, counted across replicas: each minute's
/// calls are counted in Redis, and a call over the limit waits for the next minute. When Redis
/// does not answer, each replica spaces its own calls as without it.
#[derive(Debug)]
pub struct RateLimiter {
    rpm: u32,
    interval: Duration,
    /// When the next call may go out.
    next: std::sync::Mutex<Instant>,
    /// The upstream whose count is shared, and Redis.
    shared: Option<(&'static str, Arc<Redis>)>,
}

impl RateLimiter {
    /// `None` for 0 (no limit).
    pub fn per_minute(rpm: u32) -> Option<Self> {
        (rpm > 0).then(|| Self {
            rpm,
            interval: Duration::from_secs(60) / rpm,
            next: std::sync::Mutex::new(Instant::now()),
            shared: None,
        })
    }

    /// The limit counted in `redis` for all replicas calling `upstream`.
    pub fn shared(self, upstream: &'static str, redis: Arc<Redis>) -> Self {
        Self {
            shared: Some((upstream, redis)),
            ..self
        }
    }

    pub async fn acquire(&self) {
        if let Some((upstream, redis)) = &self.shared {
            loop {
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                let minute = now.as_secs() / 60;
                let key = Redis::key("rate", &format!("{upstream}:{minute}"));
                let counted: Option<u64> = redis
                    .run("rate", |mut c| async move {
                        let (count,): (u64,) = ::redis::pipe()
                            .incr(&key, 1)
                            .pexpire(&key, 61_000)
                            .ignore()
                            .query_async(&mut c)
                            .await?;
                        Ok(count)
                    })
                    .await;
                match counted {
                    None => break, // Redis away: this replica's own spacing
                    Some(n) if n <= u64::from(self.rpm) => return,
                    Some(_) => {
                        let next_minute = Duration::from_secs((minute + 1) * 60);
                        let wait = next_minute.saturating_sub(now);
                        // Replicas waking at once are spread over the first 100 ms.
                        let jitter = Duration::from_millis(fastrand::u64(0..100));
                        tokio::time::sleep(wait + jitter).await;
                    }
                }
            }
        }
        loop {
            let turn = {
                let mut next = lock(&self.next);
                let now = Instant::now();
                if *next <= now {
                    *next = now + self.interval;
                    return;
                }
                *next
            };
            tokio::time::sleep_until(turn).await;
        }
    }
}
