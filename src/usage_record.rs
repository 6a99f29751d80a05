//! The per-request usage record: what the filter leaves in Envoy's filter state for each
//! request (`%FILTER_STATE(wasm.<property>:PLAIN)%`), and the attributes under which Envoy's
//! OpenTelemetry access logger (`envoy.access_loggers.open_telemetry`, OTLP/gRPC) ships them
//! to a collector: one log record per request.
//!
//! [`ATTRIBUTES`] is the record's documented shape; envoy/envoy.yaml,
//! envoy/azure-production.yaml, the Istio provider (envoy/istio/telemetry.yaml) and the e2e
//! harness carry exactly these (tests check it). Attribute names follow the OpenTelemetry
//! GenAI conventions where one exists (`gen_ai.*`), the filter's own are `azure_llm.*`.
//! A property the request never set (a refused request has no usage) is no attribute at all
//! where the logger takes it as a custom tag ([`may_be_absent`]; Envoy's and Istio's plain
//! attributes show `-`, Envoy's placeholder for a missing value). Every value is a string:
//! Envoy 1.40's OpenTelemetry access logger sets `string_value` for every attribute it formats.

/// Filter-state property names (without Envoy's `wasm.` prefix).
pub const WORKLOAD: &str = "azure_llm_workload";
pub const MODEL: &str = "azure_llm_model";
pub const BACKEND: &str = "azure_llm_backend";
pub const DEPLOYMENT: &str = "azure_llm_deployment";
/// Failover pools (set by the pool phase): the backend that answered, and the attempts.
pub const TARGET: &str = "azure_llm_target";
pub const ATTEMPTS: &str = "azure_llm_attempts";
pub const OPERATION: &str = "azure_llm_operation";
pub const PROVIDER: &str = "azure_llm_provider";
pub const PROMPT_TOKENS: &str = "azure_llm_prompt_tokens";
pub const COMPLETION_TOKENS: &str = "azure_llm_completion_tokens";
pub const CACHED_PROMPT_TOKENS: &str = "azure_llm_cached_prompt_tokens";
pub const REASONING_TOKENS: &str = "azure_llm_reasoning_tokens";
pub const COST_MICROS: &str = "azure_llm_cost_micros";
pub const CURRENCY: &str = "azure_llm_currency";
pub const RATELIMIT: &str = "azure_llm_ratelimit";
/// How a limited request was charged (set by the charge phase: `usage`, `estimate`, `released`).
pub const CHARGE: &str = "azure_llm_charge";
pub const TTFT_MS: &str = "azure_llm_ttft_ms";
/// The model that answered, as the answer names it (Azure's model version, e.g.
/// `gpt-4o-2024-11-20`): `gen_ai.response.model`.
pub const RESPONSE_MODEL: &str = "azure_llm_response_model";
/// Guardrail findings (src/guard/verdict.rs): `prompt.pii.email.masked,...`, never the text.
pub const GUARDRAIL: &str = "azure_llm_guardrail";
/// Only with `capture.prompt` / `capture.answer` (src/capture.rs).
pub const PROMPT: &str = "azure_llm_prompt";
pub const ANSWER: &str = "azure_llm_answer";

/// The record's attributes: (OTLP attribute key, Envoy access-log format of its value).
pub const ATTRIBUTES: [(&str, &str); 25] = [
    (
        "gen_ai.operation.name",
        "%FILTER_STATE(wasm.azure_llm_operation:PLAIN)%",
    ),
    (
        "gen_ai.provider.name",
        "%FILTER_STATE(wasm.azure_llm_provider:PLAIN)%",
    ),
    (
        "gen_ai.request.model",
        "%FILTER_STATE(wasm.azure_llm_model:PLAIN)%",
    ),
    (
        "gen_ai.response.model",
        "%FILTER_STATE(wasm.azure_llm_response_model:PLAIN)%",
    ),
    (
        "gen_ai.usage.input_tokens",
        "%FILTER_STATE(wasm.azure_llm_prompt_tokens:PLAIN)%",
    ),
    (
        "gen_ai.usage.output_tokens",
        "%FILTER_STATE(wasm.azure_llm_completion_tokens:PLAIN)%",
    ),
    (
        "gen_ai.usage.cache_read.input_tokens",
        "%FILTER_STATE(wasm.azure_llm_cached_prompt_tokens:PLAIN)%",
    ),
    (
        "gen_ai.usage.reasoning.output_tokens",
        "%FILTER_STATE(wasm.azure_llm_reasoning_tokens:PLAIN)%",
    ),
    (
        "azure_llm.workload",
        "%FILTER_STATE(wasm.azure_llm_workload:PLAIN)%",
    ),
    (
        "azure_llm.backend",
        "%FILTER_STATE(wasm.azure_llm_backend:PLAIN)%",
    ),
    (
        "azure_llm.deployment",
        "%FILTER_STATE(wasm.azure_llm_deployment:PLAIN)%",
    ),
    (
        "azure_llm.target",
        "%FILTER_STATE(wasm.azure_llm_target:PLAIN)%",
    ),
    (
        "azure_llm.attempts",
        "%FILTER_STATE(wasm.azure_llm_attempts:PLAIN)%",
    ),
    (
        "azure_llm.cost_micros",
        "%FILTER_STATE(wasm.azure_llm_cost_micros:PLAIN)%",
    ),
    (
        "azure_llm.currency",
        "%FILTER_STATE(wasm.azure_llm_currency:PLAIN)%",
    ),
    (
        "azure_llm.ratelimit",
        "%FILTER_STATE(wasm.azure_llm_ratelimit:PLAIN)%",
    ),
    (
        "azure_llm.charge",
        "%FILTER_STATE(wasm.azure_llm_charge:PLAIN)%",
    ),
    (
        "azure_llm.time_to_first_token_ms",
        "%FILTER_STATE(wasm.azure_llm_ttft_ms:PLAIN)%",
    ),
    (
        "azure_llm.guardrail",
        "%FILTER_STATE(wasm.azure_llm_guardrail:PLAIN)%",
    ),
    (
        "azure_llm.prompt",
        "%FILTER_STATE(wasm.azure_llm_prompt:PLAIN)%",
    ),
    (
        "azure_llm.answer",
        "%FILTER_STATE(wasm.azure_llm_answer:PLAIN)%",
    ),
    ("http.request.method", "%REQ(:METHOD)%"),
    // The path as sent to Azure (deployment and api-version included): the filter rewrites
    // `:path`, so this is not the caller's.
    ("azure_llm.upstream_path", "%REQ(:PATH)%"),
    ("http.response.status_code", "%RESPONSE_CODE%"),
    ("azure_llm.duration_ms", "%DURATION%"),
];

/// Whether an attribute may be absent (a filter-state value the request may not have set).
/// Envoy's OpenTelemetry access logger writes every entry of its `attributes` (a missing one
/// as `-`), and each of its `custom_tags` only when the value exists: the shipped loggers
/// put these in `custom_tags`, so a record has no attribute for what the request lacks.
pub fn may_be_absent(format: &str) -> bool {
    format.starts_with("%FILTER_STATE(")
}

/// The attributes the GenAI span of a routed request carries (Envoy's tracing `custom_tags`,
/// a tag only when its value exists), keys and values as in [`ATTRIBUTES`].
pub const SPAN_TAGS: [&str; 11] = [
    "gen_ai.operation.name",
    "gen_ai.provider.name",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.reasoning.output_tokens",
    "azure_llm.workload",
    "azure_llm.backend",
    "azure_llm.deployment",
];

/// `(tag, format)` of each span tag.
pub fn span_tags() -> Vec<(&'static str, &'static str)> {
    SPAN_TAGS
        .iter()
        .filter_map(|t| ATTRIBUTES.iter().find(|(k, _)| k == t).copied())
        .collect()
}

/// The `log_name` of the record (a resource attribute of every exported batch).
pub const LOG_NAME: &str = "azure_llm_usage";

/// The body of each record: one readable line.
pub const BODY: &str = "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE%";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_name_the_properties() {
        let props = [
            WORKLOAD,
            MODEL,
            BACKEND,
            DEPLOYMENT,
            TARGET,
            ATTEMPTS,
            OPERATION,
            PROVIDER,
            PROMPT_TOKENS,
            COMPLETION_TOKENS,
            CACHED_PROMPT_TOKENS,
            REASONING_TOKENS,
            COST_MICROS,
            CURRENCY,
            RATELIMIT,
            CHARGE,
            TTFT_MS,
            RESPONSE_MODEL,
            PROMPT,
            ANSWER,
        ];
        for p in props {
            let format = format!("%FILTER_STATE(wasm.{p}:PLAIN)%");
            assert!(
                ATTRIBUTES.iter().any(|(_, f)| *f == format),
                "{p} is not in the record"
            );
        }
        let mut keys: Vec<&str> = ATTRIBUTES.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), ATTRIBUTES.len(), "attribute keys are unique");
        assert_eq!(
            span_tags().len(),
            SPAN_TAGS.len(),
            "span tags are attributes"
        );
        assert!(span_tags().iter().all(|(_, f)| may_be_absent(f)));
    }
}
