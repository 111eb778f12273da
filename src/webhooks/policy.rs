//! What an attempt's result means and when to try again.
//!
//! Pure functions, so the retry rules (which statuses retry, backoff with jitter,
//! `Retry-After` in both spellings, the cap) are unit-tested without a network.

use std::time::{Duration, SystemTime};

use crate::config::WebhooksConfig;

/// How a delivery attempt ended: one type for its whole way, from the target that reads the
/// receiver's answer (`classify_status`), through the queue that applies the retry schedule
/// (a `Retry` past `max_retries` becomes `Dead`), to the outbox that records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: delivered.
    Delivered {
        /// The status.
        status: u16,
    },
    /// Worth trying again (5xx, 408, 429, timeout, connection error).
    Retry {
        /// The status, when there was a response.
        status: Option<u16>,
        /// What went wrong, for the delivery log.
        error: String,
        /// The receiver's `Retry-After`, already capped.
        retry_after: Option<Duration>,
    },
    /// Not worth trying again (other 4xx, 3xx, a refused destination): dead-letter now.
    Dead {
        /// The status, when there was a response.
        status: Option<u16>,
        /// Why.
        error: String,
    },
}

/// Classifies an HTTP response. `retry_after` is the raw header value, if any.
pub fn classify_status(
    status: u16,
    retry_after: Option<&str>,
    now: SystemTime,
    cap: Duration,
) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered { status },
        408 | 429 | 500..=599 => Outcome::Retry {
            status: Some(status),
            error: format!("HTTP {status}"),
            retry_after: retry_after
                .and_then(|v| parse_retry_after(v, now))
                .map(|d| d.min(cap)),
        },
        300..=399 => Outcome::Dead {
            status: Some(status),
            error: format!("HTTP {status}: redirects are not followed"),
        },
        _ => Outcome::Dead {
            status: Some(status),
            error: format!("HTTP {status}: not retried"),
        },
    }
}

/// Parses `Retry-After`: delay-seconds (`120`) or an HTTP date
/// (`Wed, 21 Oct 2026 07:28:00 GMT`); a date in the past means "now".
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let date: actix_web::http::header::HttpDate = value.parse().ok()?;
    let at = SystemTime::from(date);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The retry schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Delay before retry n (1-based); the last entry repeats.
    pub backoff: Vec<Duration>,
    /// Random scale in `[1 - jitter, 1 + jitter]`.
    pub jitter: f64,
}

impl RetryPolicy {
    /// The policy `[webhooks]` configures.
    pub fn from_config(config: &WebhooksConfig) -> RetryPolicy {
        RetryPolicy {
            max_retries: config.max_retries,
            backoff: config.backoff.clone(),
            jitter: config.jitter,
        }
    }

    /// The delay before retry `retry` (1-based), or `None` when retries are used up.
    /// `unit` is a random number in `[0, 1)` (injected so tests are exact); a receiver's
    /// `retry_after` is a lower bound.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>, unit: f64) -> Option<Duration> {
        if retry == 0 || retry > self.max_retries {
            return None;
        }
        let index = usize::try_from(retry - 1).unwrap_or(usize::MAX);
        let base = self
            .backoff
            .get(index)
            .or(self.backoff.last())
            .copied()
            .unwrap_or(Duration::ZERO);
        let scale = 1.0 - self.jitter + 2.0 * self.jitter * unit.clamp(0.0, 1.0);
        let jittered = base.mul_f64(scale);
        Some(retry_after.map_or(jittered, |ra| ra.max(jittered)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::from_config(&WebhooksConfig::default())
    }

    #[test]
    fn default_schedule_is_1_2_4_8_16_then_dead() {
        let p = policy();
        let delays: Vec<_> = (1..=6).map(|n| p.delay(n, None, 0.5)).collect();
        let s = Duration::from_secs;
        assert_eq!(
            delays,
            vec![
                Some(s(1)),
                Some(s(2)),
                Some(s(4)),
                Some(s(8)),
                Some(s(16)),
                None
            ]
        );
    }

    #[test]
    fn jitter_stays_within_its_band_and_retry_after_is_a_floor() {
        let p = policy();
        assert_eq!(p.delay(1, None, 0.0), Some(Duration::from_millis(800)));
        let hi = p.delay(1, None, 0.999_999).unwrap();
        assert!(hi > Duration::from_millis(1199) && hi <= Duration::from_millis(1200));
        let ra = Some(Duration::from_secs(2));
        assert_eq!(p.delay(1, ra, 0.9), Some(Duration::from_secs(2)));
        assert_eq!(p.delay(5, ra, 0.5), Some(Duration::from_secs(16)));
        // A short list repeats its last delay.
        let short = RetryPolicy {
            max_retries: 3,
            backoff: vec![Duration::from_millis(50)],
            jitter: 0.0,
        };
        assert_eq!(short.delay(3, None, 0.3), Some(Duration::from_millis(50)));
        assert_eq!(short.delay(4, None, 0.3), None);
    }

    #[test]
    fn statuses_are_classified() {
        let now = SystemTime::now();
        let cap = Duration::from_secs(300);
        assert_eq!(
            classify_status(204, None, now, cap),
            Outcome::Delivered { status: 204 }
        );
        for status in [408, 429, 500, 502, 503, 599] {
            assert!(
                matches!(
                    classify_status(status, None, now, cap),
                    Outcome::Retry { .. }
                ),
                "{status}"
            );
        }
        for status in [301, 302, 400, 401, 403, 404, 410, 413, 422] {
            assert!(
                matches!(
                    classify_status(status, None, now, cap),
                    Outcome::Dead { .. }
                ),
                "{status}"
            );
        }
    }

    #[test]
    fn retry_after_seconds_dates_garbage_and_cap() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let cap = Duration::from_secs(300);
        let ra = |v: &str| match classify_status(429, Some(v), now, cap) {
            Outcome::Retry { retry_after, .. } => retry_after,
            other => panic!("{other:?}"),
        };
        assert_eq!(ra("2"), Some(Duration::from_secs(2)));
        assert_eq!(ra(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(ra("86400"), Some(cap));
        // 1_700_000_000 is Tue, 14 Nov 2023 22:13:20 GMT.
        assert_eq!(
            ra("Tue, 14 Nov 2023 22:13:50 GMT"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(ra("Tue, 14 Nov 2023 22:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(ra("soon"), None);
        assert_eq!(ra("-1"), None);
        assert_eq!(ra(""), None);
    }
}
