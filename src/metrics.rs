//! Metric names. Each metric is an Envoy stat under `wasmcustom.` whose name carries its
//! labels as `.<label>.<value> ` pairs, each value ended by a space; the Envoy configs
//! declare `stats_tags` that turn those pairs into Prometheus labels
//! (`azure_llm_tokens{workload="app.a",model="gpt-4.1",...}`).
//!
//! **Label values are the names as configured or given**, dots and all: model, backend and
//! credential names (`[A-Za-z0-9._-]`), workloads (1-256 printable ASCII characters without
//! spaces, `auth::config::is_valid_workload`), fixed sets (outcomes, reasons, providers such
//! as `azure.ai.openai`). None of them can hold a space, so the space that ends each value
//! makes the name unambiguous: no two label sets make the same stat name, and a value that
//! looks like a label name (`.model.` in a workload) is never taken for one. Nothing else
//! can reach a name ([`value`] replaces a space or a control character, should one ever
//! come, with `_`).
//!
//! Cardinality stays bounded: models, backends, credentials, outcomes and reasons come from
//! the config or fixed sets; at most `max_workload_series` workloads (default
//! [`DEFAULT_WORKLOAD_SERIES`]) get their own series, decided once for the whole Envoy
//! ([`admit_workload`], in shared data); the others are counted together in series whose
//! workload label is empty (Prometheus: no `workload` label), a name no workload can have.
//!
//! The latency and token histograms are named after the OpenTelemetry GenAI semantic
//! conventions (`gen_ai.client.token.usage`, `gen_ai.server.*`): their stat names are the
//! Prometheus names of those metrics (`wasmcustom.gen_ai_client_token_usage.<label pairs>`,
//! which Envoy serves as `gen_ai_client_token_usage_bucket{...}`), their labels the
//! convention's attributes with dots as underscores (`gen_ai_token_type`, ...) plus the
//! filter's `backend` (and `workload` with `gen_ai_histograms_per_workload`). Envoy
//! histograms hold integers, so durations are in milliseconds (`_milliseconds` names, the
//! convention's bucket boundaries times 1000); [`recording_rules`] are the Prometheus rules
//! that serve them under the convention's `_seconds` names. [`stats_tags`] and
//! [`histogram_buckets`] are the `stats_config` every Envoy running the filter needs; tests
//! check that the shipped configs carry exactly these.

use crate::routing::Operation;
use std::borrow::Cow;

/// Workloads with their own series by default.
pub const DEFAULT_WORKLOAD_SERIES: usize = 200;
/// The workload label of the workloads past the cap: empty, which no workload name can be.
pub const OTHER: &str = "";

/// Ends every label value in a stat name.
const END: char = ' ';

/// A label value as it goes into a stat name: itself, unless it holds what cannot be in one
/// (a space or a control character, which no configured or validated name has).
pub fn value(v: &str) -> Cow<'_, str> {
    if v.chars().all(|c| c != END && !c.is_control()) {
        return Cow::Borrowed(v);
    }
    Cow::Owned(
        v.chars()
            .map(|c| if c == END || c.is_control() { '_' } else { c })
            .collect(),
    )
}

/// Keeps a value printable in a message: `[A-Za-z0-9_-]`, 64 characters (not for stat names,
/// whose values are kept as they are: [`value`]).
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

/// `base` followed by its label pairs.
fn name(base: &str, pairs: &[(&str, &str)]) -> String {
    let mut n = String::with_capacity(base.len() + pairs.len() * 24);
    n.push_str(base);
    for (label, v) in pairs {
        push_pair(&mut n, label, v);
    }
    n
}

fn push_pair(n: &mut String, label: &str, v: &str) {
    n.push('.');
    n.push_str(label);
    n.push('.');
    n.push_str(&value(v));
    n.push(END);
}

/// Requests by outcome (`routed`, `discovery`, or the error code the filter answered with).
pub fn requests(outcome: &str) -> String {
    name("azure_llm.requests", &[("outcome", outcome)])
}

/// LLM tokens by workload / model / backend / kind (`prompt`, `completion`).
pub fn tokens(workload: &str, model: &str, backend: &str, kind: &str) -> String {
    name(
        "azure_llm.tokens",
        &[
            ("workload", workload),
            ("model", model),
            ("backend", backend),
            ("kind", kind),
        ],
    )
}

/// Entra token fetches by credential and result (`ok` or the failure code class).
pub fn token_fetches(credential: &str, result: &str) -> String {
    name(
        "azure_llm.token_fetches",
        &[("credential", credential), ("result", result)],
    )
}

/// Gauge: seconds the credential's current token has left.
pub fn token_expires_in(credential: &str) -> String {
    name(
        "azure_llm.token_expires_in_seconds",
        &[("credential", credential)],
    )
}

/// Caller authentication refusals by reason.
pub fn jwt_rejections(reason: &str) -> String {
    name("azure_llm.auth_rejections", &[("reason", reason)])
}

/// Rate-limit decisions (`allowed`, `rate_limited`, `quota_exceeded`).
pub fn ratelimit(decision: &str) -> String {
    name("azure_llm.ratelimit", &[("decision", decision)])
}

/// Attempts of failover pools by target backend and outcome (`answered`, `throttled`,
/// `failed`, `unreachable`: no answer, a refused or timed-out connection or a reset), once
/// per attempt: the upstream filter counts what it sees fail, the listener filter the answer
/// the caller gets.
pub fn target_attempts(backend: &str, outcome: &str) -> String {
    name(
        "azure_llm.target_attempts",
        &[("backend", backend), ("outcome", outcome)],
    )
}

/// Cost of the answers in micro-units of the price table's currency (1e-6), by workload and
/// model.
pub fn cost(workload: &str, model: &str, currency: &str) -> String {
    name(
        "azure_llm.cost_micros",
        &[
            ("workload", workload),
            ("model", model),
            ("currency", currency),
        ],
    )
}

/// Guardrail decisions (src/guard): by direction (`prompt`, `answer`), check (`pii`, `deny`,
/// `prompt_shields`, `text_analysis`, `blocklist`, `protected_material`, `content_safety`),
/// category (the harm category, attack, blocklist, detector or rule name: all from the config
/// or fixed sets) and action (`blocked`, `masked`, `logged`, `failed_open`, `failed_closed`).
pub fn guardrail(direction: &str, check: &str, category: &str, action: &str) -> String {
    name(
        "azure_llm.guardrail",
        &[
            ("direction", direction),
            ("check", check),
            ("category", category),
            ("action", action),
        ],
    )
}

/// Histogram: how long Content Safety calls took (ms), by API (`shield_prompt`,
/// `analyze_text`, `protected_material`) and result (`ok`, `error`, `timeout`).
pub fn guardrail_callout(api: &str, result: &str) -> String {
    name(
        "azure_llm.guardrail_callout_milliseconds",
        &[("api", api), ("result", result)],
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

    /// The convention's Prometheus name (`_seconds` for the durations, which
    /// [`recording_rules`] serve).
    pub fn seconds_metric(self) -> &'static str {
        match self {
            Histogram::TokenUsage => "gen_ai_client_token_usage",
            Histogram::RequestDuration => "gen_ai_server_request_duration_seconds",
            Histogram::TimeToFirstToken => "gen_ai_server_time_to_first_token_seconds",
            Histogram::TimePerOutputToken => "gen_ai_server_time_per_output_token_seconds",
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

/// `gen_ai.provider.name` values of the backend kinds, as the convention spells them (dots
/// included, in stat names too).
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
    /// Already capped; `None` without `gen_ai_histograms_per_workload`.
    pub workload: Option<&'a str>,
}

/// The stat name of histogram `h` for `labels` (`token_type` for [`Histogram::TokenUsage`]).
pub fn histogram(h: Histogram, labels: &GenAiLabels<'_>, token_type: Option<TokenType>) -> String {
    let mut n = name(
        h.metric(),
        &[
            ("gen_ai_operation_name", labels.operation),
            ("gen_ai_provider_name", labels.provider),
            ("gen_ai_request_model", labels.model),
            ("backend", labels.backend),
        ],
    );
    if let Some(w) = labels.workload {
        push_pair(&mut n, "workload", w);
    }
    if let Some(t) = token_type {
        push_pair(&mut n, "gen_ai_token_type", t.name());
    }
    n
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

const TAGS: [(&str, TagScope); 19] = [
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
    ("direction", TagScope::AzureLlm),
    ("check", TagScope::AzureLlm),
    ("category", TagScope::AzureLlm),
    ("action", TagScope::AzureLlm),
    ("api", TagScope::AzureLlm),
    ("gen_ai_operation_name", TagScope::GenAi),
    ("gen_ai_provider_name", TagScope::GenAi),
    ("gen_ai_request_model", TagScope::GenAi),
    ("gen_ai_token_type", TagScope::GenAi),
];

/// Envoy `stats_config.stats_tags` turning the label pairs into Prometheus labels:
/// `(tag_name, regex)`. The pairs are matched whole (`.label.value `) from the metric name
/// on, so a value holding dots or a label's name is never taken for a label.
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
                format!(r"^wasmcustom\.{prefix}(?:\.\w+\.[^ ]* )*?(\.{tag}\.([^ ]*) )"),
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

/// What kind of Envoy stat a family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric family: a base name and its label names, in the order the name builders above
/// write them. The native build (src/native/metrics.rs) defines each as a labelled Envoy stat
/// when the filter configuration loads, because Envoy's dynamic-module ABI refuses new stats
/// after that (the Wasm build defines every stat name on first use and needs no list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    pub kind: Kind,
    pub base: &'static str,
    pub labels: Vec<&'static str>,
}

/// Every family the builders above can make (a unit test checks each builder's names against
/// it). The GenAI histograms come with and without `workload`
/// (`gen_ai_histograms_per_workload`); only the token histogram has `gen_ai_token_type`.
pub fn families() -> Vec<Family> {
    let f = |kind, base, labels: &[&'static str]| Family {
        kind,
        base,
        labels: labels.to_vec(),
    };
    let mut out = vec![
        f(Kind::Counter, "azure_llm.requests", &["outcome"]),
        f(
            Kind::Counter,
            "azure_llm.tokens",
            &["workload", "model", "backend", "kind"],
        ),
        f(
            Kind::Counter,
            "azure_llm.token_fetches",
            &["credential", "result"],
        ),
        f(
            Kind::Gauge,
            "azure_llm.token_expires_in_seconds",
            &["credential"],
        ),
        f(Kind::Counter, "azure_llm.auth_rejections", &["reason"]),
        f(Kind::Counter, "azure_llm.ratelimit", &["decision"]),
        f(
            Kind::Counter,
            "azure_llm.target_attempts",
            &["backend", "outcome"],
        ),
        f(
            Kind::Counter,
            "azure_llm.cost_micros",
            &["workload", "model", "currency"],
        ),
        f(
            Kind::Counter,
            "azure_llm.guardrail",
            &["direction", "check", "category", "action"],
        ),
        f(
            Kind::Histogram,
            "azure_llm.guardrail_callout_milliseconds",
            &["api", "result"],
        ),
    ];
    for h in Histogram::ALL {
        for per_workload in [false, true] {
            let mut labels = vec![
                "gen_ai_operation_name",
                "gen_ai_provider_name",
                "gen_ai_request_model",
                "backend",
            ];
            if per_workload {
                labels.push("workload");
            }
            if h == Histogram::TokenUsage {
                labels.push("gen_ai_token_type");
            }
            out.push(Family {
                kind: Kind::Histogram,
                base: h.metric(),
                labels,
            });
        }
    }
    out
}

/// A stat name the builders made, taken apart: its base and its `(label, value)` pairs. `None`
/// for a name of another shape. Values end at their space (none holds one: [`value`]).
pub fn split(name: &str) -> Option<(&str, Vec<(&str, &str)>)> {
    let first = name.find(END)?;
    // The base is the head of the first pair's segment before `.<label>.`; labels are words
    // (no dots), values may hold dots, so the base is found among the known families.
    let head = &name[..first];
    let base = families()
        .into_iter()
        .map(|f| f.base)
        .filter(|b| head.len() > b.len() && head.starts_with(b) && head[b.len()..].starts_with('.'))
        .max_by_key(|b| b.len())?;
    let mut rest = &name[base.len()..];
    let mut pairs = Vec::new();
    while !rest.is_empty() {
        let pair = rest.strip_prefix('.')?;
        let dot = pair.find('.')?;
        let label = &pair[..dot];
        let after = &pair[dot + 1..];
        let end = after.find(END)?;
        if label.is_empty()
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return None;
        }
        pairs.push((label, &after[..end]));
        rest = &after[end + 1..];
    }
    Some((base, pairs))
}

/// The shared-data key of the workload-series registry: the workloads that have their own
/// series, one per line, in the order they were named. One for the whole Envoy, so a
/// workload is named on every worker or on none.
pub const WORKLOAD_SERIES_KEY: &str = "azure_llm.workload_series";

/// What the registry says of a workload.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Named already (by this worker or another).
    Named,
    /// The registry is full: the workload is counted without its name, on every worker.
    Full,
    /// Room left: the registry with the workload added, to be written (compare-and-swap).
    Add(Vec<u8>),
}

/// The names in a registry value.
pub fn registered(list: &[u8]) -> impl Iterator<Item = &str> {
    list.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| std::str::from_utf8(l).ok())
}

/// Whether `workload` has its own series given the registry `list` and the cap.
pub fn admit_workload(list: &[u8], workload: &str, cap: usize) -> Admission {
    let mut n = 0;
    for name in registered(list) {
        if name == workload {
            return Admission::Named;
        }
        n += 1;
    }
    if n >= cap || workload.is_empty() || workload.contains('\n') {
        return Admission::Full;
    }
    let mut next = list.to_vec();
    next.extend_from_slice(workload.as_bytes());
    next.push(b'\n');
    Admission::Add(next)
}

/// Prometheus recording rules that serve the duration histograms under the convention's names
/// and unit (`gen_ai_server_request_duration_seconds`, ...): each bucket's `le` divided by
/// 1000 (one rule per boundary, as PromQL cannot compute a label), `_sum` divided by 1000,
/// `_count` as it is. The token histogram needs none. Shipped as
/// `envoy/prometheus/gen-ai-seconds.rules.yaml`.
pub fn recording_rules() -> String {
    let mut out = String::from(
        "# Generated from src/metrics.rs (recording_rules); tests/observability_configs.rs checks it.\n\
         # The filter's GenAI duration histograms in milliseconds (Envoy histograms hold integers),\n\
         # served under the OpenTelemetry GenAI conventions' Prometheus names, in seconds.\n\
         groups:\n  - name: azure-llm-filter-gen-ai-seconds\n    rules:\n",
    );
    for h in Histogram::ALL {
        if h == Histogram::TokenUsage {
            continue;
        }
        let ms = h.metric();
        let s = h.seconds_metric();
        for b in h.buckets() {
            out.push_str(&format!(
                "      - record: {s}_bucket\n        expr: label_replace({ms}_bucket{{le=\"{b}\"}}, \"le\", \"{}\", \"\", \"\")\n",
                seconds(*b)
            ));
        }
        out.push_str(&format!(
            "      - record: {s}_bucket\n        expr: {ms}_bucket{{le=\"+Inf\"}}\n\
             \x20     - record: {s}_sum\n        expr: {ms}_sum / 1000\n\
             \x20     - record: {s}_count\n        expr: {ms}_count\n"
        ));
    }
    out
}

/// Milliseconds as seconds, in the shortest decimal form (`10` -> `0.01`, `2500` -> `2.5`).
fn seconds(ms: u64) -> String {
    let whole = ms / 1000;
    let frac = ms % 1000;
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:03}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every builder's name is one of [`families`], and taking it apart gives back the values:
    /// the native build defines exactly these at load and increments them by these values.
    #[test]
    fn every_name_is_a_known_family_and_splits_back() {
        let fams = families();
        let check = |name: String, kind: Kind, values: &[&str]| {
            let (base, pairs) = split(&name).unwrap_or_else(|| panic!("{name:?} does not split"));
            let labels: Vec<&str> = pairs.iter().map(|p| p.0).collect();
            let got: Vec<&str> = pairs.iter().map(|p| p.1).collect();
            assert!(
                fams.iter()
                    .any(|f| f.kind == kind && f.base == base && f.labels == labels),
                "{name:?}: no family {base} {labels:?}"
            );
            assert_eq!(got, values, "{name:?}");
        };
        check(requests("routed"), Kind::Counter, &["routed"]);
        check(
            tokens("app.a/1", "gpt-4.1", "aoai", "prompt"),
            Kind::Counter,
            &["app.a/1", "gpt-4.1", "aoai", "prompt"],
        );
        check(
            tokens(OTHER, "m", "b", "completion"),
            Kind::Counter,
            &["", "m", "b", "completion"],
        );
        check(token_fetches("mi", "ok"), Kind::Counter, &["mi", "ok"]);
        check(token_expires_in("mi"), Kind::Gauge, &["mi"]);
        check(jwt_rejections("expired"), Kind::Counter, &["expired"]);
        check(ratelimit("allowed"), Kind::Counter, &["allowed"]);
        check(
            target_attempts("ptu", "throttled"),
            Kind::Counter,
            &["ptu", "throttled"],
        );
        check(
            cost("w.model.x", "gpt-4.1", "USD"),
            Kind::Counter,
            &["w.model.x", "gpt-4.1", "USD"],
        );
        check(
            guardrail("prompt", "pii", "email", "masked"),
            Kind::Counter,
            &["prompt", "pii", "email", "masked"],
        );
        check(
            guardrail_callout("analyze_text", "ok"),
            Kind::Histogram,
            &["analyze_text", "ok"],
        );
        for workload in [None, Some("team.a")] {
            let labels = GenAiLabels {
                operation: "chat",
                provider: PROVIDER_AZURE_OPENAI,
                model: "gpt-4.1",
                backend: "aoai",
                workload,
            };
            for h in Histogram::ALL {
                let t = (h == Histogram::TokenUsage).then_some(TokenType::Input);
                let mut values = vec!["chat", "azure.ai.openai", "gpt-4.1", "aoai"];
                values.extend(workload);
                values.extend(t.map(TokenType::name));
                check(histogram(h, &labels, t), Kind::Histogram, &values);
            }
        }
        assert_eq!(split("azure_llm.unknown.x.y "), None);
        assert_eq!(split("azure_llm.requests"), None);
        assert_eq!(
            split("azure_llm.requests.outcome.routed"),
            None,
            "a value ends at its space"
        );
    }

    #[test]
    fn names_carry_the_values_as_they_are() {
        assert_eq!(
            tokens("app.a/1", "gpt-4.1", "aoai", "prompt"),
            "azure_llm.tokens.workload.app.a/1 .model.gpt-4.1 .backend.aoai .kind.prompt "
        );
        assert_eq!(
            requests("rate_limit_exceeded"),
            "azure_llm.requests.outcome.rate_limit_exceeded "
        );
        assert_eq!(value("a b\nc"), "a_b_c", "nothing can end a value early");
        assert_eq!(sanitize(""), "none");
        assert_eq!(sanitize(&"x".repeat(100)).len(), 64);
    }

    #[test]
    fn histogram_names_follow_the_conventions() {
        let labels = GenAiLabels {
            operation: gen_ai_operation(Operation::ChatCompletions),
            provider: PROVIDER_AZURE_OPENAI,
            model: "gpt-4.1",
            backend: "aoai",
            workload: Some("team-a"),
        };
        assert_eq!(
            histogram(Histogram::TokenUsage, &labels, Some(TokenType::CachedInput)),
            "gen_ai_client_token_usage.gen_ai_operation_name.chat .gen_ai_provider_name.azure.ai.openai .gen_ai_request_model.gpt-4.1 .backend.aoai .workload.team-a .gen_ai_token_type.cached_input "
        );
        let no_workload = GenAiLabels {
            workload: None,
            ..labels
        };
        assert_eq!(
            histogram(Histogram::TimeToFirstToken, &no_workload, None),
            "gen_ai_server_time_to_first_token_milliseconds.gen_ai_operation_name.chat .gen_ai_provider_name.azure.ai.openai .gen_ai_request_model.gpt-4.1 .backend.aoai "
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
            assert_eq!(
                h.seconds_metric(),
                h.metric().replace("_milliseconds", "_seconds")
            );
        }
    }

    /// The tag values of `name` (as `wasmcustom.<name>`), run the way Envoy runs the tag
    /// regexes (a tag's value is the regex's second group, its first is taken out of the
    /// name), and what is left of the name.
    fn tags_of(name: &str) -> (Vec<(&'static str, String)>, String) {
        let full = format!("wasmcustom.{name}");
        let mut rest = full.clone();
        let tags = stats_tags()
            .into_iter()
            .filter_map(|(tag, re)| {
                let caps = regex::Regex::new(&re).unwrap().captures(&full)?;
                rest = rest.replacen(caps.get(1)?.as_str(), "", 1);
                Some((tag, caps.get(2)?.as_str().to_string()))
            })
            .collect();
        (tags, rest)
    }

    #[test]
    fn stats_tags_extract_every_label() {
        let labels = GenAiLabels {
            operation: "chat",
            provider: PROVIDER_AZURE_OPENAI,
            model: "model",
            backend: "workload",
            workload: Some("backend"),
        };
        let (got, rest) = tags_of(&histogram(
            Histogram::TokenUsage,
            &labels,
            Some(TokenType::Input),
        ));
        assert_eq!(rest, "wasmcustom.gen_ai_client_token_usage");
        assert_eq!(
            got,
            vec![
                ("workload", "backend".to_string()),
                ("backend", "workload".to_string()),
                ("gen_ai_operation_name", "chat".to_string()),
                ("gen_ai_provider_name", "azure.ai.openai".to_string()),
                ("gen_ai_request_model", "model".to_string()),
                ("gen_ai_token_type", "input".to_string()),
            ]
        );
        assert_eq!(
            tags_of(&cost("w", "gpt-4o", "EUR")).0,
            vec![
                ("workload", "w".to_string()),
                ("model", "gpt-4o".to_string()),
                ("currency", "EUR".to_string()),
            ]
        );
        assert_eq!(tags_of(&tokens("w", "m", "b", "prompt")).0.len(), 4);
    }

    /// Issue 25: `a.b` and `a_b` were both `a_b`; values that hold dots, label names or look
    /// like pairs are kept whole and never collide.
    #[test]
    fn label_values_are_kept_and_never_collide() {
        let workloads = [
            "a.b",
            "a_b",
            "a.model.b",
            "x.model.y.backend.z",
            "spiffe://cluster.local/ns/a/sa/b",
            "=;%\"\\",
        ];
        let mut names = std::collections::HashSet::new();
        for w in workloads {
            for m in ["gpt-4.1", "gpt-4_1"] {
                let n = tokens(w, m, "aoai", "prompt");
                assert!(names.insert(n.clone()), "{n} twice");
                let (tags, rest) = tags_of(&n);
                assert_eq!(rest, "wasmcustom.azure_llm.tokens", "{n}");
                assert_eq!(
                    tags,
                    vec![
                        ("workload", w.to_string()),
                        ("model", m.to_string()),
                        ("backend", "aoai".to_string()),
                        ("kind", "prompt".to_string()),
                    ],
                    "{n}"
                );
            }
        }
        // The workloads past the cap: an empty value, which no workload can be.
        let (tags, _) = tags_of(&cost(OTHER, "m", "USD"));
        assert_eq!(tags[0], ("workload", String::new()));
    }

    #[test]
    fn time_per_output_token_after_the_first() {
        assert_eq!(time_per_output_token_ms(1100, 100, 11), Some(100));
        assert_eq!(time_per_output_token_ms(1100, 100, 1), None);
        assert_eq!(time_per_output_token_ms(1100, 100, 0), None);
        assert_eq!(time_per_output_token_ms(50, 100, 3), Some(0), "clock skew");
    }

    #[test]
    fn the_registry_names_workloads_up_to_the_cap() {
        let mut list = Vec::new();
        for w in ["w0", "w1", "w2"] {
            match admit_workload(&list, w, 3) {
                Admission::Add(next) => list = next,
                other => panic!("{w}: {other:?}"),
            }
        }
        assert_eq!(list, b"w0\nw1\nw2\n");
        assert_eq!(admit_workload(&list, "w1", 3), Admission::Named);
        assert_eq!(admit_workload(&list, "w3", 3), Admission::Full);
        assert_eq!(
            admit_workload(&list, "w3", 4),
            Admission::Add(b"w0\nw1\nw2\nw3\n".to_vec()),
            "a larger cap after a reload"
        );
        assert_eq!(
            admit_workload(&list, "w0", 1),
            Admission::Named,
            "a smaller one keeps the named"
        );
        assert_eq!(admit_workload(b"", "", 3), Admission::Full);
        assert_eq!(registered(b"a\n\nb\n").collect::<Vec<_>>(), vec!["a", "b"]);
    }

    #[test]
    fn recording_rules_serve_seconds() {
        let rules = recording_rules();
        assert!(rules.contains(
            "      - record: gen_ai_server_request_duration_seconds_bucket\n        expr: label_replace(gen_ai_server_request_duration_milliseconds_bucket{le=\"10\"}, \"le\", \"0.01\", \"\", \"\")\n"
        ), "{rules}");
        assert!(rules.contains("expr: gen_ai_server_time_to_first_token_milliseconds_sum / 1000\n"));
        assert!(!rules.contains("token_usage"));
        assert_eq!(seconds(2500), "2.5");
        assert_eq!(seconds(81920), "81.92");
        assert_eq!(seconds(1), "0.001");
        assert_eq!(seconds(5000), "5");
        // One bucket rule per boundary, plus +Inf, _sum and _count, per duration histogram.
        let n: usize = Histogram::ALL
            .iter()
            .filter(|h| **h != Histogram::TokenUsage)
            .map(|h| h.buckets().len() + 3)
            .sum();
        assert_eq!(rules.matches("- record:").count(), n);
    }
}
