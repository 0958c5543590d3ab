//! A circuit breaker per upstream: open after consecutive failures, fail fast while open,
//! one half-open trial after a cool-down.
use std::{sync::Mutex, time::Duration};

use tokio::{sync::watch, time::Instant};

use crate::lock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_running: bool },
}

#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    cool_down: Duration,
    inner: Mutex<Inner>,
    /// The state as observers see it (metrics, health), with the instant an open breaker
    /// may let a trial through.
    changes: watch::Sender<(BreakerState, Option<Instant>)>,
}

/// What the breaker says about one call.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Open: try again after this long.
    Rejected(Duration),
}

impl CircuitBreaker {
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cool_down,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
            changes: watch::channel((BreakerState::Closed, None)).0,
        }
    }

    fn publish(&self, state: BreakerState, until: Option<Instant>) {
        self.changes.send_if_modified(|current| {
            let changed = current.0 != state;
            *current = (state, until);
            changed
        });
    }

    /// Whether [`CircuitBreaker::admit`] would refuse now, without taking a half-open trial.
    pub fn rejects(&self) -> Option<Duration> {
        match *lock(&self.inner) {
            Inner::Open { until } if Instant::now() < until => Some(until - Instant::now()),
            Inner::HalfOpen {
                trial_running: true,
            } => Some(Duration::from_millis(100)),
            _ => None,
        }
    }

    /// Whether a call may go out now. After the cool-down, exactly one trial is allowed.
    pub fn admit(&self) -> Admission {
        let mut inner = lock(&self.inner);
        match *inner {
            Inner::Closed { .. } => Admission::Allowed,
            Inner::Open { until } if Instant::now() >= until => {
                *inner = Inner::HalfOpen {
                    trial_running: true,
                };
                drop(inner);
                self.publish(BreakerState::HalfOpen, None);
                Admission::Allowed
            }
            Inner::Open { until } => Admission::Rejected(until - Instant::now()),
            Inner::HalfOpen {
                trial_running: false,
            } => {
                *inner = Inner::HalfOpen {
                    trial_running: true,
                };
                Admission::Allowed
            }
            Inner::HalfOpen {
                trial_running: true,
            } => Admission::Rejected(Duration::from_millis(100)),
        }
    }

    /// Records the outcome of an admitted call: `Some(true)` success, `Some(false)` a failure
    /// of the upstream, `None` an outcome that says nothing about its health (a 4xx, a
    /// cancelled call).
    pub fn record(&self, healthy: Option<bool>) {
        let mut inner = lock(&self.inner);
        let next = match (&*inner, healthy) {
            (Inner::HalfOpen { .. }, None) => Some(Inner::HalfOpen {
                trial_running: false,
            }),
            (_, None) => None,
            // No call is admitted while open: a success now is from a call admitted before it
            // opened, and only a half-open trial may close it.
            (Inner::Open { .. }, Some(true)) => None,
            (_, Some(true)) => Some(Inner::Closed { failures: 0 }),
            (Inner::Closed { failures }, Some(false)) if failures + 1 < self.threshold => {
                Some(Inner::Closed {
                    failures: failures + 1,
                })
            }
            (Inner::Open { .. }, Some(false)) => None,
            (_, Some(false)) => Some(Inner::Open {
                until: Instant::now() + self.cool_down,
            }),
        };
        if let Some(next) = next {
            let published = match &next {
                Inner::Closed { .. } => (BreakerState::Closed, None),
                Inner::Open { until } => (BreakerState::Open, Some(*until)),
                Inner::HalfOpen { .. } => (BreakerState::HalfOpen, None),
            };
            *inner = next;
            drop(inner);
            if published.0 == BreakerState::Open {
                tracing::warn!(cool_down = ?self.cool_down, "circuit breaker opened");
            }
            self.publish(published.0, published.1);
        }
    }

    /// The state now; an open breaker whose cool-down has passed reads as half-open.
    pub fn state(&self) -> BreakerState {
        match *lock(&self.inner) {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { until } if Instant::now() >= until => BreakerState::HalfOpen,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// State changes, with the end of the cool-down while open.
    pub fn subscribe(&self) -> watch::Receiver<(BreakerState, Option<Instant>)> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_after_consecutive_failures_and_lets_one_trial_through_after_the_cool_down() {
        let breaker = CircuitBreaker::new(3, Duration::from_millis(50));
        breaker.record(Some(false));
        breaker.record(Some(false));
        breaker.record(Some(true)); // a success resets the count
        breaker.record(Some(false));
        breaker.record(Some(false));
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.record(Some(false));
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(
            matches!(breaker.admit(), Admission::Rejected(d) if d <= Duration::from_millis(50))
        );

        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert_eq!(breaker.admit(), Admission::Allowed, "the trial");
        assert!(
            matches!(breaker.admit(), Admission::Rejected(_)),
            "only one trial at a time"
        );
        breaker.record(Some(false));
        assert_eq!(
            breaker.state(),
            BreakerState::Open,
            "a failed trial opens it again"
        );

        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(breaker.admit(), Admission::Allowed);
        breaker.record(Some(true));
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.admit(), Admission::Allowed);
    }

    #[tokio::test]
    async fn outcomes_that_say_nothing_about_health_do_not_count() {
        let breaker = CircuitBreaker::new(1, Duration::from_millis(20));
        breaker.record(None);
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.record(Some(false));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(breaker.admit(), Admission::Allowed);
        breaker.record(None); // the trial was cancelled: another may run
        assert_eq!(breaker.admit(), Admission::Allowed);
    }
}
