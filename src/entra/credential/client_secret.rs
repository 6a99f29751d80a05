//! `client_secret`: OAuth client credentials with a client secret.

use super::{check_nonempty_token, check_tenant, secret_source, Common, CredentialKind};
use crate::config::error::ConfigError;
use serde::Deserialize;

// As written (no derived Debug: it may hold the secret; `RawCredential`'s Debug is redacted).
#[derive(Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawClientSecret {
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
}

/// `f`: the dotted name of a field of this credential.
pub(super) fn validate(
    raw: RawClientSecret,
    f: &impl Fn(&str) -> String,
) -> Result<(CredentialKind, Common), ConfigError> {
    let RawClientSecret {
        tenant_id,
        client_id,
        client_secret,
        client_secret_env,
        token_cluster,
        authority_host,
        scope,
        timeout_ms,
    } = raw;
    check_tenant(&f("tenant_id"), &tenant_id)?;
    check_nonempty_token(&f("client_id"), &client_id)?;
    let secret = secret_source(
        f,
        ("client_secret", client_secret),
        ("client_secret_env", client_secret_env),
        "a non-empty client_secret or client_secret_env is required",
    )?;
    Ok((
        CredentialKind::ClientSecret {
            tenant_id,
            client_id,
            secret,
        },
        Common {
            token_cluster,
            authority_host,
            scope,
            timeout_ms,
        },
    ))
}
