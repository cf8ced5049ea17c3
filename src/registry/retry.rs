//! When to retry a registry request and how long to wait: 429, 5xx and dropped connections are
//! retried with exponential backoff (honouring `Retry-After`), everything else is final.

use std::time::Duration;

/// The retry settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included.
    pub attempts: u32,
    /// Wait before the second attempt; doubled each time.
    pub first_wait: Duration,
    /// Longest wait between attempts.
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 5, first_wait: Duration::from_millis(500), max_wait: Duration::from_secs(10) }
    }
}

impl RetryPolicy {
    /// The wait before attempt `next` (2 for the first retry), or `None` when no attempt is left.
    /// A server's `Retry-After` is honoured up to 4× `max_wait`.
    pub fn wait(&self, next: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if next > self.attempts || next < 2 {
            return None;
        }
        let backoff = self.first_wait.saturating_mul(1 << (next - 2).min(16)).min(self.max_wait);
        Some(match retry_after {
            Some(asked) => asked.min(self.max_wait * 4).max(backoff),
            None => backoff,
        })
    }
}

/// Whether an HTTP status is worth another attempt.
pub fn retriable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// `Retry-After` in seconds (the HTTP-date form is ignored: backoff applies).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy::default();
        let waits: Vec<_> = (2..=5).map(|n| p.wait(n, None).unwrap().as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000]);
        assert_eq!(p.wait(6, None), None, "five attempts in all");
        assert_eq!(p.wait(1, None), None);
        let capped = RetryPolicy { attempts: 30, ..p };
        assert_eq!(capped.wait(6, None), Some(Duration::from_secs(8)));
        assert_eq!(capped.wait(30, None), Some(Duration::from_secs(10)));
    }

    #[test]
    fn retry_after_is_honoured_within_bounds() {
        let p = RetryPolicy::default();
        assert_eq!(p.wait(2, Some(Duration::from_secs(3))), Some(Duration::from_secs(3)));
        assert_eq!(p.wait(2, Some(Duration::ZERO)), Some(Duration::from_millis(500)));
        assert_eq!(p.wait(2, Some(Duration::from_secs(3600))), Some(Duration::from_secs(40)));
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn statuses() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(retriable_status(s), "{s}");
        }
        for s in [200, 401, 403, 404, 400, 501] {
            assert!(!retriable_status(s), "{s}");
        }
    }
}
