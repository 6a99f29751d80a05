//! `workload_identity`: AKS workload identity (or any projected service-account token) without
//! a sidecar. A federated client credentials request whose assertion is the file named by
//! `AZURE_FEDERATED_TOKEN_FILE`, served by Envoy itself (an internal listener with a Lua
//! filter, envoy/aks-workload-identity.yaml) and fetched for every token request. Tenant, client
//! id and authority host default to the AKS webhook's variables, read from the VM's environment
//! when the configuration is applied; a missing one fails the token requests (503, the variable
//! named in the log), not the configuration.

use super::{check_nonempty_token, check_tenant, Common, Credential, CredentialKind};
use crate::config::error::{check_cluster, check_host, check_path, check_scope, ConfigError};
use crate::entra::workload_identity::{
    authority_host_from_env, check_id, cloud_of, EnvValue, DEFAULT_TOKEN_AUTHORITY,
    DEFAULT_TOKEN_CLUSTER, DEFAULT_TOKEN_PATH, ENV_AUTHORITY_HOST, ENV_CLIENT_ID, ENV_TENANT_ID,
    ENV_TOKEN_FILE, PUBLIC_TOKEN_EXCHANGE_AUDIENCE,
};
use serde::Deserialize;

// As written.
#[derive(Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawWorkloadIdentity {
    /// Default: `AZURE_TENANT_ID` of the Wasm VM.
    #[serde(default)]
    tenant_id: Option<String>,
    /// Default: `AZURE_CLIENT_ID` of the Wasm VM.
    #[serde(default)]
    client_id: Option<String>,
    token_cluster: String,
    /// Default: `AZURE_AUTHORITY_HOST` of the Wasm VM, else `login.microsoftonline.com`.
    #[serde(default)]
    authority_host: Option<String>,
    /// Default: by cloud (the authority host's).
    #[serde(default)]
    scope: Option<String>,
    /// The audience the projected token must carry. Default: by cloud.
    #[serde(default)]
    audience: Option<String>,
    /// Default `workload_identity_token`.
    #[serde(default)]
    assertion_cluster: Option<String>,
    /// Default `workload-identity.internal`.
    #[serde(default)]
    assertion_authority: Option<String>,
    /// Default `/token`.
    #[serde(default)]
    assertion_path: Option<String>,
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 120_000)))]
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// A validated `workload_identity` credential. `None` and `false`: from the environment (or
/// the cloud's default) when the configuration is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadIdentity {
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    /// The credential's `authority_host` was written (else the environment's, or the default).
    pub authority_host_given: bool,
    /// The credential's `scope` was written (else the cloud's).
    pub scope_given: bool,
    pub audience: Option<String>,
    pub assertion_cluster: String,
    pub assertion_authority: String,
    pub assertion_path: String,
}

impl WorkloadIdentity {
    pub(super) fn fingerprint_parts(&self) -> Vec<String> {
        vec![
            "workload_identity".into(),
            format!("{:?}", self.tenant_id),
            format!("{:?}", self.client_id),
            format!("{}{}", self.authority_host_given, self.scope_given),
            format!("{:?}", self.audience),
            self.assertion_cluster.clone(),
            self.assertion_authority.clone(),
            self.assertion_path.clone(),
        ]
    }
}

/// `f`: the dotted name of a field of this credential.
pub(super) fn validate(
    raw: RawWorkloadIdentity,
    f: &impl Fn(&str) -> String,
) -> Result<(CredentialKind, Common), ConfigError> {
    let RawWorkloadIdentity {
        tenant_id,
        client_id,
        token_cluster,
        authority_host,
        scope,
        audience,
        assertion_cluster,
        assertion_authority,
        assertion_path,
        timeout_ms,
    } = raw;
    if let Some(t) = &tenant_id {
        check_tenant(&f("tenant_id"), t)?;
    }
    if let Some(c) = &client_id {
        check_nonempty_token(&f("client_id"), c)?;
    }
    if let Some(a) = &audience {
        check_scope(&f("audience"), a)?;
    }
    let assertion_cluster = assertion_cluster.unwrap_or_else(|| DEFAULT_TOKEN_CLUSTER.into());
    check_cluster(&f("assertion_cluster"), &assertion_cluster)?;
    if assertion_cluster == token_cluster {
        return Err(ConfigError::new(
            f("assertion_cluster"),
            "must differ from token_cluster (the token route is not Entra)",
        ));
    }
    let assertion_authority = assertion_authority.unwrap_or_else(|| DEFAULT_TOKEN_AUTHORITY.into());
    check_host(&f("assertion_authority"), &assertion_authority)?;
    let assertion_path = assertion_path.unwrap_or_else(|| DEFAULT_TOKEN_PATH.into());
    check_path(&f("assertion_path"), &assertion_path, false)?;
    Ok((
        CredentialKind::WorkloadIdentity(WorkloadIdentity {
            tenant_id,
            client_id,
            authority_host_given: authority_host.is_some(),
            scope_given: scope.is_some(),
            audience,
            assertion_cluster,
            assertion_authority,
            assertion_path,
        }),
        Common {
            token_cluster,
            authority_host,
            scope,
            timeout_ms,
        },
    ))
}

/// What a `workload_identity` credential resolved from the VM's environment at configure time.
/// Holds no secret (ids and host names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedWorkloadIdentity {
    pub tenant_id: EnvValue,
    pub client_id: EnvValue,
    pub authority_host: EnvValue,
    pub scope: String,
    /// Audiences the projected token may carry.
    pub audiences: Vec<String>,
    /// `AZURE_FEDERATED_TOKEN_FILE` when the VM has it (only to name the file in log lines).
    pub token_file: Option<String>,
}

/// Fills in what the credential leaves to the environment (`lookup`: the VM's variables).
pub fn resolve(
    cred: &Credential,
    wi: &WorkloadIdentity,
    lookup: &impl Fn(&str) -> Option<String>,
) -> ResolvedWorkloadIdentity {
    let tenant_id = EnvValue::resolve(wi.tenant_id.as_deref(), ENV_TENANT_ID, lookup, check_id);
    let client_id = EnvValue::resolve(wi.client_id.as_deref(), ENV_CLIENT_ID, lookup, check_id);
    let given_host = wi
        .authority_host_given
        .then_some(cred.authority_host.as_str());
    let authority_host = match EnvValue::resolve(
        given_host,
        ENV_AUTHORITY_HOST,
        lookup,
        authority_host_from_env,
    ) {
        // The Azure SDKs' default too.
        EnvValue::Missing(_) => EnvValue::Value(cred.authority_host.clone()),
        other => other,
    };
    let cloud = cloud_of(match &authority_host {
        EnvValue::Value(h) => h,
        _ => &cred.authority_host,
    });
    let scope = if wi.scope_given {
        cred.scope.clone()
    } else {
        cloud.scope.to_string()
    };
    let audiences = match &wi.audience {
        Some(a) => vec![a.clone()],
        None => {
            // Kubernetes federated credentials commonly keep the public audience in sovereign
            // clouds too.
            let mut a = vec![cloud.token_exchange_audience.to_string()];
            if cloud.token_exchange_audience != PUBLIC_TOKEN_EXCHANGE_AUDIENCE {
                a.push(PUBLIC_TOKEN_EXCHANGE_AUDIENCE.to_string());
            }
            a
        }
    };
    let token_file = lookup(ENV_TOKEN_FILE).filter(|v| !v.trim().is_empty());
    ResolvedWorkloadIdentity {
        tenant_id,
        client_id,
        authority_host,
        scope,
        audiences,
        token_file,
    }
}
