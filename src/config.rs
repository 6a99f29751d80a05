//! Plugin configuration: the JSON in the Wasm filter's `configuration`, parsed into typed
//! structs (unknown fields rejected) and validated before the filter serves a request.
//!
//! Every error names the field it is about (`credentials.main.client_secret: ...`) so the
//! line Envoy logs when it refuses the config tells the operator what to fix.

use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

pub const DEFAULT_ROUTING_HEADER: &str = "x-azure-llm-backend";
pub const DEFAULT_AUTHORITY_HOST: &str = "login.microsoftonline.com";
pub const DEFAULT_SCOPE: &str = "https://cognitiveservices.azure.com/.default";
const DEFAULT_TOKEN_WAIT_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_TOKEN_FETCH_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
const DEFAULT_BODY_WAIT_TIMEOUT_MS: u64 = 3_000;
const DEFAULT_FOUNDRY_API_VERSION: &str = "2024-05-01-preview";
const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";
const MAX_TIMEOUT_MS: u64 = 120_000;
const MAX_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// A configuration problem, with the dotted path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "invalid plugin configuration: {}", self.reason)
        } else {
            write!(
                f,
                "invalid plugin configuration: {}: {}",
                self.field, self.reason
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw (as written) configuration
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    routing_header: Option<String>,
    #[serde(default)]
    token_wait_timeout_ms: Option<u64>,
    #[serde(default)]
    max_body_bytes: Option<usize>,
    #[serde(default)]
    routing_mode: Option<RoutingMode>,
    #[serde(default)]
    model_header: Option<String>,
    #[serde(default)]
    body_wait_timeout_ms: Option<u64>,
    #[serde(default)]
    rate_limits: Option<crate::ratelimit::RawRateLimits>,
    credentials: BTreeMap<String, RawCredential>,
    backends: BTreeMap<String, RawBackend>,
    models: BTreeMap<String, RawModel>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum RawCredential {
    ClientSecret {
        tenant_id: String,
        client_id: String,
        #[serde(default)]
        client_secret: Option<String>,
        #[serde(default)]
        client_secret_env: Option<String>,
        token_cluster: String,
        #[serde(default)]
        authority_host: Option<String>,
        #[serde(default)]
        scope: Option<String>,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum RawBackend {
    AzureOpenai {
        host: String,
        api_version: String,
        credential: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
    AzureOpenaiV1 {
        host: String,
        credential: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
    FoundryModels {
        host: String,
        #[serde(default)]
        api_version: Option<String>,
        credential: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
    FoundryAnthropic {
        host: String,
        credential: String,
        #[serde(default)]
        anthropic_version: Option<String>,
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    backend: String,
    deployment: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    model_name: Option<String>,
    #[serde(default)]
    version: Option<String>,
}

/// How the filter finds the model of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutingMode {
    /// Read `model` from the JSON body (needs `allow_on_headers_stop_iteration: true`).
    Body,
    /// Use only the path (`/openai/deployments/{name}/...`, `/deployments/{name}/...`) or the
    /// model header; never pause for the body (works under Istio's WasmPlugin).
    Header,
}

// ---------------------------------------------------------------------------------------------
// Validated configuration
// ---------------------------------------------------------------------------------------------

/// Where a client secret comes from. The environment is read when the VM starts, so the
/// secret itself never has to be written into Envoy's configuration.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    Inline(String),
    Env(String),
}

impl fmt::Debug for SecretSource {
    // Never print the secret, even in debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Inline(_) => write!(f, "Inline(<redacted>)"),
            SecretSource::Env(name) => write!(f, "Env({name})"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialKind {
    ClientSecret {
        tenant_id: String,
        client_id: String,
        secret: SecretSource,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub name: String,
    pub kind: CredentialKind,
    pub token_cluster: String,
    pub authority_host: String,
    pub scope: String,
    pub timeout_ms: u64,
}

impl Credential {
    /// A stable fingerprint of everything that decides which token this credential gets.
    /// It keys the shared token cache, so a config update that changes a credential never
    /// serves the old credential's token, while unchanged credentials keep theirs.
    pub fn fingerprint(&self) -> u64 {
        let CredentialKind::ClientSecret {
            tenant_id,
            client_id,
            secret,
        } = &self.kind;
        let secret_id = match secret {
            SecretSource::Inline(s) => format!("inline:{}", fnv1a64(s.as_bytes())),
            SecretSource::Env(name) => format!("env:{name}"),
        };
        let text = format!(
            "client_secret|{tenant_id}|{client_id}|{secret_id}|{}|{}|{}",
            self.token_cluster, self.authority_host, self.scope
        );
        fnv1a64(text.as_bytes())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendKind {
    /// Azure OpenAI dated API: `/openai/deployments/{deployment}/...?api-version=`.
    AzureOpenai { api_version: String },
    /// Azure OpenAI v1 API: `/openai/v1/...`, deployment in the body's `model`.
    AzureOpenaiV1,
    /// Foundry model inference: `/models/...?api-version=`, deployment in the body's `model`.
    FoundryModels { api_version: String },
    /// Claude on Foundry: `/anthropic/v1/messages`, deployment in the body's `model`.
    FoundryAnthropic { anthropic_version: String },
}

impl BackendKind {
    /// The `model.format` Foundry's gateway connections read from `/deployments`.
    pub fn model_format(&self) -> &'static str {
        match self {
            BackendKind::FoundryAnthropic { .. } => "Anthropic",
            BackendKind::FoundryModels { .. } => "NonOpenAI",
            _ => "OpenAI",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    pub kind: BackendKind,
    pub host: String,
    /// Index into `Config::credentials`.
    pub credential: usize,
    /// Extra request headers for this backend (e.g. `extra-parameters: pass-through`).
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRoute {
    /// The model's configured name (an alias resolves to it).
    pub name: String,
    /// Index into `Config::backends`.
    pub backend: usize,
    pub deployment: String,
}

/// A model as discovery endpoints list it (aliases are not listed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub name: String,
    pub model_name: String,
    pub version: String,
    pub backend: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub routing_header: String,
    pub routing_mode: RoutingMode,
    /// A request header that names the model (optional; used before the body).
    pub model_header: Option<String>,
    pub token_wait_timeout_ms: u64,
    pub body_wait_timeout_ms: u64,
    pub max_body_bytes: usize,
    pub credentials: Vec<Credential>,
    pub backends: Vec<Backend>,
    /// Every name a caller may use (model names and aliases).
    pub models: HashMap<String, ModelRoute>,
    /// The configured models, sorted by name, for discovery.
    pub model_list: Vec<ModelInfo>,
    pub rate_limits: crate::ratelimit::RateLimits,
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
    let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body_bytes == 0 || max_body_bytes > MAX_BODY_LIMIT {
        return Err(ConfigError::new(
            "max_body_bytes",
            format!("must be between 1 and {MAX_BODY_LIMIT}"),
        ));
    }

    let mut credentials = Vec::with_capacity(raw.credentials.len());
    for (name, cred) in raw.credentials {
        credentials.push(validate_credential(name, cred)?);
    }

    let mut backends = Vec::with_capacity(raw.backends.len());
    for (name, backend) in raw.backends {
        backends.push(validate_backend(name, backend, &credentials)?);
    }
    if backends.is_empty() {
        return Err(ConfigError::new(
            "backends",
            "at least one backend is needed",
        ));
    }

    let mut models = HashMap::with_capacity(raw.models.len());
    let mut model_list = Vec::with_capacity(raw.models.len());
    for (name, model) in raw.models {
        let field = format!("models.{name}");
        check_model_name(&field, &name)?;
        let backend = backends
            .iter()
            .position(|b| b.name == model.backend)
            .ok_or_else(|| {
                ConfigError::new(
                    format!("{field}.backend"),
                    format!("no backend named {:?} in backends", model.backend),
                )
            })?;
        check_deployment(&format!("{field}.deployment"), &model.deployment)?;
        let route = ModelRoute {
            name: name.clone(),
            backend,
            deployment: model.deployment.clone(),
        };
        for (i, alias) in model.aliases.iter().enumerate() {
            check_model_name(&format!("{field}.aliases[{i}]"), alias)?;
        }
        for caller_name in std::iter::once(&name).chain(model.aliases.iter()) {
            if models.insert(caller_name.clone(), route.clone()).is_some() {
                return Err(ConfigError::new(
                    field.clone(),
                    format!("the name {caller_name:?} is used by more than one model or alias"),
                ));
            }
        }
        model_list.push(ModelInfo {
            model_name: model.model_name.unwrap_or_else(|| name.clone()),
            version: model.version.unwrap_or_default(),
            name,
            backend,
        });
    }
    if models.is_empty() {
        return Err(ConfigError::new("models", "at least one model is needed"));
    }
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
    let body_wait_timeout_ms = raw
        .body_wait_timeout_ms
        .unwrap_or(DEFAULT_BODY_WAIT_TIMEOUT_MS);
    check_range(
        "body_wait_timeout_ms",
        body_wait_timeout_ms,
        1,
        MAX_TIMEOUT_MS,
    )?;

    let rate_limits = match &raw.rate_limits {
        Some(r) => crate::ratelimit::RateLimits::from_raw(r, |m| models.contains_key(m))?,
        None => crate::ratelimit::RateLimits::default(),
    };
    Ok(Config {
        rate_limits,
        routing_header,
        routing_mode,
        model_header,
        token_wait_timeout_ms,
        body_wait_timeout_ms,
        max_body_bytes,
        credentials,
        backends,
        models,
        model_list,
    })
}

fn validate_backend(
    name: String,
    backend: RawBackend,
    credentials: &[Credential],
) -> Result<Backend, ConfigError> {
    let field = format!("backends.{name}");
    check_name(&field, &name)?;
    let (host, credential, headers, kind) = match backend {
        RawBackend::AzureOpenai {
            host,
            api_version,
            credential,
            headers,
        } => {
            check_api_version(&format!("{field}.api_version"), &api_version)?;
            (
                host,
                credential,
                headers,
                BackendKind::AzureOpenai { api_version },
            )
        }
        RawBackend::AzureOpenaiV1 {
            host,
            credential,
            headers,
        } => (host, credential, headers, BackendKind::AzureOpenaiV1),
        RawBackend::FoundryModels {
            host,
            api_version,
            credential,
            headers,
        } => {
            let api_version =
                api_version.unwrap_or_else(|| DEFAULT_FOUNDRY_API_VERSION.to_string());
            check_api_version(&format!("{field}.api_version"), &api_version)?;
            (
                host,
                credential,
                headers,
                BackendKind::FoundryModels { api_version },
            )
        }
        RawBackend::FoundryAnthropic {
            host,
            credential,
            anthropic_version,
            headers,
        } => {
            let anthropic_version =
                anthropic_version.unwrap_or_else(|| DEFAULT_ANTHROPIC_VERSION.to_string());
            check_api_version(&format!("{field}.anthropic_version"), &anthropic_version)?;
            (
                host,
                credential,
                headers,
                BackendKind::FoundryAnthropic { anthropic_version },
            )
        }
    };
    check_host(&format!("{field}.host"), &host)?;
    let credential = credentials
        .iter()
        .position(|c| c.name == credential)
        .ok_or_else(|| {
            ConfigError::new(
                format!("{field}.credential"),
                format!("no credential named {credential:?} in credentials"),
            )
        })?;
    let mut extra = Vec::with_capacity(headers.len());
    for (k, v) in headers {
        let hfield = format!("{field}.headers.{k}");
        if !is_header_name(&k) || RESERVED_HEADERS.contains(&k.as_str()) {
            return Err(ConfigError::new(
                hfield,
                "must be a lowercase header name other than authorization, api-key, host or the routing header",
            ));
        }
        if v.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(ConfigError::new(
                hfield,
                "header values may not contain control characters",
            ));
        }
        extra.push((k, v));
    }
    Ok(Backend {
        name,
        kind,
        host,
        credential,
        headers: extra,
    })
}

/// Headers a backend's `headers` may not set: the filter owns them.
const RESERVED_HEADERS: [&str; 6] = [
    "authorization",
    "api-key",
    "x-api-key",
    "host",
    "content-length",
    "transfer-encoding",
];

fn check_api_version(field: &str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty() || v.len() > 64 || !v.bytes().all(is_safe_path_byte) {
        return Err(ConfigError::new(
            field,
            "must be a non-empty version such as 2024-10-21",
        ));
    }
    Ok(())
}

/// Model names reach paths and error messages: letters, digits and a few separators only.
pub fn is_valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(is_safe_path_byte)
        && !name.starts_with('.')
}

fn check_model_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if !is_valid_model_name(name) {
        return Err(ConfigError::new(
            field,
            "model names may use letters, digits, '.', '_', '-' and ':' (1-128 characters, not starting with '.')",
        ));
    }
    Ok(())
}

/// The deployment goes into the upstream path: allow only what Azure allows in a deployment
/// name, so a config can never produce a path with '/', '..' or '?'.
fn check_deployment(field: &str, deployment: &str) -> Result<(), ConfigError> {
    if deployment.is_empty()
        || deployment.len() > 64
        || !deployment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        || deployment.starts_with('.')
    {
        return Err(ConfigError::new(
            field,
            "must be 1-64 characters of letters, digits, '-', '_', '.'",
        ));
    }
    Ok(())
}

fn validate_credential(name: String, cred: RawCredential) -> Result<Credential, ConfigError> {
    let field = format!("credentials.{name}");
    check_name(&field, &name)?;
    let RawCredential::ClientSecret {
        tenant_id,
        client_id,
        client_secret,
        client_secret_env,
        token_cluster,
        authority_host,
        scope,
        timeout_ms,
    } = cred;
    check_tenant(&format!("{field}.tenant_id"), &tenant_id)?;
    check_nonempty_token(&format!("{field}.client_id"), &client_id)?;
    let secret = match (client_secret, client_secret_env) {
        (Some(s), None) if !s.is_empty() => SecretSource::Inline(s),
        (None, Some(env)) if !env.is_empty() => SecretSource::Env(env),
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                format!("{field}.client_secret"),
                "give either client_secret or client_secret_env, not both",
            ))
        }
        _ => {
            return Err(ConfigError::new(
                format!("{field}.client_secret"),
                "a non-empty client_secret or client_secret_env is required",
            ))
        }
    };
    if token_cluster.is_empty() {
        return Err(ConfigError::new(
            format!("{field}.token_cluster"),
            "must name the Envoy cluster that reaches Entra ID",
        ));
    }
    let authority_host = authority_host.unwrap_or_else(|| DEFAULT_AUTHORITY_HOST.to_string());
    check_host(&format!("{field}.authority_host"), &authority_host)?;
    let scope = scope.unwrap_or_else(|| DEFAULT_SCOPE.to_string());
    if scope.is_empty() || scope.bytes().any(|b| b.is_ascii_whitespace() || b < 0x21) {
        return Err(ConfigError::new(
            format!("{field}.scope"),
            "must be a scope such as https://cognitiveservices.azure.com/.default",
        ));
    }
    let timeout_ms = timeout_ms.unwrap_or(DEFAULT_TOKEN_FETCH_TIMEOUT_MS);
    check_range(
        &format!("{field}.timeout_ms"),
        timeout_ms,
        1,
        MAX_TIMEOUT_MS,
    )?;
    Ok(Credential {
        name,
        kind: CredentialKind::ClientSecret {
            tenant_id,
            client_id,
            secret,
        },
        token_cluster,
        authority_host,
        scope,
        timeout_ms,
    })
}

/// Resolves secrets given by environment variable name. Run inside the VM at configure
/// time (the VM's environment comes from `vm_config.environment_variables`).
pub fn resolve_secrets(
    config: &Config,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<ResolvedSecret>, ConfigError> {
    config
        .credentials
        .iter()
        .map(|c| {
            let CredentialKind::ClientSecret { secret, .. } = &c.kind;
            match secret {
                SecretSource::Inline(s) => Ok(ResolvedSecret(s.clone())),
                SecretSource::Env(var) => match lookup(var) {
                    Some(v) if !v.is_empty() => Ok(ResolvedSecret(v)),
                    _ => Err(ConfigError::new(
                        format!("credentials.{}.client_secret_env", c.name),
                        format!(
                            "environment variable {var:?} is not set or empty in the Wasm VM \
                             (set it in vm_config.environment_variables)"
                        ),
                    )),
                },
            }
        })
        .collect()
}

/// A secret value ready for use. Its Debug output is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct ResolvedSecret(pub String);

impl fmt::Debug for ResolvedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted>")
    }
}

fn check_range(field: &str, v: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if v < min || v > max {
        return Err(ConfigError::new(
            field,
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(())
}

fn check_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(ConfigError::new(
            field,
            "names must be 1-64 characters of letters, digits, '-', '_', '.'",
        ));
    }
    Ok(())
}

fn check_tenant(field: &str, tenant: &str) -> Result<(), ConfigError> {
    if tenant.is_empty()
        || tenant.len() > 128
        || !tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(ConfigError::new(
            field,
            "must be a tenant id (GUID) or domain such as contoso.onmicrosoft.com",
        ));
    }
    Ok(())
}

fn check_nonempty_token(field: &str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty() || v.len() > 256 || v.bytes().any(|b| b.is_ascii_whitespace() || b < 0x21) {
        return Err(ConfigError::new(
            field,
            "must be non-empty without whitespace",
        ));
    }
    Ok(())
}

fn check_host(field: &str, host: &str) -> Result<(), ConfigError> {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with('.')
        && !name.starts_with('-');
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    if !name_ok || !port_ok {
        return Err(ConfigError::new(
            field,
            "must be a host name such as myresource.openai.azure.com (optionally :port)",
        ));
    }
    Ok(())
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_safe_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' || b == b':'
}

/// FNV-1a: tiny, dependency-free, stable across builds (unlike `DefaultHasher`).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> serde_json::Value {
        json!({
            "credentials": {"main": {"kind": "client_secret", "tenant_id": "t1", "client_id": "c1",
                                     "client_secret": "s", "token_cluster": "entra"}},
            "backends": {"aoai": {"kind": "azure_openai", "host": "r.openai.azure.com",
                                  "api_version": "2024-10-21", "credential": "main"}},
            "models": {"gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"}}
        })
    }

    fn parse(v: serde_json::Value) -> Result<Config, ConfigError> {
        Config::parse(v.to_string().as_bytes())
    }

    #[test]
    fn valid_config_gets_defaults() {
        let c = parse(base()).unwrap();
        assert_eq!(c.routing_header, DEFAULT_ROUTING_HEADER);
        assert_eq!(c.credentials[0].scope, DEFAULT_SCOPE);
        assert_eq!(c.credentials[0].authority_host, DEFAULT_AUTHORITY_HOST);
        assert_eq!(c.models["gpt-4o"].deployment, "gpt-4o-prod");
        assert_eq!(c.backends[0].credential, 0);
    }

    #[test]
    fn unknown_field_is_named() {
        let mut v = base();
        v["credentials"]["main"]["client_sekret"] = json!("x");
        let e = parse(v).unwrap_err();
        assert_eq!(e.field, "credentials.main");
        assert!(e.reason.contains("client_sekret"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let mut v = base();
        v["token_wait_timeout_ms"] = json!("soon");
        let e = parse(v).unwrap_err();
        assert_eq!(e.field, "token_wait_timeout_ms");
    }

    #[test]
    fn dangling_references_are_named() {
        let mut v = base();
        v["models"]["gpt-4o"]["backend"] = json!("nope");
        assert_eq!(parse(v).unwrap_err().field, "models.gpt-4o.backend");
        let mut v = base();
        v["backends"]["aoai"]["credential"] = json!("nope");
        assert_eq!(parse(v).unwrap_err().field, "backends.aoai.credential");
    }

    #[test]
    fn unsafe_deployment_and_model_names_are_refused() {
        for bad in ["../x", "a/b", "a?b", "", ".hidden", "a b", "a%2f"] {
            let mut v = base();
            v["models"]["gpt-4o"]["deployment"] = json!(bad);
            assert_eq!(
                parse(v).unwrap_err().field,
                "models.gpt-4o.deployment",
                "{bad}"
            );
        }
        let mut v = base();
        v["models"] = json!({"a/b": {"backend": "aoai", "deployment": "d"}});
        assert_eq!(parse(v).unwrap_err().field, "models.a/b");
    }

    #[test]
    fn secret_sources() {
        let mut v = base();
        v["credentials"]["main"]["client_secret_env"] = json!("X");
        assert!(parse(v).unwrap_err().reason.contains("not both"));
        let mut v = base();
        v["credentials"]["main"]
            .as_object_mut()
            .unwrap()
            .remove("client_secret");
        assert_eq!(
            parse(v).unwrap_err().field,
            "credentials.main.client_secret"
        );
        let mut v = base();
        v["credentials"]["main"]
            .as_object_mut()
            .unwrap()
            .remove("client_secret");
        v["credentials"]["main"]["client_secret_env"] = json!("MY_SECRET");
        let c = parse(v).unwrap();
        let ok = resolve_secrets(&c, |k| (k == "MY_SECRET").then(|| "v".to_string())).unwrap();
        assert_eq!(ok[0].0, "v");
        let e = resolve_secrets(&c, |_| None).unwrap_err();
        assert_eq!(e.field, "credentials.main.client_secret_env");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let c = parse(base()).unwrap();
        let text = format!("{c:?}");
        assert!(!text.contains("\"s\""), "{text}");
        assert!(text.contains("redacted"));
    }

    #[test]
    fn bad_hosts_and_ranges() {
        let mut v = base();
        v["backends"]["aoai"]["host"] = json!("evil.com/path");
        assert_eq!(parse(v).unwrap_err().field, "backends.aoai.host");
        let mut v = base();
        v["max_body_bytes"] = json!(0);
        assert_eq!(parse(v).unwrap_err().field, "max_body_bytes");
        let mut v = base();
        v["routing_header"] = json!("X-Upper");
        assert_eq!(parse(v).unwrap_err().field, "routing_header");
        let mut v = base();
        v["backends"]["aoai"]["kind"] = json!("bogus");
        assert_eq!(parse(v).unwrap_err().field, "backends.aoai.kind");
    }

    #[test]
    fn not_json_and_missing_sections() {
        assert!(Config::parse(b"{not json").is_err());
        assert!(Config::parse(b"").is_err());
        let e = Config::parse(b"{}").unwrap_err();
        assert!(e.reason.contains("credentials"), "{e}");
    }

    #[test]
    fn fingerprint_changes_with_credential() {
        let a = parse(base()).unwrap();
        let mut v = base();
        v["credentials"]["main"]["client_id"] = json!("c2");
        let b = parse(v).unwrap();
        assert_ne!(
            a.credentials[0].fingerprint(),
            b.credentials[0].fingerprint()
        );
        assert_eq!(
            a.credentials[0].fingerprint(),
            parse(base()).unwrap().credentials[0].fingerprint()
        );
    }
}
