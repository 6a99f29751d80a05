//! `federated`: OAuth client credentials with a client assertion obtained first, from an HTTP
//! endpoint or as a managed identity token (the secretless cross-tenant chain).

use super::managed_identity::ManagedIdentity;
use super::{check_nonempty_token, check_tenant, Common, Credential, CredentialKind};
use crate::config::error::{
    check_cluster, check_env_name, check_host, check_path, check_scope, ConfigError,
};
use serde::Deserialize;

/// Audience of the managed identity token used as a federated assertion (public cloud; US Gov:
/// `api://AzureADTokenExchangeUSGov`, China: `api://AzureADTokenExchangeChina`).
pub const DEFAULT_TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

// As written.
#[derive(Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawFederated {
    tenant_id: String,
    client_id: String,
    /// Parsed by `validate` so its errors name `...assertion.<field>` (serde
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

/// `f`: the dotted name of a field of this credential. `identities`: the managed identity
/// credentials, which an assertion may come from.
pub(super) fn validate(
    raw: RawFederated,
    f: &impl Fn(&str) -> String,
    identities: &[Credential],
) -> Result<(CredentialKind, Common), ConfigError> {
    let RawFederated {
        tenant_id,
        client_id,
        assertion,
        token_cluster,
        authority_host,
        scope,
        timeout_ms,
    } = raw;
    check_tenant(&f("tenant_id"), &tenant_id)?;
    check_nonempty_token(&f("client_id"), &client_id)?;
    let afield = f("assertion");
    let assertion: RawAssertion = serde_path_to_error::deserialize(assertion).map_err(|e| {
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
        } => http_source(&afield, cluster, authority, path, header_env, response)?,
        RawAssertion::ManagedIdentity {
            credential,
            audience,
        } => managed_identity_source(&afield, credential, audience, identities)?,
    };
    Ok((
        CredentialKind::Federated {
            tenant_id,
            client_id,
            assertion,
        },
        Common {
            token_cluster,
            authority_host,
            scope,
            timeout_ms,
        },
    ))
}

fn http_source(
    afield: &str,
    cluster: String,
    authority: String,
    path: String,
    header_env: Option<String>,
    response: Option<String>,
) -> Result<AssertionSource, ConfigError> {
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
    Ok(AssertionSource::Http {
        cluster,
        authority,
        path,
        header_env,
        response,
    })
}

/// The managed identity credential `credential` (validated before any federated one) lends
/// its identity, cluster, authority and timeout to the assertion callout.
fn managed_identity_source(
    afield: &str,
    credential: String,
    audience: Option<String>,
    identities: &[Credential],
) -> Result<AssertionSource, ConfigError> {
    let cfield = format!("{afield}.credential");
    let source = identities
        .iter()
        .find(|c| c.name == credential)
        .ok_or_else(|| {
            ConfigError::new(
                cfield.clone(),
                format!("no managed_identity credential named {credential:?} in credentials"),
            )
        })?;
    let CredentialKind::ManagedIdentity(identity) = &source.kind else {
        return Err(ConfigError::new(
            cfield,
            "must name a managed_identity credential",
        ));
    };
    let audience = audience.unwrap_or_else(|| DEFAULT_TOKEN_EXCHANGE_AUDIENCE.to_string());
    check_scope(&format!("{afield}.audience"), &audience)?;
    Ok(AssertionSource::ManagedIdentity {
        credential,
        identity: identity.clone(),
        cluster: source.token_cluster.clone(),
        authority: source.authority_host.clone(),
        timeout_ms: source.timeout_ms,
        audience,
    })
}
