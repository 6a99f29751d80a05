//! Plugin configuration: the JSON in the Wasm filter's `configuration`, parsed into typed
//! structs (unknown fields rejected) and validated before the filter serves a request.
//!
//! Every error names the field it is about (`credentials.main.client_secret: ...`) so the
//! line Envoy logs when it refuses the config tells the operator what to fix.
//!
//! Each domain owns its section: credentials `entra::credential`, backends and models
//! `routing::config`, caller authentication `auth::config`, limits `ratelimit` (and its global
//! part `rls`). This module assembles them: the top-level fields, the order of validation
//! (credentials, then backends naming them, then models naming backends, then limits naming
//! models) and the JSON Schema. `error` (ConfigError, field checks) sits below every domain.

pub mod error;
#[cfg(test)]
pub(crate) mod tests;

use crate::entra::credential::{
    self, validate_credentials, Credential, CredentialKind, RawCredential, ResolvedSecret,
};
use crate::routing::config::{
    validate_backend, validate_models, Backend, ModelInfo, ModelRoute, RawBackend, RawModel,
    RoutingMode,
};
use error::{check_range, is_header_name, MAX_TIMEOUT_MS};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

pub use error::ConfigError;

pub const DEFAULT_ROUTING_HEADER: &str = "x-azure-llm-backend";
const DEFAULT_TOKEN_WAIT_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
const DEFAULT_BODY_WAIT_TIMEOUT_MS: u64 = 3_000;
const MAX_BODY_LIMIT: usize = 64 * 1024 * 1024;

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "schema",
    schemars(
        title = "azure-llm-filter plugin configuration",
        description = "The JSON in the Wasm filter's `configuration` (google.protobuf.StringValue). \
                       Reference: README.md \"Configuration\", docs/plugin-config.md, docs/auth-config.md."
    )
)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Header the filter sets to the backend name for Envoy's route table \
                           (default x-azure-llm-backend); a caller's value is always removed.",
            pattern(r"^[a-z0-9-]{1,128}$")
        )
    )]
    #[serde(default)]
    routing_header: Option<String>,
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "How long a request may wait for a token fetch before a 503 (default 5000).",
            range(min = 1, max = 120_000)
        )
    )]
    #[serde(default)]
    token_wait_timeout_ms: Option<u64>,
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Larger request bodies get 413 (default 1048576).",
            range(min = 1, max = 67_108_864)
        )
    )]
    #[serde(default)]
    max_body_bytes: Option<usize>,
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "body (default): read `model` from the JSON body (needs \
                           allow_on_headers_stop_iteration: true); header: model only from the \
                           path or model_header, never waits for the body (Istio WasmPlugin)."
        )
    )]
    #[serde(default)]
    routing_mode: Option<RoutingMode>,
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "A request header naming the model (e.g. x-model), used before the body.",
            pattern(r"^[a-z0-9-]{1,128}$")
        )
    )]
    #[serde(default)]
    model_header: Option<String>,
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Headers of Azure's answers that callers must not see (e.g. \
                           x-ms-region, apim-request-id). The routing header is always removed; \
                           x-ratelimit-* are replaced by the workload's own when local limits apply.",
            extend("items" = {"pattern": r"^[a-z0-9-]{1,128}$"})
        )
    )]
    #[serde(default)]
    response_headers_to_remove: Vec<String>,
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Caller request headers removed before the request leaves for Azure                            (credentials or session state meant for something else). Default:                            [\"cookie\", \"proxy-authorization\", \"ocp-apim-subscription-key\"];                            a list replaces it ([] keeps them all). The caller's authorization,                            api-key, x-api-key, the routing header and every x-envoy-* header                            are always removed.",
            extend("items" = {"pattern": r"^[a-z0-9-]{1,128}$"})
        )
    )]
    #[serde(default)]
    request_headers_to_remove: Option<Vec<String>>,
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "How long the filter waits for a request body, or its next part \
                           (default 3000): then 500 filter_misconfigured while this worker never \
                           got a body (allow_on_headers_stop_iteration missing), 408 \
                           request_body_timeout once bodies are known to flow.",
            range(min = 1, max = 120_000)
        )
    )]
    #[serde(default)]
    body_wait_timeout_ms: Option<u64>,
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Leave each request's workload, model, backend, deployment, token \
                           counts and rate-limit decision in Envoy filter state for access logs \
                           (wasm.azure_llm_*; default true). Off saves a few microseconds per \
                           request where no access log reads them."
        )
    )]
    #[serde(default)]
    access_log_properties: Option<bool>,
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Record the OpenTelemetry GenAI histograms (token usage, duration, \
                           time to first token, time per output token; default true). The \
                           counters are kept either way."
        )
    )]
    #[serde(default)]
    gen_ai_histograms: Option<bool>,
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Give the GenAI histograms a workload label (default false: by \
                           operation, provider, model and backend; the per-workload token and \
                           cost counters are kept either way). Each workload then has ~110 \
                           more series per model."
        )
    )]
    #[serde(default)]
    gen_ai_histograms_per_workload: Option<bool>,
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "How many workloads get their own metric series, decided once for \
                           the whole Envoy in shared data (default 200, 1-10000); the rest \
                           are counted together in series without a workload label.",
            range(min = 1, max = 10000)
        )
    )]
    #[serde(default)]
    max_workload_series: Option<u64>,
    #[cfg_attr(
        feature = "schema",
        schemars(description = "Per-workload and per-model token and request limits.")
    )]
    #[serde(default)]
    rate_limits: Option<crate::ratelimit::RawRateLimits>,
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Caller authentication (docs/auth-config.md); without it every caller \
                           is the workload `anonymous`."
        )
    )]
    #[serde(default)]
    auth: Option<crate::auth::RawAuthConfig>,
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Prices per million tokens by model, for the cost counter and the \
                           usage record (README \"Cost\")."
        )
    )]
    #[serde(default)]
    pricing: Option<crate::pricing::RawPricing>,
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Prompt and answer capture for the usage record: off by default, \
                           size-capped, with role-based redaction (README \"Usage record\")."
        )
    )]
    #[serde(default)]
    capture: Option<crate::capture::RawCapture>,
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Guardrails: Azure AI Content Safety checks and local PII / deny rules \
                           on prompts and answers, per workload (README \"Guardrails\")."
        )
    )]
    #[serde(default)]
    guardrails: Option<crate::guard::RawGuardrails>,
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Named Microsoft Entra ID credentials; each backend names one.",
            extend("propertyNames" = {"pattern": r"^[A-Za-z0-9._-]{1,64}$"})
        )
    )]
    credentials: BTreeMap<String, RawCredential>,
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Named Azure resources (at least one). The Envoy route table maps the \
                           routing header (the backend name) to the backend's cluster.",
            extend("propertyNames" = {"pattern": r"^[A-Za-z0-9._-]{1,64}$"}, "minProperties" = 1)
        )
    )]
    backends: BTreeMap<String, RawBackend>,
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "The model names callers use (at least one).",
            extend(
                "propertyNames" = {"pattern": r"^[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,127}$"},
                "minProperties" = 1
            )
        )
    )]
    models: BTreeMap<String, RawModel>,
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "downstream (default): the listener's filter. upstream: the same \
                           configuration as an upstream HTTP filter of a failover pool's \
                           aggregate cluster, rewriting each attempt for its target."
        )
    )]
    #[serde(default)]
    role: Option<crate::failover::Role>,
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "How long failover pools leave out a throttled (429) or failing (5xx) \
                           target."
        )
    )]
    #[serde(default)]
    failover: Option<crate::failover::RawFailover>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Listener filter or a pool's per-attempt upstream filter.
    pub role: crate::failover::Role,
    pub failover: crate::failover::FailoverPolicy,
    pub routing_header: String,
    pub routing_mode: RoutingMode,
    /// A request header that names the model (optional; used before the body).
    pub model_header: Option<String>,
    /// Response headers from Azure that never reach the caller (the routing header included).
    pub response_headers_to_remove: Vec<String>,
    /// Caller request headers that never reach Azure, besides the caller's credentials and the
    /// routing header (always removed).
    pub request_headers_to_remove: Vec<String>,
    pub token_wait_timeout_ms: u64,
    pub body_wait_timeout_ms: u64,
    /// Per-request data left in filter state for access logs (`wasm.azure_llm_*`).
    pub access_log_properties: bool,
    /// The GenAI histograms are recorded (`gen_ai_histograms`, default true).
    pub gen_ai_histograms: bool,
    /// The GenAI histograms carry the workload (`gen_ai_histograms_per_workload`, default
    /// false).
    pub gen_ai_histograms_per_workload: bool,
    /// Workloads with their own series across the Envoy (`max_workload_series`).
    pub max_workload_series: usize,
    pub max_body_bytes: usize,
    pub credentials: Vec<Credential>,
    pub backends: Vec<Backend>,
    /// Every name a caller may use (model names and aliases).
    pub models: HashMap<String, ModelRoute>,
    /// The configured models, sorted by name, for discovery.
    pub model_list: Vec<ModelInfo>,
    pub rate_limits: crate::ratelimit::RateLimits,
    /// Caller authentication; `None`: every caller is the workload `anonymous`.
    pub auth: Option<crate::auth::AuthConfig>,
    /// Prices by model; `None`: no cost is counted.
    pub pricing: Option<crate::pricing::Pricing>,
    /// Prompt and answer capture for the usage record (off by default).
    pub capture: crate::capture::Capture,
    /// Guardrails; `None`: none configured (nothing is checked, nothing is paid for them).
    pub guardrails: Option<crate::guard::Guardrails>,
}

impl Config {
    /// Parses and validates the plugin configuration.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." { String::new() } else { field };
            ConfigError::new(field, e.into_inner().to_string())
        })?;
        validate(raw)
    }

    pub fn credential_index(&self, name: &str) -> Option<usize> {
        self.credentials.iter().position(|c| c.name == name)
    }
}

/// The JSON Schema (draft 7) of the plugin configuration, generated from the `Raw*` types.
/// Native tooling only (feature `schema`): `check-config --print-schema` prints it and
/// schema/plugin-config.schema.json holds it (`make schema`).
#[cfg(feature = "schema")]
pub fn json_schema() -> serde_json::Value {
    schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<RawConfig>()
        .to_value()
}

/// Resolves what each credential needs at fetch time (`entra::credential::resolve_secrets`):
/// one entry per credential, in the order of `config.credentials`.
pub fn resolve_secrets(
    config: &Config,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<ResolvedSecret>, ConfigError> {
    credential::resolve_secrets(&config.credentials, lookup)
}

/// Validates the sections in the order their cross-references need (each error names its
/// field, and the first one found is reported).
fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let routing_header = raw
        .routing_header
        .unwrap_or_else(|| DEFAULT_ROUTING_HEADER.to_string());
    if !is_header_name(&routing_header) {
        return Err(ConfigError::new(
            "routing_header",
            "must be a lowercase HTTP header name (letters, digits, '-')",
        ));
    }
    let token_wait_timeout_ms = raw
        .token_wait_timeout_ms
        .unwrap_or(DEFAULT_TOKEN_WAIT_TIMEOUT_MS);
    check_range(
        "token_wait_timeout_ms",
        token_wait_timeout_ms,
        1,
        MAX_TIMEOUT_MS,
    )?;
    let max_workload_series = raw
        .max_workload_series
        .unwrap_or(crate::metrics::DEFAULT_WORKLOAD_SERIES as u64);
    check_range("max_workload_series", max_workload_series, 1, 10_000)?;
    let max_workload_series = usize::try_from(max_workload_series).unwrap_or(usize::MAX);
    let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body_bytes == 0 || max_body_bytes > MAX_BODY_LIMIT {
        return Err(ConfigError::new(
            "max_body_bytes",
            format!("must be between 1 and {MAX_BODY_LIMIT}"),
        ));
    }

    let credentials = validate_credentials(raw.credentials)?;
    let backends = validate_backends(raw.backends, &credentials)?;
    token_routes_are_not_backends(&credentials, &backends)?;
    let (models, model_list) = validate_models(raw.models, &backends)?;

    let routing_mode = raw.routing_mode.unwrap_or(RoutingMode::Body);
    let model_header = raw.model_header;
    if let Some(h) = &model_header {
        if !is_header_name(h) {
            return Err(ConfigError::new(
                "model_header",
                "must be a lowercase HTTP header name (letters, digits, '-')",
            ));
        }
    }
    let response_headers_to_remove =
        response_headers_to_remove(&routing_header, &raw.response_headers_to_remove)?;
    let request_headers_to_remove = request_headers_to_remove(raw.request_headers_to_remove)?;
    let body_wait_timeout_ms = raw
        .body_wait_timeout_ms
        .unwrap_or(DEFAULT_BODY_WAIT_TIMEOUT_MS);
    check_range(
        "body_wait_timeout_ms",
        body_wait_timeout_ms,
        1,
        MAX_TIMEOUT_MS,
    )?;

    let auth = match raw.auth {
        Some(a) => Some(crate::auth::AuthConfig::from_raw(a, "auth")?),
        None => None,
    };
    let rate_limits = match &raw.rate_limits {
        // Limits belong to models, not aliases: requests are limited under their model's
        // configured name.
        Some(r) => crate::ratelimit::RateLimits::from_raw(r, |m| {
            models.get(m).is_some_and(|route| route.name == m)
        })?,
        None => crate::ratelimit::RateLimits::default(),
    };
    let failover = crate::failover::FailoverPolicy::from_raw(raw.failover.as_ref())?;
    // Prices belong to models, not aliases (an alias is billed as its model).
    let pricing = match &raw.pricing {
        Some(p) => Some(crate::pricing::Pricing::from_raw(p, "pricing", |m| {
            models.get(m).is_some_and(|r| r.name == m)
        })?),
        None => None,
    };
    // A cost budget needs the price of every model it applies to (aliases cost what their
    // model does).
    let canonical = |m: &str| models.get(m).map(|r| r.name.clone());
    rate_limits.check_priced(
        models
            .iter()
            .filter(|(k, r)| r.name == **k)
            .map(|(k, _)| k.as_str()),
        |m| {
            canonical(m)
                .zip(pricing.as_ref())
                .is_some_and(|(name, p)| p.price(&name).is_some())
        },
    )?;
    let capture = match &raw.capture {
        Some(c) => crate::capture::Capture::from_raw(c, "capture")?,
        None => crate::capture::Capture::default(),
    };
    let guardrails = validate_guardrails(raw.guardrails.as_ref(), &credentials, routing_mode)?;
    Ok(Config {
        guardrails,
        role: raw.role.unwrap_or_default(),
        failover,
        pricing,
        capture,
        rate_limits,
        auth,
        routing_header,
        routing_mode,
        model_header,
        response_headers_to_remove,
        request_headers_to_remove,
        token_wait_timeout_ms,
        body_wait_timeout_ms,
        access_log_properties: raw.access_log_properties.unwrap_or(true),
        gen_ai_histograms: raw.gen_ai_histograms.unwrap_or(true),
        gen_ai_histograms_per_workload: raw.gen_ai_histograms_per_workload.unwrap_or(false),
        max_workload_series,
        max_body_bytes,
        credentials,
        backends,
        models,
        model_list,
    })
}

/// The `guardrails` section and what it needs of the others: a Content Safety credential with
/// the Cognitive Services scope, and the body routing mode for prompt checks.
fn validate_guardrails(
    raw: Option<&crate::guard::RawGuardrails>,
    credentials: &[Credential],
    routing_mode: RoutingMode,
) -> Result<Option<crate::guard::Guardrails>, ConfigError> {
    let guardrails = match raw {
        Some(g) => Some(crate::guard::Guardrails::from_raw(
            g,
            "guardrails",
            |name| credentials.iter().position(|c| c.name == name),
        )?),
        None => None,
    };
    if let Some(crate::guard::config::ServiceAuth::Credential(i)) = guardrails
        .as_ref()
        .and_then(|g| g.content_safety.as_ref())
        .map(|cs| &cs.auth)
    {
        // Content Safety takes tokens of the Cognitive Services audience (its cloud's).
        let wrong = credentials
            .get(*i)
            .filter(|c| !c.scope.starts_with("https://cognitiveservices.azure."));
        if let Some(c) = wrong {
            return Err(ConfigError::new(
                "guardrails.content_safety.credential",
                format!(
                    "credential {:?} asks for scope {:?}; Content Safety accepts tokens for https://cognitiveservices.azure.com/.default (or its sovereign cloud's): use a credential with that scope",
                    c.name, c.scope
                ),
            ));
        }
    }
    if routing_mode == RoutingMode::Header
        && guardrails
            .as_ref()
            .is_some_and(crate::guard::Guardrails::any_prompt_checks)
    {
        return Err(ConfigError::new(
            "guardrails",
            "prompt checks read the request body: they need routing_mode \"body\" (and allow_on_headers_stop_iteration: true)",
        ));
    }
    Ok(guardrails)
}

/// Every backend, each naming one of the (validated) credentials; at least one.
fn validate_backends(
    raw: BTreeMap<String, RawBackend>,
    credentials: &[Credential],
) -> Result<Vec<Backend>, ConfigError> {
    let mut backends = Vec::with_capacity(raw.len());
    for (name, backend) in raw {
        backends.push(validate_backend(name, backend, |credential| {
            credentials.iter().position(|c| c.name == credential)
        })?);
    }
    if backends.is_empty() {
        return Err(ConfigError::new(
            "backends",
            "at least one backend is needed",
        ));
    }
    Ok(backends)
}

/// Caller headers that carry credentials or session state for something else (a browser
/// session, a forward proxy, an APIM subscription): they have no business at Azure.
pub const DEFAULT_REQUEST_HEADERS_TO_REMOVE: [&str; 3] =
    ["cookie", "proxy-authorization", "ocp-apim-subscription-key"];

/// What starts the name of every request header Envoy's connection manager and router act on:
/// retries (`x-envoy-retry-on`, `-retriable-status-codes`, `-max-retries`), timeouts
/// (`-upstream-rq-timeout-ms`, `-upstream-rq-per-try-timeout-ms`), hedging, stat names,
/// tracing, internal origin (`x-envoy-internal`). Envoy obeys them for requests it counts as
/// internal (`internal_address_config`), so a caller's never pass the filter, whatever the
/// listener trusts: a retried answer is served (and billed) twice (README "Callers' x-envoy-*
/// headers").
pub const ENVOY_HEADER_PREFIX: &str = "x-envoy-";

/// Whether a request header is one of Envoy's (`x-envoy-...`, any case).
pub fn is_envoy_header(name: &str) -> bool {
    name.len() > ENVOY_HEADER_PREFIX.len()
        && name
            .get(..ENVOY_HEADER_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(ENVOY_HEADER_PREFIX))
}

/// Headers the request needs on its way to Azure: removing them would break it.
const REQUEST_HEADERS_KEPT: [&str; 4] = [
    "content-length",
    "content-type",
    "transfer-encoding",
    "host",
];

/// The configured list (or the default), checked, once each.
fn request_headers_to_remove(configured: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let Some(configured) = configured else {
        return Ok(DEFAULT_REQUEST_HEADERS_TO_REMOVE.map(String::from).to_vec());
    };
    let mut remove: Vec<String> = Vec::new();
    for (i, h) in configured.into_iter().enumerate() {
        let field = || format!("request_headers_to_remove[{i}]");
        if !is_header_name(&h) {
            return Err(ConfigError::new(
                field(),
                "must be a lowercase HTTP header name (letters, digits, '-')",
            ));
        }
        if REQUEST_HEADERS_KEPT.contains(&h.as_str()) {
            return Err(ConfigError::new(
                field(),
                format!("`{h}` is needed by the request to Azure and cannot be removed"),
            ));
        }
        if !remove.contains(&h) {
            remove.push(h);
        }
    }
    Ok(remove)
}

/// Backends are routed to the Envoy cluster of their name: none may be named like the cluster
/// of a workload identity's token route, or callers could be routed to the token file.
fn token_routes_are_not_backends(
    credentials: &[Credential],
    backends: &[Backend],
) -> Result<(), ConfigError> {
    for c in credentials {
        if let CredentialKind::WorkloadIdentity(wi) = &c.kind {
            if backends.iter().any(|b| b.name == wi.assertion_cluster) {
                return Err(ConfigError::new(
                    format!("backends.{}", wi.assertion_cluster),
                    format!(
                        "a backend may not be named like the token route cluster of credential \
                         {:?} (its route would lead callers to the token file)",
                        c.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The routing header comes first (never shown to callers), then the configured ones, once each.
fn response_headers_to_remove(
    routing_header: &str,
    configured: &[String],
) -> Result<Vec<String>, ConfigError> {
    let mut remove = vec![routing_header.to_string()];
    for (i, h) in configured.iter().enumerate() {
        if !is_header_name(h) {
            return Err(ConfigError::new(
                format!("response_headers_to_remove[{i}]"),
                "must be a lowercase HTTP header name (letters, digits, '-')",
            ));
        }
        if !remove.contains(h) {
            remove.push(h.clone());
        }
    }
    Ok(remove)
}
