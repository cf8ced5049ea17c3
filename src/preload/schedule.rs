//! When each image is next due in `run` mode. Pure: the caller passes the clock.
//!
//! Every image starts due. After a pass an image that succeeded is due again one interval later;
//! one that failed is retried sooner, after a backoff that starts at 30 s and doubles up to the
//! interval, so one bad minute does not leave a node cold for an hour. Failures that waiting
//! seconds will not fix (credentials refused, image or platform not found) back off from 5 min.

use std::time::Duration;

use tokio::time::Instant;

/// First retry delay after a failure.
pub const FIRST_RETRY: Duration = Duration::from_secs(30);

/// First retry delay after a failure that needs someone to act (credentials, a missing image).
pub const FIRST_SLOW_RETRY: Duration = Duration::from_secs(300);

/// The delay before retry number `failures` (1 for the first failure), capped at `interval`.
pub fn backoff(failures: u32, interval: Duration) -> Duration {
    backoff_from(FIRST_RETRY, failures, interval)
}

/// The delay before retry number `failures`, doubling from `first`, capped at `interval`.
pub fn backoff_from(first: Duration, failures: u32, interval: Duration) -> Duration {
    let doubling = 2u32.saturating_pow(failures.saturating_sub(1));
    first.saturating_mul(doubling).min(interval)
}

#[derive(Debug, Clone)]
struct Slot<K> {
    key: K,
    due: Instant,
    failures: u32,
}

/// Due times for a list of keys.
#[derive(Debug, Clone)]
pub struct Schedule<K> {
    interval: Duration,
    slots: Vec<Slot<K>>,
}

impl<K: Clone + PartialEq> Schedule<K> {
    /// Every key due at `now`.
    pub fn new(keys: impl IntoIterator<Item = K>, interval: Duration, now: Instant) -> Self {
        let slots = keys.into_iter().map(|key| Slot { key, due: now, failures: 0 }).collect();
        Schedule { interval, slots }
    }

    /// Replaces the key list: keys already known keep their state, new keys are due at `now`,
    /// missing keys are forgotten. (The seam for reloading the image list without a restart.)
    pub fn replace(&mut self, keys: impl IntoIterator<Item = K>, now: Instant) {
        let old = std::mem::take(&mut self.slots);
        self.slots = keys
            .into_iter()
            .map(|key| {
                old.iter().find(|s| s.key == key).cloned().unwrap_or(Slot { key, due: now, failures: 0 })
            })
            .collect();
    }

    /// The keys due at `now`, in list order.
    pub fn due(&self, now: Instant) -> Vec<K> {
        self.slots.iter().filter(|s| s.due <= now).map(|s| s.key.clone()).collect()
    }

    /// The earliest due time, if any key is scheduled.
    pub fn next_due(&self) -> Option<Instant> {
        self.slots.iter().map(|s| s.due).min()
    }

    /// Records a success: due again one interval after `now`.
    pub fn succeeded(&mut self, key: &K, now: Instant) {
        if let Some(slot) = self.slots.iter_mut().find(|s| &s.key == key) {
            slot.failures = 0;
            slot.due = now + self.interval;
        }
    }

    /// Records a failure and returns the delay before the retry.
    pub fn failed(&mut self, key: &K, now: Instant) -> Duration {
        self.failed_after(key, now, FIRST_RETRY)
    }

    /// Records a failure whose retries back off from `first`; returns the delay before the retry.
    pub fn failed_after(&mut self, key: &K, now: Instant, first: Duration) -> Duration {
        let interval = self.interval;
        match self.slots.iter_mut().find(|s| &s.key == key) {
            Some(slot) => {
                slot.failures = slot.failures.saturating_add(1);
                let delay = backoff_from(first, slot.failures, interval);
                slot.due = now + delay;
                delay
            }
            None => interval,
        }
    }

    /// Consecutive failures recorded for `key`.
    pub fn failures(&self, key: &K) -> u32 {
        self.slots.iter().find(|s| &s.key == key).map_or(0, |s| s.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn backoff_doubles_from_30s_up_to_the_interval() {
        let delays: Vec<u64> = (1..=9).map(|n| backoff(n, HOUR).as_secs()).collect();
        assert_eq!(delays, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(backoff(u32::MAX, HOUR), HOUR);
        assert_eq!(backoff(1, Duration::from_secs(5)), Duration::from_secs(5));
    }

    #[test]
    fn slow_failures_back_off_from_5_minutes() {
        let delays: Vec<u64> = (1..=5).map(|n| backoff_from(FIRST_SLOW_RETRY, n, HOUR).as_secs()).collect();
        assert_eq!(delays, [300, 600, 1200, 2400, 3600]);
        let t0 = Instant::now();
        let mut s = Schedule::new(["a"], HOUR, t0);
        assert_eq!(s.failed_after(&"a", t0, FIRST_SLOW_RETRY), Duration::from_secs(300));
        assert_eq!(s.failed(&"a", t0), Duration::from_secs(60), "one failure count per key");
    }

    #[test]
    fn successes_wait_an_interval_failures_back_off() {
        let t0 = Instant::now();
        let mut s = Schedule::new(["a", "b"], HOUR, t0);
        assert_eq!(s.due(t0), ["a", "b"]);
        s.succeeded(&"a", t0);
        assert_eq!(s.failed(&"b", t0), Duration::from_secs(30));
        assert_eq!(s.next_due(), Some(t0 + Duration::from_secs(30)));
        assert!(s.due(t0 + Duration::from_secs(29)).is_empty());
        assert_eq!(s.due(t0 + Duration::from_secs(30)), ["b"]);
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(s.failed(&"b", t1), Duration::from_secs(60));
        assert_eq!(s.failures(&"b"), 2);
        s.succeeded(&"b", t1 + Duration::from_secs(60));
        assert_eq!(s.failures(&"b"), 0);
        assert_eq!(s.due(t0 + HOUR), ["a"]);
    }

    #[test]
    fn replace_keeps_known_keys() {
        let t0 = Instant::now();
        let mut s = Schedule::new(["a", "b"], HOUR, t0);
        s.succeeded(&"a", t0);
        s.failed(&"b", t0);
        let t1 = t0 + Duration::from_secs(1);
        s.replace(["b", "c"], t1);
        assert_eq!(s.due(t1), ["c"]);
        assert_eq!(s.failures(&"b"), 1);
        assert_eq!(s.failures(&"a"), 0);
        assert_eq!(s.due(t0 + HOUR), ["b", "c"]);
    }
}
