//! What a request is charged when it ends: the fail-safe rules. A caller must not be able to
//! make the filter charge nothing for an answer Azure bills (by cancelling, cutting or
//! resetting the stream, asking for an encoding the filter cannot read, or an answer without a
//! usage object), and must not pay for what Azure does not bill (its 4xx / 5xx / 429).
//!
//! An answer is complete when its end was seen: its terminal event (a stream's `[DONE]`,
//! usage-only chunk, `message_stop`, `response.completed` ...) or the last byte of its JSON
//! document (src/meter.rs), or the end of its body. What the connection does after that (the
//! OpenAI SDKs close it as soon as they have read `[DONE]`) does not matter: the request is
//! settled at that moment.
//!
//! | how the request ended                                   | charged                          |
//! |---------------------------------------------------------|----------------------------------|
//! | 2xx answer complete, usage read                         | the usage, exactly               |
//! | 2xx answer complete, no readable usage                  | the estimate                     |
//! | 2xx answer cut short before its end (caller gone, reset, timeout) | the larger of usage seen and the estimate |
//! | sent to Azure, no answer seen (caller gone before it)   | the estimate                     |
//! | sent to Azure, Envoy's 504 (upstream timeout)           | the estimate (as no answer seen) |
//! | error status (Azure's 4xx / 5xx / 429, Envoy's 503 ...) | nothing: the reservation is released |
//!
//! A stream cut short may have reported part of its usage (Anthropic's `message_start` has the
//! input tokens and 1 output token): that is a floor, not the bill, so the estimate still
//! applies when it is higher.

use crate::usage::Usage;

/// How a request that was sent to Azure ended, as far as its budget is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending {
    /// `:status` of the answer, if response headers were seen.
    pub status: Option<u32>,
    /// The answer's body reached its end.
    pub complete: bool,
    /// The usage read from the answer, if any.
    pub usage: Option<Usage>,
}

/// What to charge, per counter given its estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// The real usage (total tokens).
    Exact(u64),
    /// The estimate, or `seen` when that is more.
    AtLeastEstimate { seen: u64 },
    /// Nothing: Azure does not bill it.
    Release,
}

impl Settlement {
    pub fn of(ending: &Ending) -> Settlement {
        let seen = ending.usage.map(|u| u.total());
        match ending.status {
            Some(s) if !(200..300).contains(&s) => Settlement::Release,
            Some(_) if ending.complete => match seen {
                Some(t) => Settlement::Exact(t),
                None => Settlement::AtLeastEstimate { seen: 0 },
            },
            _ => Settlement::AtLeastEstimate {
                seen: seen.unwrap_or(0),
            },
        }
    }

    /// Tokens to charge a counter whose estimate for the request was `estimate`.
    pub fn tokens(&self, estimate: u64) -> u64 {
        match *self {
            Settlement::Exact(t) => t,
            Settlement::AtLeastEstimate { seen } => seen.max(estimate),
            Settlement::Release => 0,
        }
    }

    /// Pico-units to charge a cost counter whose estimate for the request was `estimate`,
    /// `seen` being what the usage read costs at the model's prices: the same rules in money.
    pub fn cost(&self, estimate: u64, seen: Option<u64>) -> u64 {
        match *self {
            Settlement::Exact(_) => seen.unwrap_or(estimate),
            Settlement::AtLeastEstimate { .. } => seen.unwrap_or(0).max(estimate),
            Settlement::Release => 0,
        }
    }

    /// The charge is the answer's own usage (not an estimate, not a release).
    pub fn is_exact(&self) -> bool {
        matches!(self, Settlement::Exact(_))
    }

    /// Label for metrics and access logs.
    pub fn label(&self) -> &'static str {
        match self {
            Settlement::Exact(_) => "usage",
            Settlement::AtLeastEstimate { .. } => "estimate",
            Settlement::Release => "released",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // `Usage` gains token-detail fields (issue 18); this stays valid when it does.
    #[allow(clippy::needless_update)]
    fn usage(p: u64, c: u64) -> Option<Usage> {
        Some(Usage {
            prompt_tokens: p,
            completion_tokens: c,
            ..Usage::default()
        })
    }

    fn ending(status: Option<u32>, complete: bool, usage: Option<Usage>) -> u64 {
        Settlement::of(&Ending {
            status,
            complete,
            usage,
        })
        .tokens(500)
    }

    #[test]
    fn the_fail_safe_rules() {
        // Complete answers with usage: exactly, even far below the estimate.
        assert_eq!(ending(Some(200), true, usage(10, 5)), 15);
        assert_eq!(ending(Some(200), true, usage(900, 100)), 1000);
        // Complete without usage (gzip, speech, no usage object): the estimate.
        assert_eq!(ending(Some(200), true, None), 500);
        // Cut or cancelled: never less than the estimate, nor than what was seen.
        assert_eq!(ending(Some(200), false, None), 500);
        assert_eq!(ending(Some(200), false, usage(25, 1)), 500);
        assert_eq!(ending(Some(200), false, usage(700, 1)), 701);
        // Caller gone before any answer: Azure may still bill it.
        assert_eq!(ending(None, false, None), 500);
        // Errors are not billed.
        for status in [400, 401, 404, 408, 429, 500, 503] {
            assert_eq!(ending(Some(status), true, None), 0, "{status}");
            assert_eq!(ending(Some(status), false, usage(3, 3)), 0, "{status}");
        }
        // In money: the usage's cost, the larger of it and the estimate, or nothing.
        assert_eq!(Settlement::Exact(15).cost(900, Some(40)), 40);
        assert_eq!(
            Settlement::AtLeastEstimate { seen: 3 }.cost(900, Some(40)),
            900
        );
        assert_eq!(
            Settlement::AtLeastEstimate { seen: 3 }.cost(900, Some(4000)),
            4000
        );
        assert_eq!(Settlement::Release.cost(900, Some(40)), 0);
        assert!(Settlement::Exact(3).is_exact());
        assert_eq!(Settlement::Release.label(), "released");
    }
}
