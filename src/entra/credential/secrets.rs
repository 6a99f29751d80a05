//! What each credential needs at fetch time besides its configuration: secrets named by
//! environment variable, parsed private keys, identity and endpoint header values.

use super::federated::AssertionSource;
use super::managed_identity::ManagedIdentity;
use super::workload_identity::{self, ResolvedWorkloadIdentity};
use super::{Credential, CredentialKind, SecretSource};
use crate::config::error::ConfigError;
use crate::entra::assertion::{
    certificate_for_key, parse_private_key_pem, sha1_thumbprint, sha256_thumbprint, AssertionKey,
};
use std::fmt;

/// Resolves what each credential needs at fetch time: secrets given by environment variable
/// name, private keys (parsed and checked), identity and endpoint header values. Run inside
/// the VM at configure time (the VM's environment comes from `vm_config.environment_variables`).
/// One entry per credential, in the order of `credentials`.
pub fn resolve_secrets(
    credentials: &[Credential],
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
    credentials
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
                // Never refuses the configuration: a missing variable fails the token requests.
                CredentialKind::WorkloadIdentity(wi) => ResolvedSecret::WorkloadIdentity(Box::new(
                    workload_identity::resolve(c, wi, &lookup),
                )),
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
    /// `workload_identity`: tenant, client id, authority host, scope and audiences as the
    /// configuration and the VM's environment give them (no secret).
    WorkloadIdentity(Box<ResolvedWorkloadIdentity>),
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
            ResolvedSecret::WorkloadIdentity(wi) => write!(f, "WorkloadIdentity({wi:?})"),
        }
    }
}
