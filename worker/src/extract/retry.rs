//! Which answers of an API are tried again, and after how long: pure, so the rules are tested
//! without a server or a clock.
//!
//! 429 and 5xx answers, answers that are not JSON, and requests that got no answer (refused,
//! reset, timed out) are retried up to `max_retries` times: after the answer's `Retry-After`
//! (seconds or an HTTP date; one longer than `max_retry_after` is not waited for), else after
//! `retry_backoff` doubled per attempt, at most a minute. Every other 4xx is final: the request
//! itself is wrong (401 and 403: the credentials).

use std::time::Duration;

/// What one request came back with, as far as retrying goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP status, with the `Retry-After` it carried.
    Status {
        code: u16,
        retry_after: Option<String>,
    },
    /// No answer: the connection failed or timed out.
    NoAnswer,
    /// A 2xx whose body is not JSON.
    InvalidJson,
}

/// The decision after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Wait this long, then try again.
    RetryAfter(Duration),
    /// Give up: the request cannot succeed (`retryable`: the task may still be redone later, as
    /// for an API that stays down; not for a refused credential or a bad request).
    GiveUp { retryable: bool, why: String },
}

/// The longest computed backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Decides after attempt `attempt` (1 for the first request) failed with `outcome`; `now` reads
/// an HTTP-date `Retry-After`.
pub fn decide(
    outcome: &Outcome,
    attempt: u32,
    max_retries: u32,
    backoff: Duration,
    max_retry_after: Duration,
    now: chrono::DateTime<chrono::Utc>,
) -> Decision {
    let transient = match outcome {
        Outcome::Status { code, .. } => *code == 429 || (500..=599).contains(code),
        Outcome::NoAnswer | Outcome::InvalidJson => true,
    };
    if !transient {
        return Decision::GiveUp {
            retryable: false,
            why: "not retried: the request itself was refused".into(),
        };
    }
    if attempt > max_retries {
        return Decision::GiveUp {
            // An API that kept failing may recover before the task is redone; one that kept
            // sending invalid JSON will not.
            retryable: !matches!(outcome, Outcome::InvalidJson),
            why: format!("gave up after {attempt} attempts"),
        };
    }
    if let Outcome::Status {
        retry_after: Some(h),
        ..
    } = outcome
        && let Some(wait) = retry_after(h, now)
    {
        if wait > max_retry_after {
            return Decision::GiveUp {
                retryable: true,
                why: format!(
                    "the API asked to wait {}s (Retry-After: {h}), longer than max_retry_after ({}s)",
                    wait.as_secs(),
                    max_retry_after.as_secs()
                ),
            };
        }
        return Decision::RetryAfter(wait);
    }
    let factor = 1u32 << (attempt - 1).min(16);
    Decision::RetryAfter(backoff.saturating_mul(factor).min(MAX_BACKOFF.max(backoff)))
}

/// A `Retry-After` value: delay seconds, or an HTTP date (a date in the past is no wait).
pub fn retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339("2026-12-06T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc)
    }

    fn status(code: u16, retry_after: Option<&str>) -> Outcome {
        Outcome::Status {
            code,
            retry_after: retry_after.map(String::from),
        }
    }

    fn d(o: &Outcome, attempt: u32) -> Decision {
        decide(
            o,
            attempt,
            3,
            Duration::from_millis(500),
            Duration::from_secs(120),
            now(),
        )
    }

    #[test]
    fn throttling_and_server_errors_back_off_doubling_then_give_up() {
        let o = status(503, None);
        assert_eq!(d(&o, 1), Decision::RetryAfter(Duration::from_millis(500)));
        assert_eq!(d(&o, 2), Decision::RetryAfter(Duration::from_secs(1)));
        assert_eq!(d(&o, 3), Decision::RetryAfter(Duration::from_secs(2)));
        assert!(matches!(
            d(&o, 4),
            Decision::GiveUp {
                retryable: true,
                ..
            }
        ));
        assert_eq!(
            d(&Outcome::NoAnswer, 1),
            Decision::RetryAfter(Duration::from_millis(500))
        );
        assert!(matches!(
            d(&Outcome::InvalidJson, 4),
            Decision::GiveUp {
                retryable: false,
                ..
            }
        ));
        let long = decide(
            &o,
            30,
            40,
            Duration::from_secs(1),
            Duration::from_secs(1),
            now(),
        );
        assert_eq!(
            long,
            Decision::RetryAfter(Duration::from_secs(60)),
            "capped at a minute"
        );
    }

    #[test]
    fn retry_after_is_honoured_in_seconds_or_as_a_date() {
        assert_eq!(
            d(&status(429, Some("7")), 1),
            Decision::RetryAfter(Duration::from_secs(7))
        );
        assert_eq!(
            d(&status(429, Some("Sun, 06 Dec 2026 10:00:30 GMT")), 1),
            Decision::RetryAfter(Duration::from_secs(30))
        );
        assert_eq!(
            d(&status(503, Some("Sun, 06 Dec 2026 09:00:00 GMT")), 1),
            Decision::RetryAfter(Duration::ZERO),
            "a date in the past"
        );
        assert_eq!(
            d(&status(429, Some("soon")), 2),
            Decision::RetryAfter(Duration::from_secs(1)),
            "unreadable: the backoff"
        );
        let Decision::GiveUp { retryable, why } = d(&status(429, Some("3600")), 1) else {
            panic!("an hour is longer than max_retry_after")
        };
        assert!(retryable && why.contains("3600"), "{why}");
    }

    #[test]
    fn a_refused_request_is_not_retried() {
        for code in [400, 401, 403, 404, 422] {
            assert!(
                matches!(
                    d(&status(code, None), 1),
                    Decision::GiveUp {
                        retryable: false,
                        ..
                    }
                ),
                "{code}"
            );
        }
    }
}
