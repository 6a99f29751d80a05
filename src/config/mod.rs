//! Plugin configuration: the JSON in the Wasm filter's `configuration`, parsed into typed
//! structs (unknown fields rejected) and validated before the filter serves a request.
//!
//! Every error names the field it is about (`credentials.main.client_secret: ...`) so the
//! line Envoy logs when it refuses the config tells the operator what to fix.

use crate::entra::assertion::{
    certificate_for_key, parse_certificates_pem, parse_private_key_pem, parse_thumbprint,
    sha1_thumbprint, sha256_thumbprint, AssertionKey,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
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
            description = "How long a request may wait for its body before the filter concludes \
                           that allow_on_headers_stop_iteration is missing (default 3000).",
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
}

/// A credential as written. Field names and meanings: docs/plugin-config.md, "Credentials".
#[derive(Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum RawCredential {
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Client credentials with a client secret (inline, or from an \
                           environment variable of the Wasm VM)."
        )
    )]
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
        #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 120_000)))]
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Client credentials with a certificate: the filter signs the client \
                           assertion (PS256 or RS256)."
        )
    )]
    ClientCertificate {
        tenant_id: String,
        client_id: String,
        #[serde(default)]
        private_key_pem: Option<String>,
        #[serde(default)]
        private_key_env: Option<String>,
        #[serde(default)]
        certificate_thumbprint_sha256: Option<String>,
        #[serde(default)]
        certificate_thumbprint_sha1: Option<String>,
        #[serde(default)]
        certificate_pem: Option<String>,
        #[cfg_attr(feature = "schema", schemars(with = "Option<SigningAlgorithm>"))]
        #[serde(default)]
        algorithm: Option<String>,
        token_cluster: String,
        #[serde(default)]
        authority_host: Option<String>,
        #[serde(default)]
        scope: Option<String>,
        #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 120_000)))]
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "A managed identity token from IMDS (default) or the App Service / \
                           Container Apps identity endpoint."
        )
    )]
    ManagedIdentity {
        #[cfg_attr(feature = "schema", schemars(with = "Option<ManagedIdentityEndpoint>"))]
        #[serde(default)]
        endpoint: Option<String>,
        #[serde(default)]
        client_id: Option<String>,
        #[serde(default)]
        object_id: Option<String>,
        #[serde(default)]
        principal_id: Option<String>,
        #[serde(default)]
        msi_res_id: Option<String>,
        #[serde(default)]
        mi_res_id: Option<String>,
        token_cluster: String,
        #[serde(default)]
        authority: Option<String>,
        #[serde(default)]
        path: Option<String>,
        #[serde(default)]
        identity_header_env: Option<String>,
        #[serde(default)]
        scope: Option<String>,
        #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 120_000)))]
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Client credentials with an assertion obtained first: from an HTTP \
                           endpoint, or a managed identity token (the secretless cross-tenant \
                           chain)."
        )
    )]
    Federated {
        tenant_id: String,
        client_id: String,
        /// Parsed by `validate_credential` so its errors name `...assertion.<field>` (serde
        /// cannot track paths inside the internally tagged credential).
        #[cfg_attr(
            feature = "schema",
            schemars(
                with = "RawAssertion",
                description = "Where the client assertion comes from."
            )
        )]
        assertion: serde_json::Value,
        token_cluster: String,
        #[serde(default)]
        authority_host: Option<String>,
        #[serde(default)]
        scope: Option<String>,
        #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 120_000)))]
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
}

impl fmt::Debug for RawCredential {
    // Raw credentials may hold a secret or a private key inline: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawCredential(<redacted>)")
    }
}

/// Where a federated credential's assertion comes from, as written.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
enum RawAssertion {
    Http {
        cluster: String,
        authority: String,
        path: String,
        #[serde(default)]
        header_env: Option<String>,
        #[serde(default)]
        response: Option<String>,
    },
    ManagedIdentity {
        credential: String,
        #[serde(default)]
        audience: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum RawBackend {
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Azure OpenAI, dated API: /openai/deployments/{deployment}/{op}?api-version="
        )
    )]
    AzureOpenai {
        host: String,
        api_version: String,
        credential: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Azure OpenAI v1 API: /openai/v1/{op}, deployment in the body's model."
        )
    )]
    AzureOpenaiV1 {
        host: String,
        credential: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Foundry model inference: /models/{op}?api-version=, deployment in the \
                           body's model."
        )
    )]
    FoundryModels {
        host: String,
        #[serde(default)]
        api_version: Option<String>,
        credential: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Claude on Foundry: /anthropic/v1/messages, deployment in the body's model."
        )
    )]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawModel {
    backend: String,
    #[cfg_attr(
        feature = "schema",
        schemars(pattern(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"))
    )]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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

/// Where a secret (a client secret, a private key PEM) comes from. The environment is read
/// when the VM starts, so the secret itself never has to be written into Envoy's configuration.
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

impl SecretSource {
    /// Identifies the source in a fingerprint: the variable's name, or a hash of the value.
    fn fingerprint_part(&self) -> String {
        match self {
            SecretSource::Inline(s) => format!("inline:{}", sha256_hex(s.as_bytes())),
            SecretSource::Env(name) => format!("env:{name}"),
        }
    }
}

/// Signature algorithm of a certificate credential's client assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum SigningAlgorithm {
    /// RSASSA-PSS with SHA-256 (what Entra asks for today).
    #[serde(rename = "PS256")]
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (still accepted).
    #[serde(rename = "RS256")]
    Rs256,
}

impl SigningAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::Ps256 => "PS256",
            SigningAlgorithm::Rs256 => "RS256",
        }
    }
}

/// Which managed identity endpoint a credential asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ManagedIdentityEndpoint {
    /// Azure Instance Metadata Service (VMs, VM scale sets, AKS nodes): 169.254.169.254.
    Imds,
    /// App Service / Azure Functions / Container Apps: `IDENTITY_ENDPOINT` with
    /// `X-IDENTITY-HEADER`.
    AppService,
}

/// Which user-assigned identity to use (none: the system-assigned one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySelector {
    /// `client_id` on both endpoints.
    ClientId(String),
    /// IMDS `object_id`, App Service `principal_id`.
    ObjectId(String),
    /// IMDS `msi_res_id`, App Service `mi_res_id` (the identity's ARM resource id).
    ResourceId(String),
}

/// A managed identity and how to ask for its tokens (the cluster, authority and timeout are
/// the credential's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedIdentity {
    pub endpoint: ManagedIdentityEndpoint,
    pub selector: Option<IdentitySelector>,
    /// App Service: the path of IDENTITY_ENDPOINT (IMDS: unused).
    pub path: String,
    /// App Service: the environment variable holding the X-IDENTITY-HEADER value.
    pub identity_header_env: Option<String>,
}

impl ManagedIdentity {
    fn fingerprint_part(&self) -> String {
        let selector = match &self.selector {
            None => "system".to_string(),
            Some(IdentitySelector::ClientId(v)) => format!("client_id:{v}"),
            Some(IdentitySelector::ObjectId(v)) => format!("object_id:{v}"),
            Some(IdentitySelector::ResourceId(v)) => format!("res_id:{v}"),
        };
        format!("{:?}|{selector}|{}", self.endpoint, self.path)
    }
}

/// How the assertion endpoint of a federated credential answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssertionResponse {
    /// The body is the JWT.
    Text,
    /// The JWT is this top-level string field of a JSON body.
    JsonField(String),
}

/// Where a federated credential's `client_assertion` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssertionSource {
    /// `GET path` on `authority` through `cluster`.
    Http {
        cluster: String,
        authority: String,
        path: String,
        /// Environment variable with the value of an `Authorization` header for the endpoint.
        header_env: Option<String>,
        response: AssertionResponse,
    },
    /// A token of the managed identity credential `credential` for `audience`
    /// (`api://AzureADTokenExchange`): the secretless cross-tenant chain. The identity's
    /// endpoint, cluster, authority and timeout are copied from that credential.
    ManagedIdentity {
        credential: String,
        identity: ManagedIdentity,
        cluster: String,
        authority: String,
        timeout_ms: u64,
        audience: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialKind {
    /// Client credentials with a client secret.
    ClientSecret {
        tenant_id: String,
        client_id: String,
        secret: SecretSource,
    },
    /// Client credentials with a certificate: the filter signs a `client_assertion`.
    ClientCertificate {
        tenant_id: String,
        client_id: String,
        private_key: SecretSource,
        algorithm: SigningAlgorithm,
        /// From `certificate_thumbprint_sha256` or `certificate_pem` (None: the certificate
        /// follows the key in the PEM of `private_key_env`, read at configure time).
        thumbprint_sha256: Option<[u8; 32]>,
        thumbprint_sha1: Option<[u8; 20]>,
    },
    /// A managed identity token. The credential's `token_cluster` reaches the endpoint and its
    /// `authority_host` is the endpoint's authority (`169.254.169.254` for IMDS).
    ManagedIdentity(ManagedIdentity),
    /// Client credentials with an assertion obtained from elsewhere.
    Federated {
        tenant_id: String,
        client_id: String,
        assertion: AssertionSource,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub name: String,
    pub kind: CredentialKind,
    /// The Envoy cluster of the token request (Entra, or the managed identity endpoint).
    pub token_cluster: String,
    /// The `:authority` of the token request: the Entra authority host
    /// (`login.microsoftonline.com`), or the managed identity endpoint's authority.
    pub authority_host: String,
    pub scope: String,
    /// Timeout of the token request (of each callout of this credential's own).
    pub timeout_ms: u64,
}

impl Credential {
    /// A stable fingerprint of everything that decides which token this credential gets.
    /// It keys the shared token cache, so a config update that changes a credential never
    /// serves the old credential's token, while unchanged credentials keep theirs. Inline
    /// secrets enter it only as SHA-256 hashes.
    pub fn fingerprint(&self) -> u64 {
        let kind: Vec<String> = match &self.kind {
            CredentialKind::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => vec![
                "client_secret".into(),
                tenant_id.clone(),
                client_id.clone(),
                secret.fingerprint_part(),
            ],
            CredentialKind::ClientCertificate {
                tenant_id,
                client_id,
                private_key,
                algorithm,
                thumbprint_sha256,
                thumbprint_sha1,
            } => vec![
                "client_certificate".into(),
                tenant_id.clone(),
                client_id.clone(),
                private_key.fingerprint_part(),
                algorithm.as_str().into(),
                format!("{thumbprint_sha256:?}"),
                format!("{thumbprint_sha1:?}"),
            ],
            CredentialKind::ManagedIdentity(identity) => {
                vec!["managed_identity".into(), identity.fingerprint_part()]
            }
            CredentialKind::Federated {
                tenant_id,
                client_id,
                assertion,
            } => {
                let mut parts = vec!["federated".into(), tenant_id.clone(), client_id.clone()];
                match assertion {
                    AssertionSource::Http {
                        cluster,
                        authority,
                        path,
                        header_env,
                        response,
                    } => parts.extend([
                        "http".into(),
                        cluster.clone(),
                        authority.clone(),
                        path.clone(),
                        format!("{header_env:?}"),
                        format!("{response:?}"),
                    ]),
                    AssertionSource::ManagedIdentity {
                        identity,
                        cluster,
                        authority,
                        audience,
                        ..
                    } => parts.extend([
                        "managed_identity".into(),
                        identity.fingerprint_part(),
                        cluster.clone(),
                        authority.clone(),
                        audience.clone(),
                    ]),
                }
                parts
            }
        };
        // JSON keeps the parts unambiguous whatever characters they hold.
        let text = serde_json::json!([kind, self.token_cluster, self.authority_host, self.scope])
            .to_string();
        let digest = Sha256::digest(text.as_bytes());
        let mut first = [0u8; 8];
        for (out, byte) in first.iter_mut().zip(digest.iter()) {
            *out = *byte;
        }
        u64::from_be_bytes(first)
    }

    /// The longest a fetch of this credential may take: the sum of its callouts' timeouts
    /// (a federated credential makes two callouts).
    pub fn fetch_budget_ms(&self) -> u64 {
        match &self.kind {
            CredentialKind::Federated {
                assertion: AssertionSource::ManagedIdentity { timeout_ms, .. },
                ..
            } => self.timeout_ms.saturating_add(*timeout_ms),
            CredentialKind::Federated { .. } => self.timeout_ms.saturating_mul(2),
            _ => self.timeout_ms,
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
    /// Response headers from Azure that never reach the caller (the routing header included).
    pub response_headers_to_remove: Vec<String>,
    pub token_wait_timeout_ms: u64,
    pub body_wait_timeout_ms: u64,
    /// Per-request data left in filter state for access logs (`wasm.azure_llm_*`).
    pub access_log_properties: bool,
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

    let credentials = validate_credentials(raw.credentials)?;

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
    let mut response_headers_to_remove = vec![routing_header.clone()];
    for (i, h) in raw.response_headers_to_remove.iter().enumerate() {
        if !is_header_name(h) {
            return Err(ConfigError::new(
                format!("response_headers_to_remove[{i}]"),
                "must be a lowercase HTTP header name (letters, digits, '-')",
            ));
        }
        if !response_headers_to_remove.contains(h) {
            response_headers_to_remove.push(h.clone());
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

    let auth = match raw.auth {
        Some(a) => Some(crate::auth::AuthConfig::from_raw(a, "auth")?),
        None => None,
    };
    let rate_limits = match &raw.rate_limits {
        Some(r) => crate::ratelimit::RateLimits::from_raw(r, |m| models.contains_key(m))?,
        None => crate::ratelimit::RateLimits::default(),
    };
    Ok(Config {
        rate_limits,
        auth,
        routing_header,
        routing_mode,
        model_header,
        response_headers_to_remove,
        token_wait_timeout_ms,
        body_wait_timeout_ms,
        access_log_properties: raw.access_log_properties.unwrap_or(true),
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

/// A secret given inline or by the name of an environment variable: exactly one of the two.
fn secret_source(
    f: &impl Fn(&str) -> String,
    (inline_field, inline): (&str, Option<String>),
    (env_field, env): (&str, Option<String>),
    missing: &str,
) -> Result<SecretSource, ConfigError> {
    match (inline, env) {
        (Some(v), None) if !v.is_empty() => Ok(SecretSource::Inline(v)),
        (None, Some(env)) => {
            check_env_name(&f(env_field), &env)?;
            Ok(SecretSource::Env(env))
        }
        (Some(_), Some(_)) => Err(ConfigError::new(
            f(inline_field),
            format!("give either {inline_field} or {env_field}, not both"),
        )),
        _ => Err(ConfigError::new(f(inline_field), missing)),
    }
}

fn check_api_version(field: &str, v: &str) -> Result<(), ConfigError> {
    check_bytes(
        field,
        v,
        64,
        is_safe_path_byte,
        "must be a non-empty version such as 2024-10-21",
    )
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
    const REASON: &str = "must be 1-64 characters of letters, digits, '-', '_', '.'";
    check_bytes(field, deployment, 64, is_name_byte, REASON)?;
    if deployment.starts_with('.') {
        return Err(ConfigError::new(field, REASON));
    }
    Ok(())
}

/// Default `:authority` of IMDS callouts.
pub const DEFAULT_IMDS_AUTHORITY: &str = "169.254.169.254";
/// Default path of the App Service / Container Apps identity endpoint.
pub const DEFAULT_IDENTITY_PATH: &str = "/msi/token";
/// Default environment variable holding the App Service X-IDENTITY-HEADER value.
pub const DEFAULT_IDENTITY_HEADER_ENV: &str = "IDENTITY_HEADER";
/// Audience of the managed identity token used as a federated assertion (public cloud; US Gov:
/// `api://AzureADTokenExchangeUSGov`, China: `api://AzureADTokenExchangeChina`).
pub const DEFAULT_TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Validates every credential. Managed identity credentials first, so a federated credential
/// can take its assertion from one of them whatever the names' order.
fn validate_credentials(
    raw: BTreeMap<String, RawCredential>,
) -> Result<Vec<Credential>, ConfigError> {
    let mut identities = Vec::new();
    for (name, cred) in &raw {
        if matches!(cred, RawCredential::ManagedIdentity { .. }) {
            identities.push(validate_credential(name.clone(), cred.clone(), &[])?);
        }
    }
    let mut credentials = Vec::with_capacity(raw.len());
    for (name, cred) in raw {
        credentials.push(validate_credential(name, cred, &identities)?);
    }
    Ok(credentials)
}

/// Validates one credential. `identities`: the managed identity credentials, which federated
/// credentials may name as their assertion source.
fn validate_credential(
    name: String,
    cred: RawCredential,
    identities: &[Credential],
) -> Result<Credential, ConfigError> {
    let field = format!("credentials.{name}");
    check_name(&field, &name)?;
    let f = |sub: &str| format!("{field}.{sub}");
    let (kind, token_cluster, authority_host, scope, timeout_ms) = match cred {
        RawCredential::ClientSecret {
            tenant_id,
            client_id,
            client_secret,
            client_secret_env,
            token_cluster,
            authority_host,
            scope,
            timeout_ms,
        } => {
            check_tenant(&f("tenant_id"), &tenant_id)?;
            check_nonempty_token(&f("client_id"), &client_id)?;
            let secret = secret_source(
                &f,
                ("client_secret", client_secret),
                ("client_secret_env", client_secret_env),
                "a non-empty client_secret or client_secret_env is required",
            )?;
            (
                CredentialKind::ClientSecret {
                    tenant_id,
                    client_id,
                    secret,
                },
                token_cluster,
                authority_host,
                scope,
                timeout_ms,
            )
        }
        RawCredential::ClientCertificate {
            tenant_id,
            client_id,
            private_key_pem,
            private_key_env,
            certificate_thumbprint_sha256,
            certificate_thumbprint_sha1,
            certificate_pem,
            algorithm,
            token_cluster,
            authority_host,
            scope,
            timeout_ms,
        } => {
            check_tenant(&f("tenant_id"), &tenant_id)?;
            check_nonempty_token(&f("client_id"), &client_id)?;
            let algorithm = match algorithm.as_deref() {
                None | Some("PS256") => SigningAlgorithm::Ps256,
                Some("RS256") => SigningAlgorithm::Rs256,
                Some(_) => {
                    return Err(ConfigError::new(
                        f("algorithm"),
                        "must be \"PS256\" (default) or \"RS256\"",
                    ))
                }
            };
            let private_key = secret_source(
                &f,
                ("private_key_pem", private_key_pem),
                ("private_key_env", private_key_env),
                "a PEM private_key_pem or private_key_env is required",
            )?;
            let mut sha256 = match &certificate_thumbprint_sha256 {
                Some(t) => Some(parse_thumbprint::<32>(t).ok_or_else(|| {
                    ConfigError::new(
                        f("certificate_thumbprint_sha256"),
                        "must be the certificate's SHA-256 thumbprint: 64 hex digits \
                         (':' allowed) or 43 base64url characters",
                    )
                })?),
                None => None,
            };
            let mut sha1 = match &certificate_thumbprint_sha1 {
                Some(t) => Some(parse_thumbprint::<20>(t).ok_or_else(|| {
                    ConfigError::new(
                        f("certificate_thumbprint_sha1"),
                        "must be the certificate's SHA-1 thumbprint: 40 hex digits \
                         (':' allowed) or 27 base64url characters",
                    )
                })?),
                None => None,
            };
            // The key is parsed now when it is inline (errors at configure time, naming the
            // field); a key from the environment is parsed by resolve_secrets.
            let inline_key = match &private_key {
                SecretSource::Inline(pem) => Some(
                    parse_private_key_pem(pem)
                        .map_err(|why| ConfigError::new(f("private_key_pem"), why))?,
                ),
                SecretSource::Env(_) => None,
            };
            if let Some(cert_pem) = &certificate_pem {
                let certs = parse_certificates_pem(cert_pem)
                    .map_err(|why| ConfigError::new(f("certificate_pem"), why))?;
                let leaf = match &inline_key {
                    Some((key, _)) => certificate_for_key(key, &certs).ok_or_else(|| {
                        ConfigError::new(
                            f("certificate_pem"),
                            "no certificate in certificate_pem belongs to private_key_pem",
                        )
                    })?,
                    None => certs.first().map(Vec::as_slice).unwrap_or_default(),
                };
                let (s256, s1) = (sha256_thumbprint(leaf), sha1_thumbprint(leaf));
                if sha256.is_some_and(|t| t != s256) {
                    return Err(ConfigError::new(
                        f("certificate_thumbprint_sha256"),
                        "does not match the certificate in certificate_pem",
                    ));
                }
                if sha1.is_some_and(|t| t != s1) {
                    return Err(ConfigError::new(
                        f("certificate_thumbprint_sha1"),
                        "does not match the certificate in certificate_pem",
                    ));
                }
                sha256 = Some(s256);
                sha1 = Some(s1);
            } else if let Some((key, bundled)) = &inline_key {
                // A key+certificate bundle gives the thumbprints unless they were given.
                if let (None, None, Some(leaf)) = (sha256, sha1, certificate_for_key(key, bundled))
                {
                    sha256 = Some(sha256_thumbprint(leaf));
                    sha1 = Some(sha1_thumbprint(leaf));
                }
            }
            if let Some((key, _)) = inline_key {
                AssertionKey::new(key, algorithm, sha256, sha1)
                    .map_err(|why| ConfigError::new(f("certificate_thumbprint_sha256"), why))?;
            } else if sha256.is_none() && algorithm == SigningAlgorithm::Ps256 && sha1.is_some() {
                return Err(ConfigError::new(
                    f("certificate_thumbprint_sha256"),
                    "PS256 assertions carry x5t#S256: give certificate_thumbprint_sha256 or \
                     certificate_pem, or use algorithm RS256 with the SHA-1 thumbprint",
                ));
            }
            (
                CredentialKind::ClientCertificate {
                    tenant_id,
                    client_id,
                    private_key,
                    algorithm,
                    thumbprint_sha256: sha256,
                    thumbprint_sha1: sha1,
                },
                token_cluster,
                authority_host,
                scope,
                timeout_ms,
            )
        }
        RawCredential::ManagedIdentity {
            endpoint,
            client_id,
            object_id,
            principal_id,
            msi_res_id,
            mi_res_id,
            token_cluster,
            authority,
            path,
            identity_header_env,
            scope,
            timeout_ms,
        } => {
            let endpoint = match endpoint.as_deref() {
                None | Some("imds") => ManagedIdentityEndpoint::Imds,
                Some("app_service") => ManagedIdentityEndpoint::AppService,
                Some(_) => {
                    return Err(ConfigError::new(
                        f("endpoint"),
                        "must be \"imds\" (default) or \"app_service\"",
                    ))
                }
            };
            let mut selectors = Vec::new();
            for (key, value) in [
                ("client_id", client_id),
                ("object_id", object_id),
                ("principal_id", principal_id),
                ("msi_res_id", msi_res_id),
                ("mi_res_id", mi_res_id),
            ] {
                let Some(v) = value else { continue };
                check_selector(&f(key), &v)?;
                let selector = match key {
                    "client_id" => IdentitySelector::ClientId(v),
                    "object_id" | "principal_id" => IdentitySelector::ObjectId(v),
                    _ => IdentitySelector::ResourceId(v),
                };
                selectors.push((key, selector));
            }
            if selectors.len() > 1 {
                return Err(ConfigError::new(
                    f(selectors.get(1).map(|(k, _)| *k).unwrap_or("client_id")),
                    "give at most one of client_id, object_id / principal_id, \
                     msi_res_id / mi_res_id (none: the system-assigned identity)",
                ));
            }
            let selector = selectors.pop().map(|(_, s)| s);
            let (authority, path, identity_header_env) = match endpoint {
                ManagedIdentityEndpoint::Imds => {
                    if path.is_some() {
                        return Err(ConfigError::new(
                            f("path"),
                            "path is only used with endpoint app_service",
                        ));
                    }
                    if identity_header_env.is_some() {
                        return Err(ConfigError::new(
                            f("identity_header_env"),
                            "identity_header_env is only used with endpoint app_service",
                        ));
                    }
                    (
                        authority.unwrap_or_else(|| DEFAULT_IMDS_AUTHORITY.to_string()),
                        String::new(),
                        None,
                    )
                }
                ManagedIdentityEndpoint::AppService => {
                    let authority = authority.ok_or_else(|| {
                        ConfigError::new(
                            f("authority"),
                            "endpoint app_service needs the host:port of IDENTITY_ENDPOINT \
                             (e.g. localhost:42356)",
                        )
                    })?;
                    let path = path.unwrap_or_else(|| DEFAULT_IDENTITY_PATH.to_string());
                    check_path(&f("path"), &path, false)?;
                    let env = identity_header_env
                        .unwrap_or_else(|| DEFAULT_IDENTITY_HEADER_ENV.to_string());
                    check_env_name(&f("identity_header_env"), &env)?;
                    (authority, path, Some(env))
                }
            };
            (
                CredentialKind::ManagedIdentity(ManagedIdentity {
                    endpoint,
                    selector,
                    path,
                    identity_header_env,
                }),
                token_cluster,
                Some(authority),
                scope,
                timeout_ms,
            )
        }
        RawCredential::Federated {
            tenant_id,
            client_id,
            assertion,
            token_cluster,
            authority_host,
            scope,
            timeout_ms,
        } => {
            check_tenant(&f("tenant_id"), &tenant_id)?;
            check_nonempty_token(&f("client_id"), &client_id)?;
            let afield = f("assertion");
            let assertion: RawAssertion =
                serde_path_to_error::deserialize(assertion).map_err(|e| {
                    let path = e.path().to_string();
                    let field = if path == "." {
                        afield.clone()
                    } else {
                        format!("{afield}.{path}")
                    };
                    ConfigError::new(field, e.into_inner().to_string())
                })?;
            let assertion = match assertion {
                RawAssertion::Http {
                    cluster,
                    authority,
                    path,
                    header_env,
                    response,
                } => {
                    check_cluster(&format!("{afield}.cluster"), &cluster)?;
                    check_host(&format!("{afield}.authority"), &authority)?;
                    check_path(&format!("{afield}.path"), &path, true)?;
                    if let Some(env) = &header_env {
                        check_env_name(&format!("{afield}.header_env"), env)?;
                    }
                    let response = match response.as_deref() {
                        None | Some("text") => AssertionResponse::Text,
                        Some(r) => match r.strip_prefix("json_field:") {
                            Some(name) if !name.is_empty() && name.len() <= 128 => {
                                AssertionResponse::JsonField(name.to_string())
                            }
                            _ => {
                                return Err(ConfigError::new(
                                    format!("{afield}.response"),
                                    "must be \"text\" or \"json_field:<name>\"",
                                ))
                            }
                        },
                    };
                    AssertionSource::Http {
                        cluster,
                        authority,
                        path,
                        header_env,
                        response,
                    }
                }
                RawAssertion::ManagedIdentity {
                    credential,
                    audience,
                } => {
                    let cfield = format!("{afield}.credential");
                    let source = identities
                        .iter()
                        .find(|c| c.name == credential)
                        .ok_or_else(|| {
                            ConfigError::new(
                                cfield.clone(),
                                format!(
                                    "no managed_identity credential named {credential:?} in \
                                     credentials"
                                ),
                            )
                        })?;
                    let CredentialKind::ManagedIdentity(identity) = &source.kind else {
                        return Err(ConfigError::new(
                            cfield,
                            "must name a managed_identity credential",
                        ));
                    };
                    let audience =
                        audience.unwrap_or_else(|| DEFAULT_TOKEN_EXCHANGE_AUDIENCE.to_string());
                    check_scope(&format!("{afield}.audience"), &audience)?;
                    AssertionSource::ManagedIdentity {
                        credential,
                        identity: identity.clone(),
                        cluster: source.token_cluster.clone(),
                        authority: source.authority_host.clone(),
                        timeout_ms: source.timeout_ms,
                        audience,
                    }
                }
            };
            (
                CredentialKind::Federated {
                    tenant_id,
                    client_id,
                    assertion,
                },
                token_cluster,
                authority_host,
                scope,
                timeout_ms,
            )
        }
    };
    check_cluster(&f("token_cluster"), &token_cluster)?;
    let host_field = match &kind {
        CredentialKind::ManagedIdentity(_) => f("authority"),
        _ => f("authority_host"),
    };
    let authority_host = authority_host.unwrap_or_else(|| DEFAULT_AUTHORITY_HOST.to_string());
    check_host(&host_field, &authority_host)?;
    let scope = scope.unwrap_or_else(|| DEFAULT_SCOPE.to_string());
    check_scope(&f("scope"), &scope)?;
    let timeout_ms = timeout_ms.unwrap_or(DEFAULT_TOKEN_FETCH_TIMEOUT_MS);
    check_range(&f("timeout_ms"), timeout_ms, 1, MAX_TIMEOUT_MS)?;
    Ok(Credential {
        name,
        kind,
        token_cluster,
        authority_host,
        scope,
        timeout_ms,
    })
}

fn check_cluster(field: &str, cluster: &str) -> Result<(), ConfigError> {
    check_bytes(
        field,
        cluster,
        256,
        is_visible_byte,
        "must name an Envoy cluster (non-empty, no whitespace)",
    )
}

fn check_scope(field: &str, scope: &str) -> Result<(), ConfigError> {
    check_bytes(
        field,
        scope,
        512,
        is_visible_byte,
        "must be a scope such as https://cognitiveservices.azure.com/.default",
    )
}

fn check_env_name(field: &str, name: &str) -> Result<(), ConfigError> {
    check_bytes(
        field,
        name,
        128,
        is_name_byte,
        "must name an environment variable (letters, digits, '_')",
    )
}

/// A managed identity selector: a GUID or an ARM resource id.
fn check_selector(field: &str, v: &str) -> Result<(), ConfigError> {
    check_bytes(
        field,
        v,
        1024,
        is_visible_byte,
        "must be a non-empty id without whitespace",
    )
}

/// A callout path: starts with '/', printable, no whitespace or fragment; a query only where
/// allowed.
fn check_path(field: &str, path: &str, query_allowed: bool) -> Result<(), ConfigError> {
    if !path.starts_with('/')
        || path.len() > 2048
        || path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b < 0x21 || b == 0x7f || b == b'#')
        || (!query_allowed && path.contains('?'))
    {
        return Err(ConfigError::new(
            field,
            if query_allowed {
                "must be a path starting with '/' (a query is allowed), without whitespace"
            } else {
                "must be a path starting with '/', without query or whitespace"
            },
        ));
    }
    Ok(())
}

/// Resolves what each credential needs at fetch time: secrets given by environment variable
/// name, private keys (parsed and checked), identity and endpoint header values. Run inside
/// the VM at configure time (the VM's environment comes from `vm_config.environment_variables`).
/// One entry per credential, in the order of `config.credentials`.
pub fn resolve_secrets(
    config: &Config,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<ResolvedSecret>, ConfigError> {
    let env = |field: String, var: &str| -> Result<String, ConfigError> {
        match lookup(var) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(ConfigError::new(
                field,
                format!(
                    "environment variable {var:?} is not set or empty in the Wasm VM \
                     (set it in vm_config.environment_variables)"
                ),
            )),
        }
    };
    // A value that goes into a request header: no control characters (never quoted).
    let header_env = |field: String, var: &str| -> Result<String, ConfigError> {
        let v = env(field.clone(), var)?;
        let v = v.trim().to_string();
        if v.is_empty() || v.len() > 8192 || v.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(ConfigError::new(
                field,
                format!("environment variable {var:?} does not hold a valid header value"),
            ));
        }
        Ok(v)
    };
    let identity_header =
        |identity: &ManagedIdentity, owner: &str| -> Result<Option<String>, ConfigError> {
            identity
                .identity_header_env
                .as_deref()
                .map(|var| header_env(format!("credentials.{owner}.identity_header_env"), var))
                .transpose()
        };
    config
        .credentials
        .iter()
        .map(|c| {
            let field = |sub: &str| format!("credentials.{}.{sub}", c.name);
            Ok(match &c.kind {
                CredentialKind::ClientSecret { secret, .. } => match secret {
                    SecretSource::Inline(s) => ResolvedSecret::ClientSecret(s.clone()),
                    SecretSource::Env(var) => {
                        ResolvedSecret::ClientSecret(env(field("client_secret_env"), var)?)
                    }
                },
                CredentialKind::ClientCertificate {
                    private_key,
                    algorithm,
                    thumbprint_sha256,
                    thumbprint_sha1,
                    ..
                } => {
                    let (pem, key_field) = match private_key {
                        SecretSource::Inline(pem) => (pem.clone(), field("private_key_pem")),
                        SecretSource::Env(var) => (
                            env(field("private_key_env"), var)?,
                            field("private_key_env"),
                        ),
                    };
                    let (key, bundled) = parse_private_key_pem(&pem)
                        .map_err(|why| ConfigError::new(key_field.clone(), why))?;
                    let (mut sha256, mut sha1) = (*thumbprint_sha256, *thumbprint_sha1);
                    if sha256.is_none() && sha1.is_none() {
                        if let Some(leaf) = certificate_for_key(&key, &bundled) {
                            sha256 = Some(sha256_thumbprint(leaf));
                            sha1 = Some(sha1_thumbprint(leaf));
                        }
                    }
                    let key = AssertionKey::new(key, *algorithm, sha256, sha1).map_err(|why| {
                        ConfigError::new(field("certificate_thumbprint_sha256"), why)
                    })?;
                    ResolvedSecret::SigningKey(Box::new(key))
                }
                CredentialKind::ManagedIdentity(identity) => ResolvedSecret::ManagedIdentity {
                    identity_header: identity_header(identity, &c.name)?,
                },
                CredentialKind::Federated { assertion, .. } => match assertion {
                    AssertionSource::Http {
                        header_env: var, ..
                    } => ResolvedSecret::AssertionEndpoint {
                        authorization: var
                            .as_deref()
                            .map(|var| header_env(field("assertion.header_env"), var))
                            .transpose()?,
                    },
                    AssertionSource::ManagedIdentity {
                        identity,
                        credential,
                        ..
                    } => ResolvedSecret::ManagedIdentity {
                        identity_header: identity_header(identity, credential)?,
                    },
                },
            })
        })
        .collect()
}

/// What a credential needs at fetch time besides its configuration. Debug output is redacted.
#[derive(Clone, PartialEq, Eq)]
pub enum ResolvedSecret {
    /// `client_secret`.
    ClientSecret(String),
    /// `client_certificate`: the parsed key with its certificate thumbprints.
    SigningKey(Box<AssertionKey>),
    /// `managed_identity`, and `federated` with a managed identity source: the App Service
    /// X-IDENTITY-HEADER value (None for IMDS).
    ManagedIdentity { identity_header: Option<String> },
    /// `federated` with an HTTP source: the endpoint's Authorization header value, if any.
    AssertionEndpoint { authorization: Option<String> },
}

impl fmt::Debug for ResolvedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |v: &Option<String>| if v.is_some() { "<redacted>" } else { "None" };
        match self {
            ResolvedSecret::ClientSecret(_) => write!(f, "ClientSecret(<redacted>)"),
            ResolvedSecret::SigningKey(k) => write!(f, "SigningKey({k:?})"),
            ResolvedSecret::ManagedIdentity { identity_header } => write!(
                f,
                "ManagedIdentity {{ identity_header: {} }}",
                set(identity_header)
            ),
            ResolvedSecret::AssertionEndpoint { authorization } => write!(
                f,
                "AssertionEndpoint {{ authorization: {} }}",
                set(authorization)
            ),
        }
    }
}

pub(crate) fn check_range(field: &str, v: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if v < min || v > max {
        return Err(ConfigError::new(
            field,
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(())
}

/// Names of credentials, backends, providers: they end up in shared-data keys and logs.
pub(crate) fn check_name(field: &str, name: &str) -> Result<(), ConfigError> {
    check_bytes(
        field,
        name,
        64,
        is_name_byte,
        "names must be 1-64 characters of letters, digits, '-', '_', '.'",
    )
}

fn check_tenant(field: &str, tenant: &str) -> Result<(), ConfigError> {
    check_bytes(
        field,
        tenant,
        128,
        |b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.',
        "must be a tenant id (GUID) or domain such as contoso.onmicrosoft.com",
    )
}

fn check_nonempty_token(field: &str, v: &str) -> Result<(), ConfigError> {
    check_bytes(
        field,
        v,
        256,
        is_visible_byte,
        "must be non-empty without whitespace",
    )
}

/// The shape of most names and ids in the config: 1 to `max_len` bytes, each one `allowed`.
pub(crate) fn check_bytes(
    field: &str,
    v: &str,
    max_len: usize,
    allowed: impl Fn(u8) -> bool,
    reason: &str,
) -> Result<(), ConfigError> {
    if v.is_empty() || v.len() > max_len || !v.bytes().all(allowed) {
        return Err(ConfigError::new(field, reason));
    }
    Ok(())
}

/// Letters, digits, '-', '_', '.'.
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'
}

/// Anything but ASCII whitespace and control characters (non-ASCII UTF-8 passes).
fn is_visible_byte(b: u8) -> bool {
    b > 0x20 && b != 0x7f
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
        assert!(c.access_log_properties);
    }

    #[test]
    fn access_log_properties_switch() {
        let mut v = base();
        v["access_log_properties"] = json!(false);
        assert!(!parse(v.clone()).unwrap().access_log_properties);
        v["access_log_properties"] = json!("off");
        assert_eq!(parse(v).unwrap_err().field, "access_log_properties");
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
        assert_eq!(ok[0], ResolvedSecret::ClientSecret("v".into()));
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
    fn response_headers_to_remove_are_checked_and_include_the_routing_header() {
        let mut v = base();
        v["response_headers_to_remove"] = json!(["x-ms-region", "apim-request-id"]);
        let c = parse(v.clone()).unwrap();
        assert_eq!(
            c.response_headers_to_remove,
            vec![DEFAULT_ROUTING_HEADER, "x-ms-region", "apim-request-id"]
        );
        v["response_headers_to_remove"] = json!(["ok", "Bad Header"]);
        assert_eq!(parse(v).unwrap_err().field, "response_headers_to_remove[1]");
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

    // ---- credential kinds -------------------------------------------------------------------

    use crate::entra::assertion::tests::{
        CERT, CERT_SHA1_HEX, CERT_SHA256_HEX, EC_KEY, KEY_PKCS1, KEY_PKCS8, OTHER_CERT, WEAK_KEY,
    };

    /// `base()` with its credential replaced by `creds` (the backend uses the first).
    fn with_credentials(creds: serde_json::Value) -> serde_json::Value {
        let mut v = base();
        let first = creds.as_object().unwrap().keys().next().unwrap().clone();
        v["credentials"] = creds;
        v["backends"]["aoai"]["credential"] = json!(first);
        v
    }

    fn cert_cred() -> serde_json::Value {
        json!({"kind": "client_certificate", "tenant_id": "t1", "client_id": "c1",
               "private_key_pem": KEY_PKCS8, "certificate_pem": CERT, "token_cluster": "entra"})
    }

    fn err_field(v: serde_json::Value) -> String {
        let e = parse(v).unwrap_err();
        assert!(!e.to_string().contains("MII"), "key material in {e}");
        e.field
    }

    #[test]
    fn client_certificate_config() {
        let c = parse(with_credentials(json!({"cert": cert_cred()}))).unwrap();
        let cred = &c.credentials[0];
        let CredentialKind::ClientCertificate {
            algorithm,
            thumbprint_sha256,
            thumbprint_sha1,
            ..
        } = &cred.kind
        else {
            panic!("wrong kind")
        };
        assert_eq!(*algorithm, SigningAlgorithm::Ps256);
        assert_eq!(*thumbprint_sha256, parse_thumbprint(CERT_SHA256_HEX));
        assert_eq!(*thumbprint_sha1, parse_thumbprint(CERT_SHA1_HEX));
        assert_eq!(cred.authority_host, DEFAULT_AUTHORITY_HOST);
        assert_eq!(cred.scope, DEFAULT_SCOPE);
        let secrets = resolve_secrets(&c, |_| None).unwrap();
        let ResolvedSecret::SigningKey(key) = &secrets[0] else {
            panic!("not a key")
        };
        assert_eq!(key.algorithm(), SigningAlgorithm::Ps256);
        assert_eq!(
            key.x5t_s256(),
            Some("O4Dqb2tZQ7Q40WVAM414xMpp4fTA0zjdMwj3LkVxisA")
        );

        // Thumbprint only (hex or base64url), PKCS#1 key, RS256.
        for tp in [
            CERT_SHA256_HEX,
            "O4Dqb2tZQ7Q40WVAM414xMpp4fTA0zjdMwj3LkVxisA",
        ] {
            let mut cred = cert_cred();
            cred.as_object_mut().unwrap().remove("certificate_pem");
            cred["certificate_thumbprint_sha256"] = json!(tp);
            cred["private_key_pem"] = json!(KEY_PKCS1);
            cred["algorithm"] = json!("RS256");
            let c = parse(with_credentials(json!({"cert": cred}))).unwrap();
            assert!(resolve_secrets(&c, |_| None).is_ok());
        }
        // RS256 with the SHA-1 thumbprint only works; PS256 needs SHA-256.
        let mut cred = cert_cred();
        cred.as_object_mut().unwrap().remove("certificate_pem");
        cred["certificate_thumbprint_sha1"] = json!(CERT_SHA1_HEX);
        cred["algorithm"] = json!("RS256");
        assert!(parse(with_credentials(json!({"cert": cred.clone()}))).is_ok());
        cred["algorithm"] = json!("PS256");
        assert_eq!(
            err_field(with_credentials(json!({"cert": cred}))),
            "credentials.cert.certificate_thumbprint_sha256"
        );
        // A key+certificate bundle needs nothing else.
        let mut cred = cert_cred();
        cred.as_object_mut().unwrap().remove("certificate_pem");
        cred["private_key_pem"] = json!(format!("{KEY_PKCS8}{CERT}"));
        let c = parse(with_credentials(json!({"cert": cred}))).unwrap();
        assert!(matches!(
            &c.credentials[0].kind,
            CredentialKind::ClientCertificate {
                thumbprint_sha256: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn client_certificate_errors_name_the_field() {
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("private_key_pem", json!("garbage"), "private_key_pem"),
            ("private_key_pem", json!(WEAK_KEY), "private_key_pem"),
            ("private_key_pem", json!(EC_KEY), "private_key_pem"),
            ("private_key_pem", json!(""), "private_key_pem"),
            ("private_key_env", json!("K"), "private_key_pem"), // both given
            ("certificate_pem", json!(OTHER_CERT), "certificate_pem"),
            ("certificate_pem", json!("nope"), "certificate_pem"),
            (
                "certificate_thumbprint_sha256",
                json!("abcd"),
                "certificate_thumbprint_sha256",
            ),
            (
                "certificate_thumbprint_sha256",
                json!("00".repeat(32)),
                "certificate_thumbprint_sha256",
            ),
            (
                "certificate_thumbprint_sha1",
                json!("00".repeat(20)),
                "certificate_thumbprint_sha1",
            ),
            ("algorithm", json!("ES256"), "algorithm"),
            ("tenant_id", json!("a/b"), "tenant_id"),
            ("token_cluster", json!(""), "token_cluster"),
            ("authority_host", json!("https://x"), "authority_host"),
            ("timeout_ms", json!(0), "timeout_ms"),
        ];
        for (key, value, want) in cases {
            let mut cred = cert_cred();
            cred[key] = value;
            assert_eq!(
                err_field(with_credentials(json!({"cert": cred}))),
                format!("credentials.cert.{want}"),
                "{key}"
            );
        }
        let mut cred = cert_cred();
        cred.as_object_mut().unwrap().remove("certificate_pem");
        assert_eq!(
            err_field(with_credentials(json!({"cert": cred}))),
            "credentials.cert.certificate_thumbprint_sha256"
        );
        let mut cred = cert_cred();
        cred.as_object_mut().unwrap().remove("private_key_pem");
        assert_eq!(
            err_field(with_credentials(json!({"cert": cred}))),
            "credentials.cert.private_key_pem"
        );
        let mut cred = cert_cred();
        cred["private_key_sha"] = json!(1);
        assert_eq!(
            err_field(with_credentials(json!({"cert": cred}))),
            "credentials.cert"
        );
    }

    #[test]
    fn client_certificate_key_from_the_environment() {
        let mut cred = cert_cred();
        cred.as_object_mut().unwrap().remove("private_key_pem");
        cred.as_object_mut().unwrap().remove("certificate_pem");
        cred["private_key_env"] = json!("KEY");
        let c = parse(with_credentials(json!({"cert": cred.clone()}))).unwrap();
        // A bundle in the environment gives the thumbprints.
        let bundle = format!("{KEY_PKCS8}{CERT}").replace('\n', "\\n");
        let ok = resolve_secrets(&c, |k| (k == "KEY").then(|| bundle.clone())).unwrap();
        let ResolvedSecret::SigningKey(key) = &ok[0] else {
            panic!()
        };
        assert!(key.x5t_s256().is_some());
        let e = resolve_secrets(&c, |_| None).unwrap_err();
        assert_eq!(e.field, "credentials.cert.private_key_env");
        let e = resolve_secrets(&c, |_| {
            Some("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----".into())
        })
        .unwrap_err();
        assert_eq!(e.field, "credentials.cert.private_key_env");
        // A key alone in the environment, and no thumbprint anywhere.
        let e = resolve_secrets(&c, |_| Some(KEY_PKCS8.into())).unwrap_err();
        assert_eq!(e.field, "credentials.cert.certificate_thumbprint_sha256");
        cred["certificate_pem"] = json!(CERT);
        let c = parse(with_credentials(json!({"cert": cred}))).unwrap();
        assert!(resolve_secrets(&c, |_| Some(KEY_PKCS8.into())).is_ok());
    }

    fn mi_cred() -> serde_json::Value {
        json!({"kind": "managed_identity", "token_cluster": "imds"})
    }

    #[test]
    fn managed_identity_config() {
        let c = parse(with_credentials(json!({"mi": mi_cred()}))).unwrap();
        let cred = &c.credentials[0];
        assert_eq!(cred.authority_host, DEFAULT_IMDS_AUTHORITY);
        assert_eq!(cred.scope, DEFAULT_SCOPE);
        assert_eq!(
            cred.kind,
            CredentialKind::ManagedIdentity(ManagedIdentity {
                endpoint: ManagedIdentityEndpoint::Imds,
                selector: None,
                path: String::new(),
                identity_header_env: None,
            })
        );
        assert_eq!(
            resolve_secrets(&c, |_| None).unwrap()[0],
            ResolvedSecret::ManagedIdentity {
                identity_header: None
            }
        );
        for (key, want) in [
            ("client_id", IdentitySelector::ClientId("x".into())),
            ("object_id", IdentitySelector::ObjectId("x".into())),
            ("principal_id", IdentitySelector::ObjectId("x".into())),
            ("msi_res_id", IdentitySelector::ResourceId("x".into())),
            ("mi_res_id", IdentitySelector::ResourceId("x".into())),
        ] {
            let mut cred = mi_cred();
            cred[key] = json!("x");
            let c = parse(with_credentials(json!({"mi": cred}))).unwrap();
            let CredentialKind::ManagedIdentity(mi) = &c.credentials[0].kind else {
                panic!()
            };
            assert_eq!(mi.selector, Some(want));
        }
        // App Service.
        let app = json!({"kind": "managed_identity", "endpoint": "app_service", "token_cluster": "id",
                         "authority": "localhost:42356", "client_id": "c"});
        let c = parse(with_credentials(json!({"mi": app.clone()}))).unwrap();
        let CredentialKind::ManagedIdentity(mi) = &c.credentials[0].kind else {
            panic!()
        };
        assert_eq!(mi.path, DEFAULT_IDENTITY_PATH);
        assert_eq!(mi.identity_header_env.as_deref(), Some("IDENTITY_HEADER"));
        assert_eq!(c.credentials[0].authority_host, "localhost:42356");
        let ok = resolve_secrets(&c, |k| (k == "IDENTITY_HEADER").then(|| "h".into())).unwrap();
        assert_eq!(
            ok[0],
            ResolvedSecret::ManagedIdentity {
                identity_header: Some("h".into())
            }
        );
        let e = resolve_secrets(&c, |_| None).unwrap_err();
        assert_eq!(e.field, "credentials.mi.identity_header_env");
        let e = resolve_secrets(&c, |_| Some("a\r\nInjected: 1".into())).unwrap_err();
        assert_eq!(e.field, "credentials.mi.identity_header_env");
        assert!(!e.to_string().contains("Injected"));
    }

    #[test]
    fn managed_identity_errors_name_the_field() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (json!({"client_id": "a", "object_id": "b"}), "object_id"),
            (json!({"client_id": ""}), "client_id"),
            (json!({"msi_res_id": "a b"}), "msi_res_id"),
            (json!({"path": "/x"}), "path"),
            (json!({"identity_header_env": "X"}), "identity_header_env"),
            (json!({"endpoint": "arc"}), "endpoint"),
            (json!({"endpoint": "app_service"}), "authority"),
            (
                json!({"endpoint": "app_service", "authority": "l:1", "path": "x"}),
                "path",
            ),
            (
                json!({"endpoint": "app_service", "authority": "l:1", "path": "/x?y"}),
                "path",
            ),
            (
                json!({"endpoint": "app_service", "authority": "l:1", "identity_header_env": "A B"}),
                "identity_header_env",
            ),
            (json!({"authority": "a/b"}), "authority"),
            (json!({"scope": "a b"}), "scope"),
            (json!({"tenant_id": "t"}), ""),
        ];
        for (extra, want) in cases {
            let mut cred = mi_cred();
            for (k, v) in extra.as_object().unwrap() {
                cred[k] = v.clone();
            }
            let want = if want.is_empty() {
                "credentials.mi".to_string()
            } else {
                format!("credentials.mi.{want}")
            };
            assert_eq!(
                err_field(with_credentials(json!({"mi": cred}))),
                want,
                "{extra}"
            );
        }
    }

    fn federated(assertion: serde_json::Value) -> serde_json::Value {
        json!({"kind": "federated", "tenant_id": "customer", "client_id": "mt-app",
               "token_cluster": "entra", "assertion": assertion})
    }

    #[test]
    fn federated_config() {
        // The managed identity may sort after the credential that uses it.
        let c = parse(with_credentials(json!({
            "a-customer": federated(json!({"source": "managed_identity", "credential": "z-mi"})),
            "z-mi": {"kind": "managed_identity", "token_cluster": "imds", "client_id": "u", "timeout_ms": 900}
        })))
        .unwrap();
        let cred = &c.credentials[c.credential_index("a-customer").unwrap()];
        let CredentialKind::Federated { assertion, .. } = &cred.kind else {
            panic!()
        };
        assert_eq!(
            assertion,
            &AssertionSource::ManagedIdentity {
                credential: "z-mi".into(),
                identity: ManagedIdentity {
                    endpoint: ManagedIdentityEndpoint::Imds,
                    selector: Some(IdentitySelector::ClientId("u".into())),
                    path: String::new(),
                    identity_header_env: None,
                },
                cluster: "imds".into(),
                authority: DEFAULT_IMDS_AUTHORITY.into(),
                timeout_ms: 900,
                audience: DEFAULT_TOKEN_EXCHANGE_AUDIENCE.into(),
            }
        );
        assert_eq!(cred.fetch_budget_ms(), 900 + DEFAULT_TOKEN_FETCH_TIMEOUT_MS);
        assert_eq!(resolve_secrets(&c, |_| None).unwrap().len(), 2);

        let c = parse(with_credentials(json!({"f": federated(json!({
            "source": "http", "cluster": "oidc", "authority": "issuer:8080", "path": "/t?aud=x",
            "header_env": "AUTH", "response": "json_field:token"}))})))
        .unwrap();
        let CredentialKind::Federated { assertion, .. } = &c.credentials[0].kind else {
            panic!()
        };
        assert!(matches!(
            assertion,
            AssertionSource::Http { response: AssertionResponse::JsonField(f), .. } if f == "token"
        ));
        let ok = resolve_secrets(&c, |_| Some("Bearer k".into())).unwrap();
        assert_eq!(
            ok[0],
            ResolvedSecret::AssertionEndpoint {
                authorization: Some("Bearer k".into())
            }
        );
        assert_eq!(
            resolve_secrets(&c, |_| None).unwrap_err().field,
            "credentials.f.assertion.header_env"
        );
    }

    #[test]
    fn federated_errors_name_the_field() {
        let http =
            json!({"source": "http", "cluster": "oidc", "authority": "issuer", "path": "/t"});
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (
                json!({"source": "managed_identity", "credential": "nope"}),
                "assertion.credential",
            ),
            (
                json!({"source": "managed_identity", "credential": "f"}),
                "assertion.credential",
            ),
            (
                json!({"source": "managed_identity", "credential": "mi", "audience": ""}),
                "assertion.audience",
            ),
            (json!({"source": "file", "path": "/x"}), "assertion.source"),
            (
                json!({"source": "http", "cluster": "", "authority": "a", "path": "/"}),
                "assertion.cluster",
            ),
            (
                json!({"source": "http", "cluster": "c", "authority": "a b", "path": "/"}),
                "assertion.authority",
            ),
            (
                json!({"source": "http", "cluster": "c", "authority": "a", "path": "t"}),
                "assertion.path",
            ),
            (
                json!({"source": "http", "cluster": "c", "authority": "a", "path": "/", "response": "xml"}),
                "assertion.response",
            ),
            (
                json!({"source": "http", "cluster": "c", "authority": "a", "path": "/", "response": "json_field:"}),
                "assertion.response",
            ),
            (
                json!({"source": "http", "cluster": "c", "authority": "a", "path": "/", "header_env": ""}),
                "assertion.header_env",
            ),
        ];
        for (assertion, want) in cases {
            let v = with_credentials(json!({
                "f": federated(assertion.clone()),
                "mi": mi_cred(),
            }));
            let field = err_field(v);
            assert!(
                field == format!("credentials.f.{want}")
                    || (want == "assertion.source" && field == "credentials.f.assertion"),
                "{assertion}: {field}"
            );
        }
        let mut bad = http.clone();
        bad["extra"] = json!(1);
        let field = err_field(with_credentials(json!({"f": federated(bad)})));
        assert!(field.starts_with("credentials.f"), "{field}");
        let mut cred = federated(http);
        cred.as_object_mut().unwrap().remove("tenant_id");
        assert_eq!(
            err_field(with_credentials(json!({"f": cred}))),
            "credentials.f"
        );
    }

    #[test]
    fn fingerprint_changes_with_everything_that_decides_the_token() {
        let fp = |v: serde_json::Value, name: &str| -> u64 {
            let c = parse(v).unwrap();
            c.credentials[c.credential_index(name).unwrap()].fingerprint()
        };
        let variants: Vec<(serde_json::Value, &str, &str, serde_json::Value)> = vec![
            (
                base()["credentials"]["main"].clone(),
                "tenant_id",
                "",
                json!("t2"),
            ),
            (
                base()["credentials"]["main"].clone(),
                "client_secret",
                "",
                json!("s2"),
            ),
            (
                base()["credentials"]["main"].clone(),
                "scope",
                "",
                json!("https://ai.azure.com/.default"),
            ),
            (
                base()["credentials"]["main"].clone(),
                "authority_host",
                "",
                json!("login.microsoftonline.us"),
            ),
            (
                base()["credentials"]["main"].clone(),
                "token_cluster",
                "",
                json!("entra2"),
            ),
            (cert_cred(), "algorithm", "", json!("RS256")),
            (cert_cred(), "client_id", "", json!("c2")),
            (mi_cred(), "client_id", "", json!("u2")),
            (mi_cred(), "authority", "", json!("169.254.169.254:80")),
            (
                federated(json!({"source": "managed_identity", "credential": "mi"})),
                "assertion",
                "audience",
                json!("api://AzureADTokenExchangeUSGov"),
            ),
            (
                federated(json!({"source": "http", "cluster": "c", "authority": "a", "path": "/"})),
                "assertion",
                "path",
                json!("/other"),
            ),
            (
                federated(json!({"source": "http", "cluster": "c", "authority": "a", "path": "/"})),
                "assertion",
                "response",
                json!("json_field:t"),
            ),
        ];
        for (cred, key, sub, value) in variants {
            let v1 = with_credentials(json!({"x": cred.clone(), "mi": mi_cred()}));
            let mut changed = cred.clone();
            if sub.is_empty() {
                changed[key] = value;
            } else {
                changed[key][sub] = value;
            }
            let v2 = with_credentials(json!({"x": changed, "mi": mi_cred()}));
            assert_eq!(fp(v1.clone(), "x"), fp(v1.clone(), "x"), "stable");
            assert_ne!(fp(v1, "x"), fp(v2, "x"), "{key}.{sub}");
        }
        // The managed identity behind a federated chain decides its token too.
        let fed = federated(json!({"source": "managed_identity", "credential": "mi"}));
        let mut other_mi = mi_cred();
        other_mi["client_id"] = json!("u3");
        assert_ne!(
            fp(
                with_credentials(json!({"x": fed.clone(), "mi": mi_cred()})),
                "x"
            ),
            fp(with_credentials(json!({"x": fed, "mi": other_mi})), "x")
        );
        // A timeout does not.
        let mut slow = mi_cred();
        slow["timeout_ms"] = json!(9000);
        assert_eq!(
            fp(with_credentials(json!({"x": mi_cred()})), "x"),
            fp(with_credentials(json!({"x": slow})), "x")
        );
    }

    #[test]
    fn no_secret_in_any_debug_output() {
        let v = with_credentials(json!({
            "sec": {"kind": "client_secret", "tenant_id": "t", "client_id": "c",
                    "client_secret": "TOPSECRET-VALUE", "token_cluster": "e"},
            "cert": cert_cred(),
            "app": {"kind": "managed_identity", "endpoint": "app_service", "token_cluster": "id",
                    "authority": "localhost:1"},
            "fed": federated(json!({"source": "http", "cluster": "c", "authority": "a", "path": "/", "header_env": "AUTH"})),
        }));
        let c = parse(v.clone()).unwrap();
        let secrets = resolve_secrets(&c, |k| match k {
            "IDENTITY_HEADER" => Some("IDHEADER-VALUE".into()),
            "AUTH" => Some("Bearer ENDPOINT-KEY".into()),
            _ => None,
        })
        .unwrap();
        let key_body: String = KEY_PKCS8.lines().nth(3).unwrap().to_string();
        for text in [
            format!("{c:?}"),
            format!("{secrets:?}"),
            format!("{c:#?}{secrets:#?}"),
        ] {
            for secret in [
                "TOPSECRET",
                "IDHEADER-VALUE",
                "ENDPOINT-KEY",
                "BEGIN PRIVATE",
                &key_body,
            ] {
                assert!(!text.contains(secret), "{secret} in Debug output");
            }
            assert!(text.contains("redacted"));
        }
        let raw: RawConfig = serde_json::from_value(v).unwrap();
        let text = format!("{raw:?}");
        assert!(
            !text.contains("TOPSECRET") && !text.contains("BEGIN PRIVATE"),
            "{text}"
        );
    }
}
