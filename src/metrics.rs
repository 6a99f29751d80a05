//! Metric names. Each metric is an Envoy stat under `wasmcustom.azure_llm.` whose name carries
//! its labels as `.<label>.<value>` pairs (values sanitised to `[A-Za-z0-9_-]`); the Envoy
//! configs declare `stats_tags` that turn those pairs into Prometheus labels
//! (`envoy_wasmcustom_azure_llm_tokens_total{workload="app-a",model="gpt-4o",...}`).
//!
//! Cardinality stays bounded: models, backends, credentials, outcomes and reasons come from the
//! config or fixed sets; workloads are capped per worker (`MAX_WORKLOAD_SERIES`), the rest are
//! counted as `other`.

use std::collections::HashSet;

pub const MAX_WORKLOAD_SERIES: usize = 200;
pub const OTHER: &str = "other";

/// Keeps a value usable inside a dotted stat name.
pub fn sanitize(value: &str) -> String {
    let s: String = value
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "none".into()
    } else {
        s
    }
}

/// Requests by outcome (`routed`, `discovery`, or the error code the filter answered with).
pub fn requests(outcome: &str) -> String {
    format!("azure_llm.requests.outcome.{}", sanitize(outcome))
}

/// LLM tokens by workload / model / backend / kind (`prompt`, `completion`).
pub fn tokens(workload: &str, model: &str, backend: &str, kind: &str) -> String {
    format!(
        "azure_llm.tokens.workload.{}.model.{}.backend.{}.kind.{}",
        sanitize(workload),
        sanitize(model),
        sanitize(backend),
        sanitize(kind)
    )
}

/// Entra token fetches by credential and result (`ok` or the failure code class).
pub fn token_fetches(credential: &str, result: &str) -> String {
    format!(
        "azure_llm.token_fetches.credential.{}.result.{}",
        sanitize(credential),
        sanitize(result)
    )
}

/// Gauge: seconds the credential's current token has left.
pub fn token_expires_in(credential: &str) -> String {
    format!(
        "azure_llm.token_expires_in_seconds.credential.{}",
        sanitize(credential)
    )
}

/// Caller authentication refusals by reason.
pub fn jwt_rejections(reason: &str) -> String {
    format!("azure_llm.auth_rejections.reason.{}", sanitize(reason))
}

/// Rate-limit decisions (`allowed`, `rate_limited`, `quota_exceeded`).
pub fn ratelimit(decision: &str) -> String {
    format!("azure_llm.ratelimit.decision.{}", sanitize(decision))
}

/// Attempts of failover pools by target backend and outcome (`answered`, `throttled`,
/// `failed`), counted by the upstream filter once per attempt.
pub fn target_attempts(backend: &str, outcome: &str) -> String {
    format!(
        "azure_llm.target_attempts.backend.{}.outcome.{}",
        sanitize(backend),
        sanitize(outcome)
    )
}

/// Caps the distinct workloads that get their own series on a worker.
#[derive(Debug, Default)]
pub struct WorkloadCap {
    seen: HashSet<String>,
}

impl WorkloadCap {
    /// The workload's series name: itself while under the cap (or already seen), else `other`.
    pub fn label<'a>(&mut self, workload: &'a str) -> &'a str {
        if self.seen.contains(workload) {
            return workload;
        }
        if self.seen.len() < MAX_WORKLOAD_SERIES {
            self.seen.insert(workload.to_string());
            return workload;
        }
        OTHER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_sanitised_labels() {
        assert_eq!(
            tokens("app.a/1", "gpt-4o", "aoai", "prompt"),
            "azure_llm.tokens.workload.app_a_1.model.gpt-4o.backend.aoai.kind.prompt"
        );
        assert_eq!(sanitize(""), "none");
        assert_eq!(sanitize(&"x".repeat(100)).len(), 64);
        assert_eq!(
            requests("rate_limit_exceeded"),
            "azure_llm.requests.outcome.rate_limit_exceeded"
        );
    }

    #[test]
    fn workload_series_are_capped() {
        let mut cap = WorkloadCap::default();
        let names: Vec<String> = (0..MAX_WORKLOAD_SERIES + 5)
            .map(|i| format!("w{i}"))
            .collect();
        let labels: Vec<&str> = names.iter().map(|n| cap.label(n)).collect();
        assert_eq!(labels[0], "w0");
        assert_eq!(
            labels[MAX_WORKLOAD_SERIES - 1],
            format!("w{}", MAX_WORKLOAD_SERIES - 1)
        );
        assert_eq!(labels[MAX_WORKLOAD_SERIES], OTHER);
        assert_eq!(cap.label("w0"), "w0", "seen workloads keep their series");
    }
}
