//! What a request is expected to cost, before Azure has answered: the tokens its budgets
//! reserve at admission, and what is charged when its answer's usage cannot be read.
//!
//! - Prompt: the body's length in bytes / 4, rounded up: OpenAI's rule of thumb for English
//!   text ("~4 characters per token"). JSON syntax, role names and keys are counted too, so for
//!   chat bodies it errs high (the stand-in's and Azure's counts of the e2e tests' prompts are
//!   below it); it errs low for scripts with several bytes per token only when they are
//!   tokenized more finely than 4 bytes per token (CJK text is ~1 token per 3 bytes, so it is
//!   still close). A real tokenizer (tiktoken's BPE ranks: ~1 MB of data, a regex engine and
//!   several µs per KB in V8) would cost more than the whole filter does per request today,
//!   and the estimate only has to be an upper-ish bound that the real usage then replaces.
//!   Multipart bodies (audio) are not text: their prompt estimate is 0 and their allowance the
//!   policy's default.
//! - Completion: the limit the request itself sets (`max_tokens`, `max_completion_tokens`,
//!   `max_output_tokens`; Anthropic's required `max_tokens`; the largest when several are
//!   set), else the policy's `completion_reserve_tokens`. Embeddings produce none.

use crate::pricing::Price;
use crate::routing::Operation;

/// Bytes per token of the prompt estimate.
pub const BYTES_PER_TOKEN: u64 = 4;

/// A request's expected cost, before the policy's default allowance is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Estimate {
    pub prompt_tokens: u64,
    /// The completion limit the request sets, if it sets one.
    pub requested_completion: Option<u64>,
    /// The operation produces completion tokens (not embeddings).
    pub completes: bool,
}

impl Estimate {
    /// The estimate of a request of `op` with a body of `body_len` bytes that asks for at most
    /// `requested_completion` output tokens.
    pub fn new(op: Operation, body_len: usize, requested_completion: Option<u64>) -> Estimate {
        let prompt_tokens = if op.is_multipart() {
            0
        } else {
            prompt_tokens(body_len)
        };
        Estimate {
            prompt_tokens,
            requested_completion,
            completes: op != Operation::Embeddings,
        }
    }

    /// The tokens to reserve under a policy whose default completion allowance is
    /// `completion_reserve`; at least 1, so an exhausted budget admits nothing.
    pub fn tokens(&self, completion_reserve: u64) -> u64 {
        let completion = if self.completes {
            self.requested_completion.unwrap_or(completion_reserve)
        } else {
            0
        };
        self.prompt_tokens.saturating_add(completion).max(1)
    }

    /// [`Estimate::tokens`] for a counter whose limit is `max`: the policy's default allowance
    /// is a guess, so it is cut to what a fresh window can hold; the prompt and a completion
    /// limit the request sets itself are not (a request that could never fit is refused
    /// rather than admitted into a fresh window to overshoot it).
    pub fn tokens_for_limit(&self, completion_reserve: u64, max: u64) -> u64 {
        let firm = Estimate {
            requested_completion: self.requested_completion.or(Some(0)),
            ..*self
        }
        .tokens(0);
        self.tokens(completion_reserve).min(max.max(firm))
    }
}

impl Estimate {
    /// [`Estimate::tokens_for_limit`] for a cost counter whose limit is `max` pico-units: the
    /// estimate priced at the model's rates (the prompt as uncached input, the completion as
    /// output), the default allowance's part cut to the limit like its tokens are.
    pub fn cost_for_limit(&self, completion_reserve: u64, price: &Price, max: u64) -> u64 {
        let completion = |reserve: u64| {
            if self.completes {
                self.requested_completion.unwrap_or(reserve)
            } else {
                0
            }
        };
        let cost = |reserve: u64| {
            u64::try_from(price.estimate_pico(self.prompt_tokens, completion(reserve)))
                .unwrap_or(u64::MAX)
        };
        let full = cost(completion_reserve);
        let firm = if self.requested_completion.is_some() {
            full
        } else {
            cost(0)
        };
        full.min(max.max(firm)).max(1)
    }
}

/// The prompt estimate of a body of `len` bytes.
pub fn prompt_tokens(len: usize) -> u64 {
    (len as u64).div_ceil(BYTES_PER_TOKEN)
}

/// The largest of the completion limits a request body sets (fields that are absent, null or
/// not a non-negative integer are ignored: Azure refuses such bodies itself).
pub fn requested_completion(limits: &[Option<&serde_json::Value>]) -> Option<u64> {
    limits
        .iter()
        .filter_map(|v| v.and_then(serde_json::Value::as_u64))
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prompt_and_completion() {
        assert_eq!(prompt_tokens(0), 0);
        assert_eq!(prompt_tokens(1), 1);
        assert_eq!(prompt_tokens(400), 100);
        assert_eq!(prompt_tokens(401), 101);
        let chat = Estimate::new(Operation::ChatCompletions, 400, Some(50));
        assert_eq!(chat.tokens(1024), 150);
        let no_limit = Estimate::new(Operation::Messages, 400, None);
        assert_eq!(no_limit.tokens(1024), 1124);
        let emb = Estimate::new(Operation::Embeddings, 400, Some(50));
        assert_eq!(emb.tokens(1024), 100);
        let audio = Estimate::new(Operation::AudioTranscriptions, 4_000_000, None);
        assert_eq!(audio.tokens(300), 300);
        assert_eq!(Estimate::new(Operation::Embeddings, 0, None).tokens(0), 1);
        // Only the default allowance is cut to the limit.
        assert_eq!(no_limit.tokens_for_limit(1024, 500), 500);
        assert_eq!(no_limit.tokens_for_limit(1024, 50), 100);
        assert_eq!(chat.tokens_for_limit(1024, 120), 150);
        assert_eq!(emb.tokens_for_limit(1024, 10), 100);
        assert_eq!(
            Estimate::new(Operation::ChatCompletions, usize::MAX, Some(u64::MAX)).tokens(0),
            u64::MAX
        );
    }

    #[test]
    fn cost_estimates_price_the_tokens_and_cut_only_the_default_allowance() {
        // 2.5 per million input, 10 per million output: micro-units per million tokens.
        let price = Price {
            input: 2_500_000,
            cached_input: 1_250_000,
            output: 10_000_000,
        };
        let chat = Estimate::new(Operation::ChatCompletions, 400, Some(50));
        assert_eq!(
            chat.cost_for_limit(1024, &price, u64::MAX),
            100 * 2_500_000 + 50 * 10_000_000
        );
        let no_limit = Estimate::new(Operation::ChatCompletions, 400, None);
        assert_eq!(
            no_limit.cost_for_limit(1024, &price, u64::MAX),
            100 * 2_500_000 + 1024 * 10_000_000
        );
        // Cut to the limit, but never below the prompt's own cost.
        assert_eq!(
            no_limit.cost_for_limit(1024, &price, 1_000_000_000),
            1_000_000_000
        );
        assert_eq!(no_limit.cost_for_limit(1024, &price, 1), 100 * 2_500_000);
        assert_eq!(
            chat.cost_for_limit(1024, &price, 1),
            100 * 2_500_000 + 50 * 10_000_000,
            "a requested max_tokens is not cut"
        );
        let emb = Estimate::new(Operation::Embeddings, 400, None);
        assert_eq!(emb.cost_for_limit(1024, &price, u64::MAX), 100 * 2_500_000);
        let free = Price {
            input: 0,
            cached_input: 0,
            output: 0,
        };
        assert_eq!(chat.cost_for_limit(1024, &free, 10), 1, "at least 1");
        let huge = Estimate::new(Operation::ChatCompletions, usize::MAX, Some(u64::MAX));
        assert_eq!(huge.cost_for_limit(0, &price, 10), u64::MAX, "saturates");
    }

    #[test]
    fn requested_completion_takes_the_largest_integer() {
        let a = json!(100);
        let b = json!(400);
        let bad = json!("400");
        let neg = json!(-5);
        assert_eq!(requested_completion(&[Some(&a), None, Some(&b)]), Some(400));
        assert_eq!(requested_completion(&[Some(&bad), Some(&neg), None]), None);
        assert_eq!(requested_completion(&[]), None);
    }
}
