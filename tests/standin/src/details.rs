//! Usage details the way Azure OpenAI reports them: prompt caching (cached input tokens) and
//! reasoning tokens, deterministic so that tests can predict them.
//!
//! - **Prompt cache**: like Azure's, for prompts of at least 1024 tokens. The stand-in
//!   remembers every prefix of whole messages it served (per deployment); a later request
//!   whose first messages repeat a remembered prefix of at least 1024 tokens has that prefix
//!   cached, rounded down to a multiple of 128 tokens (Azure caches in 128-token steps).
//! - **Reasoning**: deployments of reasoning models (`o1*`, `o3*`, `o4*`, `gpt-5*`) think
//!   `REASONING_PER_OUTPUT_TOKEN` tokens per visible output token; the reasoning tokens are
//!   part of `completion_tokens` / `output_tokens`, as on Azure.

use serde_json::Value;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};

/// The shortest prompt Azure caches, and its step.
pub const CACHE_MIN_TOKENS: u64 = 1024;
pub const CACHE_STEP_TOKENS: u64 = 128;
/// Reasoning tokens per visible output token of a reasoning model.
pub const REASONING_PER_OUTPUT_TOKEN: u64 = 4;

/// Prefixes served, as hashes of (deployment, messages so far).
#[derive(Default)]
pub struct PromptCache {
    prefixes: HashSet<u64>,
}

impl PromptCache {
    /// The cached tokens of a prompt (its messages and each one's token count), then
    /// remembers its prefixes.
    pub fn lookup_and_store(&mut self, deployment: &str, messages: &[(&Value, u64)]) -> u64 {
        let mut hasher = DefaultHasher::new();
        deployment.hash(&mut hasher);
        let mut tokens = 0;
        let mut cached = 0;
        let mut seen = Vec::new();
        for (message, n) in messages {
            message.to_string().hash(&mut hasher);
            tokens += n;
            let h = hasher.finish();
            if tokens >= CACHE_MIN_TOKENS && self.prefixes.contains(&h) {
                cached = tokens - tokens % CACHE_STEP_TOKENS;
            }
            seen.push(h);
        }
        // Bounded: a long-running demo must not grow without end.
        if self.prefixes.len() > 100_000 {
            self.prefixes.clear();
        }
        self.prefixes.extend(seen);
        cached
    }
}

/// Whether a model reasons before it answers.
pub fn is_reasoning_model(model: &str) -> bool {
    ["o1", "o3", "o4", "gpt-5"]
        .iter()
        .any(|p| model.starts_with(p))
}

/// Reasoning tokens of an answer with `visible` output tokens.
pub fn reasoning_tokens(model: &str, visible: u64) -> u64 {
    if is_reasoning_model(model) {
        visible * REASONING_PER_OUTPUT_TOKEN
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn repeated_long_prefixes_are_cached_in_steps() {
        let mut cache = PromptCache::default();
        let system = json!({"role": "system", "content": "long"});
        let q1 = json!({"role": "user", "content": "one"});
        let q2 = json!({"role": "user", "content": "two"});
        assert_eq!(cache.lookup_and_store("d", &[(&system, 1100), (&q1, 5)]), 0);
        // Same system message, other question: the 1100-token prefix is cached as 1024.
        assert_eq!(
            cache.lookup_and_store("d", &[(&system, 1100), (&q2, 5)]),
            1024
        );
        // The whole first prompt again: 1105 -> 1024 as well; another deployment: nothing.
        assert_eq!(
            cache.lookup_and_store("d", &[(&system, 1100), (&q1, 5)]),
            1024
        );
        assert_eq!(cache.lookup_and_store("e", &[(&system, 1100), (&q1, 5)]), 0);
        // Short prompts are never cached.
        assert_eq!(cache.lookup_and_store("d", &[(&q1, 5)]), 0);
        assert_eq!(cache.lookup_and_store("d", &[(&q1, 5)]), 0);
    }

    #[test]
    fn reasoning_models() {
        assert_eq!(reasoning_tokens("o3-mini", 3), 12);
        assert_eq!(reasoning_tokens("gpt-5", 1), 4);
        assert_eq!(reasoning_tokens("gpt-4o", 3), 0);
    }
}
