//! `managed_identity`: a token of the Azure managed identity, from IMDS (default) or the
//! App Service / Container Apps identity endpoint.

use super::{Common, CredentialKind};
use crate::config::error::{check_bytes, check_env_name, check_path, is_visible_byte, ConfigError};
use serde::Deserialize;

/// Default `:authority` of IMDS callouts.
pub const DEFAULT_IMDS_AUTHORITY: &str = "169.254.169.254";
/// Default path of the App Service / Container Apps identity endpoint.
pub const DEFAULT_IDENTITY_PATH: &str = "/msi/token";
/// Default environment variable holding the App Service X-IDENTITY-HEADER value.
pub const DEFAULT_IDENTITY_HEADER_ENV: &str = "IDENTITY_HEADER";

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
    pub(super) fn fingerprint_part(&self) -> String {
        let selector = match &self.selector {
            None => "system".to_string(),
            Some(IdentitySelector::ClientId(v)) => format!("client_id:{v}"),
            Some(IdentitySelector::ObjectId(v)) => format!("object_id:{v}"),
            Some(IdentitySelector::ResourceId(v)) => format!("res_id:{v}"),
        };
        format!("{:?}|{selector}|{}", self.endpoint, self.path)
    }
}

// As written.
#[derive(Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawManagedIdentity {
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
}

/// `f`: the dotted name of a field of this credential. The endpoint's authority is the
/// credential's `authority_host` (checked by the caller under the name `authority`).
pub(super) fn validate(
    raw: RawManagedIdentity,
    f: &impl Fn(&str) -> String,
) -> Result<(CredentialKind, Common), ConfigError> {
    let RawManagedIdentity {
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
    } = raw;
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
    let selector = selector(
        f,
        [
            ("client_id", client_id),
            ("object_id", object_id),
            ("principal_id", principal_id),
            ("msi_res_id", msi_res_id),
            ("mi_res_id", mi_res_id),
        ],
    )?;
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
            let env =
                identity_header_env.unwrap_or_else(|| DEFAULT_IDENTITY_HEADER_ENV.to_string());
            check_env_name(&f("identity_header_env"), &env)?;
            (authority, path, Some(env))
        }
    };
    Ok((
        CredentialKind::ManagedIdentity(ManagedIdentity {
            endpoint,
            selector,
            path,
            identity_header_env,
        }),
        Common {
            token_cluster,
            authority_host: Some(authority),
            scope,
            timeout_ms,
        },
    ))
}

/// The user-assigned identity, from at most one of the selector fields (none: the
/// system-assigned identity).
fn selector(
    f: &impl Fn(&str) -> String,
    fields: [(&str, Option<String>); 5],
) -> Result<Option<IdentitySelector>, ConfigError> {
    let mut selectors = Vec::new();
    for (key, value) in fields {
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
    Ok(selectors.pop().map(|(_, s)| s))
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
