//! Microsoft Entra ID credentials: as written (`RawCredential`), validated (`Credential`),
//! and the secrets each needs at fetch time (`secrets`). One file per kind; a new kind is a
//! `RawCredential` variant, a `CredentialKind` variant and a `validate` in its own file,
//! dispatched by `validate_credential` (and its fingerprint, token request and secrets).
//!
//! Every error names the field (`credentials.main.client_secret: ...`).

pub mod certificate;
pub mod client_secret;
pub mod federated;
pub mod managed_identity;
pub mod secrets;
#[cfg(test)]
mod tests;
pub mod workload_identity;

use crate::config::error::{
    check_bytes, check_cluster, check_env_name, check_host, check_name, check_range, check_scope,
    is_visible_byte, ConfigError, MAX_TIMEOUT_MS,
};
use federated::RawFederated;
use managed_identity::RawManagedIdentity;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;

pub use crate::entra::assertion::SigningAlgorithm;
pub use federated::{AssertionResponse, AssertionSource};
pub use managed_identity::{IdentitySelector, ManagedIdentity, ManagedIdentityEndpoint};
pub use secrets::{resolve_secrets, ResolvedSecret};
pub use workload_identity::{ResolvedWorkloadIdentity, WorkloadIdentity};

pub const DEFAULT_AUTHORITY_HOST: &str = "login.microsoftonline.com";
pub const DEFAULT_SCOPE: &str = "https://cognitiveservices.azure.com/.default";
pub const DEFAULT_TOKEN_FETCH_TIMEOUT_MS: u64 = 5_000;

/// A credential as written. Field names and meanings: docs/plugin-config.md, "Credentials".
#[derive(Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RawCredential {
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Client credentials with a client secret (inline, or from an \
                           environment variable of the Wasm VM)."
        )
    )]
    ClientSecret(client_secret::RawClientSecret),
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Client credentials with a certificate: the filter signs the client \
                           assertion (PS256 or RS256)."
        )
    )]
    ClientCertificate(certificate::RawClientCertificate),
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "A managed identity token from IMDS (default) or the App Service / \
                           Container Apps identity endpoint."
        )
    )]
    ManagedIdentity(RawManagedIdentity),
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Client credentials with an assertion obtained first: from an HTTP \
                           endpoint, or a managed identity token (the secretless cross-tenant \
                           chain)."
        )
    )]
    Federated(RawFederated),
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "AKS workload identity (any projected service-account token): tenant, \
                           client id and authority host from the webhook's AZURE_* variables \
                           unless given; the assertion is the AZURE_FEDERATED_TOKEN_FILE that \
                           Envoy serves from an internal listener (docs/plugin-config.md)."
        )
    )]
    WorkloadIdentity(workload_identity::RawWorkloadIdentity),
}

impl fmt::Debug for RawCredential {
    // Raw credentials may hold a secret or a private key inline: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawCredential(<redacted>)")
    }
}

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
    /// Federated, the assertion being the projected token file Envoy serves.
    WorkloadIdentity(WorkloadIdentity),
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
            CredentialKind::WorkloadIdentity(wi) => wi.fingerprint_parts(),
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
            CredentialKind::Federated { .. } | CredentialKind::WorkloadIdentity(_) => {
                self.timeout_ms.saturating_mul(2)
            }
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

/// The fields every kind has, as written; `validate_credential` checks them once.
pub(crate) struct Common {
    pub token_cluster: String,
    pub authority_host: Option<String>,
    pub scope: Option<String>,
    pub timeout_ms: Option<u64>,
}

/// Validates every credential. Managed identity credentials first, so a federated credential
/// can take its assertion from one of them whatever the names' order.
pub fn validate_credentials(
    raw: BTreeMap<String, RawCredential>,
) -> Result<Vec<Credential>, ConfigError> {
    let mut identities = Vec::new();
    for (name, cred) in &raw {
        if matches!(cred, RawCredential::ManagedIdentity(_)) {
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
    let (kind, common) = match cred {
        RawCredential::ClientSecret(raw) => client_secret::validate(raw, &f)?,
        RawCredential::ClientCertificate(raw) => certificate::validate(raw, &f)?,
        RawCredential::ManagedIdentity(raw) => managed_identity::validate(raw, &f)?,
        RawCredential::Federated(raw) => federated::validate(raw, &f, identities)?,
        RawCredential::WorkloadIdentity(raw) => workload_identity::validate(raw, &f)?,
    };
    let Common {
        token_cluster,
        authority_host,
        scope,
        timeout_ms,
    } = common;
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

/// A secret given inline or by the name of an environment variable: exactly one of the two.
pub(crate) fn secret_source(
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

pub(crate) fn check_tenant(field: &str, tenant: &str) -> Result<(), ConfigError> {
    check_bytes(
        field,
        tenant,
        128,
        |b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.',
        "must be a tenant id (GUID) or domain such as contoso.onmicrosoft.com",
    )
}

pub(crate) fn check_nonempty_token(field: &str, v: &str) -> Result<(), ConfigError> {
    check_bytes(
        field,
        v,
        256,
        is_visible_byte,
        "must be non-empty without whitespace",
    )
}
