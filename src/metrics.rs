//! Metric names. Each metric is an Envoy stat under `wasmcustom.azure_llm.` whose name carries
//! its labels as `.<label>.<value>` pairs (values sanitised to `[A-Za-z0-9_-]`); the Envoy
//! configs declare `stats_tags` that turn those pairs into Prometheus labels
//! (`envoy_wasmcustom_azure_llm_tokens_total{workload="app-a",model="gpt-4o",...}`).
//!
//! Cardinality stays bounded: models, backends, credentials, outcomes and reasons come from the
//! config or fixed sets; workloads are capped per worker (`MAX_WORKLOAD_SERIES`), the rest are
//! counted as `other`.
//!
//! The latency and token histograms are named after the OpenTelemetry GenAI semantic
//! conventions (`gen_ai.client.token.usage`, `gen_ai.server.*`): their stat names are the
//! Prometheus names of those metrics (`wasmcustom.gen_ai_client_token_usage.<label pairs>`,
//! which Envoy serves as `gen_ai_client_token_usage_bucket{...}`), their labels the
//! convention's attributes with dots as underscores (`gen_ai_token_type`, ...) plus the
//! filter's `backend` and `workload`. Envoy histograms hold integers, so durations are in
//! milliseconds (`_milliseconds` names, the convention's bucket boundaries times 1000).
//! [`stats_tags`] and [`histogram_buckets`] are the `stats_config` every Envoy running the
//! filter needs; tests check that the shipped configs carry exactly these.

use crate::routing::Operation;
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

/// Cost of the answers in micro-units of the price table's currency (1e-6), by workload and
/// model.
pub fn cost(workload: &str, model: &str, currency: &str) -> String {
    format!(
        "azure_llm.cost_micros.workload.{}.model.{}.currency.{}",
        sanitize(workload),
        sanitize(model),
        sanitize(currency)
    )
}

/// The histograms, after the OpenTelemetry GenAI semantic conventions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Histogram {
    /// `gen_ai.client.token.usage`: tokens of one request by `gen_ai_token_type`.
    TokenUsage,
    /// `gen_ai.server.request.duration`: from the request's headers to the answer's end.
    RequestDuration,
    /// `gen_ai.server.time_to_first_token`: from the request's headers to the first chunk of a
    /// streamed answer that carries output (`crate::first_output`).
    TimeToFirstToken,
    /// `gen_ai.server.time_per_output_token`: the rest of a stream's duration per output token
    /// after the first.
    TimePerOutputToken,
}

impl Histogram {
    pub const ALL: [Histogram; 4] = [
        Histogram::TokenUsage,
        Histogram::RequestDuration,
        Histogram::TimeToFirstToken,
        Histogram::TimePerOutputToken,
    ];

    /// The stat (and Prometheus) name.
    pub fn metric(self) -> &'static str {
        match self {
            Histogram::TokenUsage => "gen_ai_client_token_usage",
            Histogram::RequestDuration => "gen_ai_server_request_duration_milliseconds",
            Histogram::TimeToFirstToken => "gen_ai_server_time_to_first_token_milliseconds",
            Histogram::TimePerOutputToken => "gen_ai_server_time_per_output_token_milliseconds",
        }
    }

    /// The convention's metric name.
    pub fn convention(self) -> &'static str {
        match self {
            Histogram::TokenUsage => "gen_ai.client.token.usage",
            Histogram::RequestDuration => "gen_ai.server.request.duration",
            Histogram::TimeToFirstToken => "gen_ai.server.time_to_first_token",
            Histogram::TimePerOutputToken => "gen_ai.server.time_per_output_token",
        }
    }

    /// Bucket boundaries: the convention's, durations in milliseconds.
    pub fn buckets(self) -> &'static [u64] {
        match self {
            Histogram::TokenUsage => &[
                1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216,
                67108864,
            ],
            Histogram::RequestDuration => &[
                10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120, 10240, 20480, 40960, 81920,
            ],
            Histogram::TimeToFirstToken => &[
                1, 5, 10, 20, 40, 60, 80, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000,
            ],
            Histogram::TimePerOutputToken => &[
                10, 25, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1000, 2500,
            ],
        }
    }
}

/// `gen_ai.token.type`: the convention's `input` and `output`, and the parts of them the APIs
/// report (a cached input token is also an input token, a reasoning token an output token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenType {
    Input,
    Output,
    CachedInput,
    ReasoningOutput,
}

impl TokenType {
    pub const ALL: [TokenType; 4] = [
        TokenType::Input,
        TokenType::Output,
        TokenType::CachedInput,
        TokenType::ReasoningOutput,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TokenType::Input => "input",
            TokenType::Output => "output",
            TokenType::CachedInput => "cached_input",
            TokenType::ReasoningOutput => "reasoning_output",
        }
    }
}

/// `gen_ai.operation.name` of an operation: the convention's well-known values where one
/// applies, else the operation's own name.
pub fn gen_ai_operation(op: Operation) -> &'static str {
    match op {
        Operation::ChatCompletions | Operation::Responses | Operation::Messages => "chat",
        Operation::Completions => "text_completion",
        Operation::Embeddings => "embeddings",
        Operation::ImageGenerations => "image_generation",
        Operation::AudioSpeech => "audio_speech",
        Operation::AudioTranscriptions => "audio_transcription",
        Operation::AudioTranslations => "audio_translation",
    }
}

/// `gen_ai.provider.name` values of the backend kinds (sanitised in stat names:
/// `azure_ai_openai`).
pub const PROVIDER_AZURE_OPENAI: &str = "azure.ai.openai";
pub const PROVIDER_AZURE_AI_INFERENCE: &str = "azure.ai.inference";
pub const PROVIDER_ANTHROPIC: &str = "anthropic";

/// The labels of one request's histograms.
#[derive(Debug, Clone, Copy)]
pub struct GenAiLabels<'a> {
    pub operation: &'static str,
    pub provider: &'static str,
    pub model: &'a str,
    pub backend: &'a str,
    /// Already capped ([`WorkloadCap`]).
    pub workload: &'a str,
}

/// The stat name of histogram `h` for `labels` (`token_type` for [`Histogram::TokenUsage`]).
pub fn histogram(h: Histogram, labels: &GenAiLabels<'_>, token_type: Option<TokenType>) -> String {
    let mut name = format!(
        "{}.gen_ai_operation_name.{}.gen_ai_provider_name.{}.gen_ai_request_model.{}.backend.{}.workload.{}",
        h.metric(),
        sanitize(labels.operation),
        sanitize(labels.provider),
        sanitize(labels.model),
        sanitize(labels.backend),
        sanitize(labels.workload),
    );
    if let Some(t) = token_type {
        name.push_str(".gen_ai_token_type.");
        name.push_str(t.name());
    }
    name
}

/// Which stat names a tag is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TagScope {
    /// `azure_llm.<metric>.<pairs>`
    AzureLlm,
    /// `gen_ai_<metric>.<pairs>`
    GenAi,
    Both,
}

const TAGS: [(&str, TagScope); 14] = [
    ("workload", TagScope::Both),
    ("model", TagScope::AzureLlm),
    ("backend", TagScope::Both),
    ("kind", TagScope::AzureLlm),
    ("credential", TagScope::AzureLlm),
    ("result", TagScope::AzureLlm),
    ("outcome", TagScope::AzureLlm),
    ("reason", TagScope::AzureLlm),
    ("decision", TagScope::AzureLlm),
    ("currency", TagScope::AzureLlm),
    ("gen_ai_operation_name", TagScope::GenAi),
    ("gen_ai_provider_name", TagScope::GenAi),
    ("gen_ai_request_model", TagScope::GenAi),
    ("gen_ai_token_type", TagScope::GenAi),
];

/// Envoy `stats_config.stats_tags` turning the label pairs into Prometheus labels:
/// `(tag_name, regex)`. The pairs are matched two segments at a time from the metric name on,
/// so a label value that equals a label name is never taken for one.
pub fn stats_tags() -> Vec<(&'static str, String)> {
    TAGS.iter()
        .map(|&(tag, scope)| {
            let prefix = match scope {
                TagScope::AzureLlm => r"azure_llm\.\w+",
                TagScope::GenAi => r"gen_ai_\w+",
                TagScope::Both => r"(?:azure_llm\.\w+|gen_ai_\w+)",
            };
            (
                tag,
                format!(r"^wasmcustom\.{prefix}(?:\.[\w-]+\.[\w-]+)*?(\.{tag}\.([\w-]+))"),
            )
        })
        .collect()
}

/// Envoy `stats_config.histogram_bucket_settings`: `(stat name prefix, buckets)`.
pub fn histogram_buckets() -> Vec<(String, &'static [u64])> {
    Histogram::ALL
        .iter()
        .map(|h| (format!("wasmcustom.{}", h.metric()), h.buckets()))
        .collect()
}

/// Time per output token after the first (`gen_ai.server.time_per_output_token`), in ms:
/// `None` without a second token to divide by.
pub fn time_per_output_token_ms(duration_ms: u64, ttft_ms: u64, output_tokens: u64) -> Option<u64> {
    let after_first = output_tokens.checked_sub(1).filter(|n| *n > 0)?;
    Some(duration_ms.saturating_sub(ttft_ms) / after_first)
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
    fn histogram_names_follow_the_conventions() {
        let labels = GenAiLabels {
            operation: gen_ai_operation(Operation::ChatCompletions),
            provider: PROVIDER_AZURE_OPENAI,
            model: "gpt-4.1",
            backend: "aoai",
            workload: "team-a",
        };
        assert_eq!(
            histogram(Histogram::TokenUsage, &labels, Some(TokenType::CachedInput)),
            "gen_ai_client_token_usage.gen_ai_operation_name.chat.gen_ai_provider_name.azure_ai_openai.gen_ai_request_model.gpt-4_1.backend.aoai.workload.team-a.gen_ai_token_type.cached_input"
        );
        assert_eq!(
            histogram(Histogram::TimeToFirstToken, &labels, None),
            "gen_ai_server_time_to_first_token_milliseconds.gen_ai_operation_name.chat.gen_ai_provider_name.azure_ai_openai.gen_ai_request_model.gpt-4_1.backend.aoai.workload.team-a"
        );
        for h in Histogram::ALL {
            assert!(h.buckets().windows(2).all(|w| w[0] < w[1]), "{h:?}");
            assert_eq!(h.metric().replace('_', "."), {
                // The Prometheus name is the convention's with dots as underscores (plus the
                // unit of the durations).
                let mut c = h.convention().replace('_', ".");
                if h != Histogram::TokenUsage {
                    c.push_str(".milliseconds");
                }
                c
            });
        }
    }

    /// The tag regexes, run the way Envoy runs them (a tag's value is the regex's second
    /// group), on every kind of name the filter makes.
    #[test]
    fn stats_tags_extract_every_label() {
        fn tags_of(name: &str) -> Vec<(&'static str, String)> {
            let full = format!("wasmcustom.{name}");
            stats_tags()
                .into_iter()
                .filter_map(|(tag, re)| {
                    let caps = regex::Regex::new(&re).unwrap().captures(&full)?;
                    Some((tag, caps.get(2)?.as_str().to_string()))
                })
                .collect()
        }
        let labels = GenAiLabels {
            operation: "chat",
            provider: PROVIDER_ANTHROPIC,
            model: "model",
            backend: "workload",
            workload: "backend",
        };
        let got = tags_of(&histogram(
            Histogram::TokenUsage,
            &labels,
            Some(TokenType::Input),
        ));
        assert_eq!(
            got,
            vec![
                ("workload", "backend".to_string()),
                ("backend", "workload".to_string()),
                ("gen_ai_operation_name", "chat".to_string()),
                ("gen_ai_provider_name", "anthropic".to_string()),
                ("gen_ai_request_model", "model".to_string()),
                ("gen_ai_token_type", "input".to_string()),
            ]
        );
        assert_eq!(
            tags_of(&cost("w", "gpt-4o", "EUR")),
            vec![
                ("workload", "w".to_string()),
                ("model", "gpt-4o".to_string()),
                ("currency", "EUR".to_string()),
            ]
        );
        assert_eq!(
            tags_of(&tokens("w", "m", "b", "prompt")).len(),
            4,
            "the existing token counters keep their labels"
        );
    }

    #[test]
    fn time_per_output_token_after_the_first() {
        assert_eq!(time_per_output_token_ms(1100, 100, 11), Some(100));
        assert_eq!(time_per_output_token_ms(1100, 100, 1), None);
        assert_eq!(time_per_output_token_ms(1100, 100, 0), None);
        assert_eq!(time_per_output_token_ms(50, 100, 3), Some(0), "clock skew");
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
