//! The learned completion allowance: what a request that sets no completion limit
//! (`max_tokens` ...) reserves for its answer, learned from the real completions of the same
//! workload and model instead of a fixed guess.
//!
//! A fixed allowance (`completion_reserve_tokens`, default 1,024) cut to a counter's limit
//! reserves whole small budgets: with `tokens_per_minute: 1000` and ~150-token requests, one
//! request a minute was admitted. The filter keeps, per (workload, model), the completion
//! tokens of the last [`WINDOW`] answers whose usage was read (in Envoy shared data, so every
//! worker learns from and uses the same figures) and reserves their high quantile
//! ([`QUANTILE_PERCENT`], nearest rank), bounded:
//!
//! - below [`MIN_SAMPLES`] answers (cold start), the configured allowance;
//! - never more than the configured allowance (the ceiling) nor less than [`FLOOR`];
//! - `learn_completion_reserve: false` pins the configured allowance.
//!
//! Only answers that tell how long an answer runs are learned from: a completion below the
//! limit the request set (or with no limit). An answer cut at its `max_tokens` says only that
//! the answer would have been at least that long, so it is left out (a caller sending
//! `max_tokens: 1` cannot teach the filter that answers are short).
//!
//! What it trades: at a budget's edge, each request in flight can overshoot by what its
//! answer exceeds its reservation. A workload that trains the allowance with short answers
//! and then sends a burst of long ones without `max_tokens` overshoots by up to (answer −
//! learned allowance) per request in flight instead of (answer − configured allowance); the
//! window then learns the longer answers within a few requests. Pin the allowance where that
//! matters.

use std::collections::VecDeque;

/// Completions kept per (workload, model).
pub const WINDOW: usize = 32;
/// Answers needed before the learned allowance replaces the configured one.
pub const MIN_SAMPLES: usize = 4;
/// The quantile reserved, in percent (nearest rank: with 32 answers, the second largest).
pub const QUANTILE_PERCENT: usize = 95;
/// The smallest learned allowance.
pub const FLOOR: u64 = 16;

/// Shared-data key of the completions of `workload` with `model`.
pub fn key(workload: &str, model: &str) -> String {
    ["azure_llm_filter.allowance.", model, ".", workload].concat()
}

/// The last completions of one workload and model, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completions {
    samples: VecDeque<u64>,
}

impl Completions {
    /// Reads the shared-data value (space-separated numbers; anything else is skipped, so a
    /// damaged value costs the samples, never the request).
    pub fn decode(bytes: &[u8]) -> Completions {
        let text = std::str::from_utf8(bytes).unwrap_or("");
        let mut samples: VecDeque<u64> = text.split(' ').filter_map(|n| n.parse().ok()).collect();
        while samples.len() > WINDOW {
            samples.pop_front();
        }
        Completions { samples }
    }

    /// The shared-data value: the numbers in decimal, space-separated (written digit by
    /// digit: this runs for every answer that teaches, and formatting each number as a
    /// `String` cost more than the rest of the charge).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.samples.len() * 6);
        for (i, n) in self.samples.iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            push_decimal(&mut out, *n);
        }
        out
    }

    /// Adds one answer's completion tokens, forgetting the oldest beyond [`WINDOW`].
    pub fn record(&mut self, completion_tokens: u64) {
        self.samples.push_back(completion_tokens);
        while self.samples.len() > WINDOW {
            self.samples.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The allowance for a policy whose configured allowance is `configured`: the high
    /// quantile of the window, in [`FLOOR`, `configured`]; `configured` until the window has
    /// [`MIN_SAMPLES`] answers.
    pub fn allowance(&self, configured: u64) -> u64 {
        if self.samples.len() < MIN_SAMPLES {
            return configured;
        }
        let mut sorted: Vec<u64> = self.samples.iter().copied().collect();
        sorted.sort_unstable();
        // Nearest rank: the smallest value with at least QUANTILE_PERCENT % at or below it.
        let rank = (sorted.len() * QUANTILE_PERCENT).div_ceil(100).max(1);
        let quantile = sorted.get(rank - 1).copied().unwrap_or(configured);
        quantile.max(FLOOR).min(configured)
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let start = out.len();
    loop {
        out.push(b'0' + (n % 10) as u8);
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if let Some(digits) = out.get_mut(start..) {
        digits.reverse();
    }
}

/// Whether an answer of `completion_tokens` to a request that asked for at most `requested`
/// tells how long answers run (see the module's doc).
pub fn teaches(requested: Option<u64>, completion_tokens: u64) -> bool {
    requested.is_none_or(|limit| completion_tokens < limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(samples: &[u64]) -> Completions {
        let mut c = Completions::default();
        for s in samples {
            c.record(*s);
        }
        c
    }

    #[test]
    fn cold_start_then_the_high_quantile_bounded() {
        assert_eq!(of(&[]).allowance(1024), 1024);
        assert_eq!(
            of(&[150, 150, 150]).allowance(1024),
            1024,
            "3 answers: cold"
        );
        assert_eq!(
            of(&[150, 140, 160, 150]).allowance(1024),
            160,
            "few: the largest"
        );
        // 32 answers: the second largest (one outlier does not set it; two do).
        let mut many: Vec<u64> = vec![150; 30];
        many.push(900);
        many.push(170);
        assert_eq!(of(&many).allowance(1024), 170);
        // Bounded by the configured ceiling and the floor.
        assert_eq!(of(&[5000; 8]).allowance(1024), 1024);
        assert_eq!(of(&[0, 1, 2, 1]).allowance(1024), FLOOR);
        // A ceiling below the floor wins (an operator who wants tiny reservations).
        assert_eq!(of(&[100; 8]).allowance(8), 8);
    }

    #[test]
    fn the_window_keeps_the_last_answers() {
        let mut c = of(&[1000; WINDOW]);
        for _ in 0..WINDOW {
            c.record(100);
        }
        assert_eq!(c.len(), WINDOW);
        assert_eq!(c.allowance(4096), 100, "the long answers were forgotten");
        c.record(2000);
        c.record(2000);
        assert_eq!(
            c.allowance(4096),
            2000,
            "two long answers of 32 raise it at once"
        );
    }

    #[test]
    fn shared_data_round_trip_and_damage() {
        let c = of(&[1, 22, 333]);
        assert_eq!(Completions::decode(&c.encode()), c);
        assert_eq!(
            of(&[0, 7, 1234, u64::MAX]).encode(),
            b"0 7 1234 18446744073709551615"
        );
        assert_eq!(Completions::decode(b""), Completions::default());
        assert_eq!(Completions::decode(b"7 x -3 8").len(), 2);
        assert_eq!(Completions::decode(&[0xff, 0xfe]).len(), 0);
        let long = vec!["5"; WINDOW + 10].join(" ");
        assert_eq!(Completions::decode(long.as_bytes()).len(), WINDOW);
        assert_eq!(of(&[u64::MAX; 8]).allowance(u64::MAX), u64::MAX);
    }

    #[test]
    fn only_answers_below_their_limit_teach() {
        assert!(teaches(None, 150));
        assert!(teaches(Some(200), 150));
        assert!(!teaches(Some(150), 150), "cut at its max_tokens");
        assert!(!teaches(Some(1), 1));
    }
}
