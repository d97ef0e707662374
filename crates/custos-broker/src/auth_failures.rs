//! Failed authentications, summed: one audit record per source, subject and reason per window
//! instead of one per request (32,000 unauthenticated requests once wrote 32,000 durable
//! records in under two seconds), and a per-source limit past which requests are refused
//! before any signature is checked.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use custos_core::Reason;

/// Distinct (source, subject, reason) keys kept per window; the rest are summed under one
/// overflow key, so memory and records per window stay bounded whatever an attacker varies.
const MAX_KEYS: usize = 10_000;
/// The source recorded for failures past [`MAX_KEYS`].
pub(crate) const OVERFLOW_SOURCE: &str = "overflow";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(crate) source: String,
    pub(crate) subject: String,
    pub(crate) reason: Reason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sum {
    pub(crate) count: u64,
    pub(crate) first_at: i64,
    pub(crate) last_at: i64,
    pub(crate) agent: Option<String>,
}

#[derive(Debug, Default)]
struct Window {
    sums: HashMap<Key, Sum>,
    /// Failures per source in the current window (for the limit).
    per_source: HashMap<String, u64>,
}

/// The running sums of the current window.
#[derive(Debug)]
pub(crate) struct AuthFailures {
    limit_per_source: u64,
    window: Mutex<Window>,
    /// Failures in the current window from all sources: while it is below the limit no
    /// source can be over it, so the check on every request takes no lock.
    in_window: AtomicU64,
}

impl AuthFailures {
    pub(crate) fn new(limit_per_source: u64) -> Self {
        Self {
            limit_per_source,
            window: Mutex::new(Window::default()),
            in_window: AtomicU64::new(0),
        }
    }

    /// Counts one failure.
    pub(crate) fn note(
        &self,
        source: &str,
        subject: &str,
        reason: Reason,
        agent: Option<&str>,
        now: i64,
    ) {
        let Ok(mut w) = self.window.lock() else {
            return;
        };
        self.in_window.fetch_add(1, Ordering::Relaxed);
        let mut key = Key {
            source: source.to_owned(),
            subject: subject.to_owned(),
            reason,
        };
        if w.sums.len() >= MAX_KEYS && !w.sums.contains_key(&key) {
            key.source = OVERFLOW_SOURCE.to_owned();
        }
        if w.per_source.len() < MAX_KEYS || w.per_source.contains_key(source) {
            *w.per_source.entry(source.to_owned()).or_default() += 1;
        }
        let sum = w.sums.entry(key).or_insert(Sum {
            count: 0,
            first_at: now,
            last_at: now,
            agent: None,
        });
        sum.count += 1;
        sum.last_at = now;
        if let Some(a) = agent {
            sum.agent = Some(a.to_owned());
        }
    }

    /// Whether `source` failed so often in this window that it is refused unchecked.
    /// Whether any source can be over the limit in this window (lock-free; false on the
    /// usual path, so [`AuthFailures::limited`] is not consulted).
    pub(crate) fn may_limit(&self) -> bool {
        self.in_window.load(Ordering::Relaxed) >= self.limit_per_source
    }

    pub(crate) fn limited(&self, source: &str) -> bool {
        if !self.may_limit() {
            return false;
        }
        self.window
            .lock()
            .ok()
            .and_then(|w| w.per_source.get(source).copied())
            .is_some_and(|n| n >= self.limit_per_source)
    }

    /// Ends the window: its sums, and a fresh window (the limits start over).
    pub(crate) fn take(&self) -> Vec<(Key, Sum)> {
        let Ok(mut w) = self.window.lock() else {
            return Vec::new();
        };
        let old = std::mem::take(&mut *w);
        self.in_window.store(0, Ordering::Relaxed);
        let mut out: Vec<(Key, Sum)> = old.sums.into_iter().collect();
        out.sort_by_key(|(_, s)| s.first_at);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_summed_per_key_and_bounded() {
        let f = AuthFailures::new(3);
        for i in 0..5 {
            f.note("10.0.0.1", "task_token", Reason::Expired, None, i);
        }
        f.note("10.0.0.1", "agent", Reason::ReplayedAssertion, Some("a"), 9);
        assert!(f.limited("10.0.0.1"));
        assert!(!f.limited("10.0.0.2"));
        let sums = f.take();
        assert_eq!(sums.len(), 2);
        assert_eq!(sums[0].1.count, 5);
        assert_eq!((sums[0].1.first_at, sums[0].1.last_at), (0, 4));
        assert_eq!(sums[1].1.agent.as_deref(), Some("a"));
        assert!(!f.limited("10.0.0.1"), "a new window starts over");
        assert!(f.take().is_empty());

        for i in 0..(MAX_KEYS + 500) {
            f.note(&format!("src{i}"), "operator", Reason::Malformed, None, 1);
        }
        let sums = f.take();
        assert_eq!(sums.len(), MAX_KEYS + 1, "past the cap, one overflow key");
        let overflow = sums
            .iter()
            .find(|(k, _)| k.source == OVERFLOW_SOURCE)
            .expect("overflow key");
        assert_eq!(overflow.1.count, 500);
    }
}
