//! The `auth` section of the plugin configuration: JWT providers and API keys, parsed from
//! typed raw structs (unknown fields rejected) and validated into `AuthConfig`. Every error
//! names the dotted path of the offending field under the caller-given prefix. The JSON shape
//! is documented in docs/auth-config.md.

use super::api_key::{parse_sha256_hex, ApiKeys};
use super::jwks::KeySet;
use super::jwt::Alg;
use super::policy::{ClaimRequirement, ClaimRule, IssuerPattern};
use crate::config::error::{check_name, check_range, fnv1a64, ConfigError};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

pub const DEFAULT_JWKS_AUTHORITY: &str = "login.microsoftonline.com";
const DEFAULT_CLOCK_SKEW_S: u64 = 60;
const MAX_CLOCK_SKEW_S: u64 = 600;
const DEFAULT_JWKS_REFRESH_S: u64 = 3600;
const MIN_JWKS_REFRESH_S: u64 = 60;
/// Entra keys rotate; refetch at least daily (AZURE-WIRE.md §3).
const MAX_JWKS_REFRESH_S: u64 = 86_400;
const DEFAULT_JWKS_MIN_REFETCH_S: u64 = 30;
const DEFAULT_JWKS_TIMEOUT_MS: u64 = 5_000;
const MAX_JWKS_TIMEOUT_MS: u64 = 60_000;
const DEFAULT_WORKLOAD_CLAIMS: [&str; 2] = ["azp", "appid"];
/// Longest workload name (from config or from a token claim).
pub const MAX_WORKLOAD_LEN: usize = 256;

// ---------------------------------------------------------------------------------------------
// Raw (as written)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawAuthConfig {
    #[serde(default)]
    pub jwt_providers: BTreeMap<String, RawJwtProvider>,
    #[serde(default)]
    pub api_keys: Vec<RawApiKey>,
    /// Reject requests that present no credential (default true).
    #[serde(default)]
    pub required: Option<bool>,
    /// Verified mTLS peer identities (the URI SAN of the client certificate, e.g. Istio's
    /// `spiffe://cluster.local/ns/<ns>/sa/<sa>`) -> workload, for callers that present no
    /// token or key.
    #[serde(default)]
    pub mtls_peers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawJwtProvider {
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub issuers: Vec<String>,
    pub audiences: Vec<String>,
    pub jwks: RawJwksSource,
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    #[serde(default)]
    pub clock_skew_s: Option<u64>,
    #[serde(default)]
    pub required_claims: Vec<RawClaimRequirement>,
    #[serde(default)]
    pub tenants: Vec<String>,
    #[serde(default)]
    pub workload_claim: Option<OneOrMany>,
    #[serde(default)]
    pub jwks_refresh_s: Option<u64>,
    #[serde(default)]
    pub jwks_min_refetch_s: Option<u64>,
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Either `{"inline": <JWKS>}` or a remote source `{"cluster", "authority", "path"}` /
/// `{"cluster", "authority", "discovery_path"}`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawJwksSource {
    #[serde(default)]
    pub inline: Option<Value>,
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub discovery_path: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawClaimRequirement {
    pub claim: String,
    #[serde(default)]
    pub equals: Option<Value>,
    #[serde(default)]
    pub any_of: Option<Vec<String>>,
    #[serde(default)]
    pub all_of: Option<Vec<String>>,
}

#[derive(Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    pub sha256: String,
    pub workload: String,
}

impl std::fmt::Debug for RawApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RawApiKey {{ sha256: <redacted>, workload: {:?} }}",
            self.workload
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Validated
// ---------------------------------------------------------------------------------------------

/// Where a provider's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// Keys given in the configuration (canonical JWKS JSON, validated to hold a usable key).
    Inline(String),
    /// Fetched with `dispatch_http_call` through an Envoy cluster.
    Remote {
        cluster: String,
        /// `:authority` of the callout.
        authority: String,
        /// The JWKS path, or the OpenID configuration path when `discovery` is true.
        path: String,
        discovery: bool,
        timeout_ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtProvider {
    pub name: String,
    pub issuers: Vec<IssuerPattern>,
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    pub algorithms: Vec<Alg>,
    pub clock_skew_s: u64,
    pub required_claims: Vec<ClaimRequirement>,
    /// Allowed `tid` values, lowercase; empty = any.
    pub tenants: Vec<String>,
    /// Claims naming the workload, first present wins.
    pub workload_claims: Vec<String>,
    pub jwks_refresh_s: u64,
    pub jwks_min_refetch_s: u64,
}

impl JwtProvider {
    /// The fetch schedule of this provider's JWKS.
    pub fn jwks_schedule(&self) -> super::jwks::JwksSchedule {
        let fetch_timeout_ms = match &self.jwks {
            JwksSource::Remote { timeout_ms, .. } => *timeout_ms,
            JwksSource::Inline(_) => 0,
        };
        super::jwks::JwksSchedule {
            refresh_ms: self.jwks_refresh_s.saturating_mul(1000),
            min_refetch_ms: self.jwks_min_refetch_s.saturating_mul(1000),
            fetch_timeout_ms,
        }
    }

    /// A fingerprint of where the keys come from, for naming the shared-data slot: a config
    /// change that points the provider elsewhere never serves the old source's keys.
    pub fn jwks_fingerprint(&self) -> u64 {
        let text = match &self.jwks {
            JwksSource::Inline(json) => format!("inline|{json}"),
            JwksSource::Remote {
                cluster,
                authority,
                path,
                discovery,
                ..
            } => format!("remote|{cluster}|{authority}|{path}|{discovery}"),
        };
        fnv1a64(text.as_bytes())
    }

    /// The shared-data key holding this provider's `JwksState`.
    pub fn jwks_slot_key(&self) -> String {
        format!(
            "azure-llm-filter.jwks.{}.{:016x}",
            self.name,
            self.jwks_fingerprint()
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Sorted by name.
    pub providers: Vec<JwtProvider>,
    pub api_keys: ApiKeys,
    /// When false, a request without any credential passes as anonymous (a presented but
    /// invalid credential is still refused).
    pub required: bool,
    /// mTLS peer URI SAN -> workload.
    pub mtls_peers: BTreeMap<String, String>,
}

impl AuthConfig {
    /// Validates the raw `auth` section; `field_prefix` (e.g. `"auth"`) starts every error's
    /// field path.
    pub fn from_raw(raw: RawAuthConfig, field_prefix: &str) -> Result<AuthConfig, ConfigError> {
        let f = |rest: &str| -> String {
            match (field_prefix.is_empty(), rest.is_empty()) {
                (true, _) => rest.to_string(),
                (false, true) => field_prefix.to_string(),
                (false, false) => format!("{field_prefix}.{rest}"),
            }
        };
        let mut providers = Vec::with_capacity(raw.jwt_providers.len());
        for (name, p) in raw.jwt_providers {
            let field = f(&format!("jwt_providers.{name}"));
            providers.push(validate_provider(&field, name, p)?);
        }

        let mut api_keys = ApiKeys::default();
        for (i, k) in raw.api_keys.into_iter().enumerate() {
            let field = f(&format!("api_keys[{i}]"));
            let Some(hash) = parse_sha256_hex(&k.sha256) else {
                return Err(err(
                    format!("{field}.sha256"),
                    "must be the SHA-256 of the key as 64 hex digits (e.g. `printf %s \"$KEY\" | sha256sum`)",
                ));
            };
            check_workload(&format!("{field}.workload"), &k.workload)?;
            if !api_keys.insert(hash, k.workload) {
                return Err(err(
                    format!("{field}.sha256"),
                    "the same key hash is listed twice",
                ));
            }
        }

        for (peer, workload) in &raw.mtls_peers {
            let field = f(&format!("mtls_peers.{peer}"));
            let well_formed = peer.len() <= 2048
                && peer.contains("://")
                && peer.bytes().all(|b| b.is_ascii_graphic());
            if !well_formed {
                return Err(err(
                    field,
                    "must be a URI SAN such as spiffe://cluster.local/ns/<namespace>/sa/<service-account>",
                ));
            }
            check_workload(&field, workload)?;
        }

        let required = raw.required.unwrap_or(true);
        if required && providers.is_empty() && api_keys.is_empty() && raw.mtls_peers.is_empty() {
            return Err(err(
                f(""),
                "with required authentication, at least one of jwt_providers, api_keys or mtls_peers is needed",
            ));
        }
        Ok(AuthConfig {
            providers,
            api_keys,
            required,
            mtls_peers: raw.mtls_peers,
        })
    }

    pub fn provider_index(&self, name: &str) -> Option<usize> {
        self.providers.iter().position(|p| p.name == name)
    }
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        reason: reason.into(),
    }
}

fn validate_provider(
    field: &str,
    name: String,
    p: RawJwtProvider,
) -> Result<JwtProvider, ConfigError> {
    check_name(field, &name)?;

    let issuers = validate_issuers(field, p.issuer.as_ref(), &p.issuers)?;

    if p.audiences.is_empty() {
        return Err(err(
            format!("{field}.audiences"),
            "at least one audience is required (the API's client id and/or App ID URI)",
        ));
    }
    for (i, a) in p.audiences.iter().enumerate() {
        if a.is_empty() || a.len() > 512 || a.chars().any(char::is_control) {
            return Err(err(
                format!("{field}.audiences[{i}]"),
                "must be a non-empty string without control characters",
            ));
        }
    }

    let jwks = validate_jwks(&format!("{field}.jwks"), p.jwks)?;

    let algorithms = validate_algorithms(field, p.algorithms)?;

    let clock_skew_s = p.clock_skew_s.unwrap_or(DEFAULT_CLOCK_SKEW_S);
    check_range(
        &format!("{field}.clock_skew_s"),
        clock_skew_s,
        0,
        MAX_CLOCK_SKEW_S,
    )?;

    let mut required_claims = Vec::with_capacity(p.required_claims.len());
    for (i, rc) in p.required_claims.into_iter().enumerate() {
        required_claims.push(validate_claim(
            &format!("{field}.required_claims[{i}]"),
            rc,
        )?);
    }

    let tenants = validate_tenants(field, &p.tenants, &issuers)?;

    let workload_claims = validate_workload_claims(field, p.workload_claim)?;

    let jwks_refresh_s = p.jwks_refresh_s.unwrap_or(DEFAULT_JWKS_REFRESH_S);
    check_range(
        &format!("{field}.jwks_refresh_s"),
        jwks_refresh_s,
        MIN_JWKS_REFRESH_S,
        MAX_JWKS_REFRESH_S,
    )?;
    let jwks_min_refetch_s = p.jwks_min_refetch_s.unwrap_or(DEFAULT_JWKS_MIN_REFETCH_S);
    check_range(
        &format!("{field}.jwks_min_refetch_s"),
        jwks_min_refetch_s,
        1,
        jwks_refresh_s,
    )?;

    Ok(JwtProvider {
        name,
        issuers,
        audiences: p.audiences,
        jwks,
        algorithms,
        clock_skew_s,
        required_claims,
        tenants,
        workload_claims,
        jwks_refresh_s,
        jwks_min_refetch_s,
    })
}

/// `issuer` and/or `issuers`: at least one, each once.
fn validate_issuers(
    field: &str,
    issuer: Option<&String>,
    issuers: &[String],
) -> Result<Vec<IssuerPattern>, ConfigError> {
    let mut patterns = Vec::new();
    let listed = issuer
        .into_iter()
        .map(|i| (format!("{field}.issuer"), i))
        .chain(
            issuers
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("{field}.issuers[{i}]"), s)),
        );
    for (ifield, iss) in listed {
        let pattern = IssuerPattern::parse(iss).map_err(|reason| err(&ifield, reason))?;
        if patterns.contains(&pattern) {
            return Err(err(ifield, "issuer listed twice"));
        }
        patterns.push(pattern);
    }
    if patterns.is_empty() {
        return Err(err(
            format!("{field}.issuer"),
            "an issuer (or issuers) is required, e.g. https://login.microsoftonline.com/{tenant}/v2.0",
        ));
    }
    Ok(patterns)
}

/// The accepted signature algorithms (default RS256); never none or HMAC.
fn validate_algorithms(
    field: &str,
    algorithms: Option<Vec<String>>,
) -> Result<Vec<Alg>, ConfigError> {
    Ok(match algorithms {
        None => vec![Alg::RS256],
        Some(list) => {
            if list.is_empty() {
                return Err(err(
                    format!("{field}.algorithms"),
                    "at least one algorithm is required",
                ));
            }
            let mut algs = Vec::with_capacity(list.len());
            for (i, a) in list.iter().enumerate() {
                match Alg::from_name(a) {
                    Some(alg) => {
                        if !algs.contains(&alg) {
                            algs.push(alg);
                        }
                    }
                    None => {
                        return Err(err(
                            format!("{field}.algorithms[{i}]"),
                            format!(
                                "{a:?} is not supported; use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA (none and HMAC are never accepted)"
                            ),
                        ))
                    }
                }
            }
            algs
        }
    })
}

/// Allowed tenant ids (lowercased); required when an issuer is a `{tid}` template.
fn validate_tenants(
    field: &str,
    listed: &[String],
    issuers: &[IssuerPattern],
) -> Result<Vec<String>, ConfigError> {
    let mut tenants = Vec::with_capacity(listed.len());
    for (i, t) in listed.iter().enumerate() {
        if t.is_empty()
            || t.len() > 64
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(err(
                format!("{field}.tenants[{i}]"),
                "must be a tenant id (GUID)",
            ));
        }
        tenants.push(t.to_ascii_lowercase());
    }
    if tenants.is_empty() && issuers.iter().any(IssuerPattern::is_template) {
        return Err(err(
            format!("{field}.tenants"),
            "an issuer with {tid} accepts tokens from any tenant: list the allowed tenants",
        ));
    }
    Ok(tenants)
}

/// The claims that name the workload, tried in order (default azp, then appid).
fn validate_workload_claims(
    field: &str,
    workload_claim: Option<OneOrMany>,
) -> Result<Vec<String>, ConfigError> {
    let workload_claims: Vec<String> = match workload_claim {
        None => DEFAULT_WORKLOAD_CLAIMS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    };
    if workload_claims.is_empty() {
        return Err(err(
            format!("{field}.workload_claim"),
            "at least one claim is required",
        ));
    }
    for (i, c) in workload_claims.iter().enumerate() {
        check_claim_name(&format!("{field}.workload_claim[{i}]"), c)?;
    }
    Ok(workload_claims)
}

fn validate_jwks(field: &str, j: RawJwksSource) -> Result<JwksSource, ConfigError> {
    if let Some(inline) = j.inline {
        if j.cluster.is_some()
            || j.authority.is_some()
            || j.path.is_some()
            || j.discovery_path.is_some()
            || j.timeout_ms.is_some()
        {
            return Err(err(
                field,
                "give either inline or cluster/authority/path, not both",
            ));
        }
        let bytes = serde_json::to_vec(&inline).unwrap_or_default();
        let parsed =
            KeySet::parse(&bytes).map_err(|e| err(format!("{field}.inline"), e.as_str()))?;
        if !parsed.skipped.is_empty() {
            // Config is written by the operator: say what is wrong instead of dropping keys.
            return Err(err(
                format!("{field}.inline"),
                format!("unusable key: {}", parsed.skipped.join("; ")),
            ));
        }
        return Ok(JwksSource::Inline(parsed.canonical_json));
    }
    let Some(cluster) = j.cluster.filter(|c| !c.is_empty()) else {
        return Err(err(
            format!("{field}.cluster"),
            "name the Envoy cluster that reaches the JWKS host, or give the keys inline",
        ));
    };
    let authority = j
        .authority
        .unwrap_or_else(|| DEFAULT_JWKS_AUTHORITY.to_string());
    if authority.is_empty()
        || authority.len() > 253
        || !authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':')
    {
        return Err(err(
            format!("{field}.authority"),
            "must be a host name such as login.microsoftonline.com",
        ));
    }
    let (path, discovery, pfield) = match (j.path, j.discovery_path) {
        (Some(p), None) => (p, false, format!("{field}.path")),
        (None, Some(p)) => (p, true, format!("{field}.discovery_path")),
        (Some(_), Some(_)) => {
            return Err(err(
                format!("{field}.path"),
                "give either path or discovery_path, not both",
            ))
        }
        (None, None) => return Err(err(
            format!("{field}.path"),
            "the JWKS path (e.g. /{tenant}/discovery/v2.0/keys) or a discovery_path is required",
        )),
    };
    if !path.starts_with('/')
        || path.len() > 1024
        || path.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'#')
    {
        return Err(err(
            pfield,
            "must be an absolute path without spaces or control characters",
        ));
    }
    let timeout_ms = j.timeout_ms.unwrap_or(DEFAULT_JWKS_TIMEOUT_MS);
    check_range(
        &format!("{field}.timeout_ms"),
        timeout_ms,
        1,
        MAX_JWKS_TIMEOUT_MS,
    )?;
    Ok(JwksSource::Remote {
        cluster,
        authority: authority.to_ascii_lowercase(),
        path,
        discovery,
        timeout_ms,
    })
}

fn validate_claim(field: &str, rc: RawClaimRequirement) -> Result<ClaimRequirement, ConfigError> {
    check_claim_name(&format!("{field}.claim"), &rc.claim)?;
    let check_list = |name: &str, list: &[String]| -> Result<(), ConfigError> {
        if list.is_empty() {
            return Err(err(
                format!("{field}.{name}"),
                "must list at least one value",
            ));
        }
        Ok(())
    };
    let rule = match (rc.equals, rc.any_of, rc.all_of) {
        (Some(v), None, None) => {
            if !(v.is_string() || v.is_number() || v.is_boolean()) {
                return Err(err(
                    format!("{field}.equals"),
                    "must be a string, number or boolean",
                ));
            }
            ClaimRule::Equals(v)
        }
        (None, Some(list), None) => {
            check_list("any_of", &list)?;
            ClaimRule::AnyOf(list)
        }
        (None, None, Some(list)) => {
            check_list("all_of", &list)?;
            ClaimRule::AllOf(list)
        }
        _ => return Err(err(field, "give exactly one of equals, any_of, all_of")),
    };
    Ok(ClaimRequirement {
        claim: rc.claim,
        rule,
    })
}

fn check_claim_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(err(field, "must be a claim name"));
    }
    Ok(())
}

/// Workload names end up in logs, metrics and rate-limit keys.
pub(crate) fn is_valid_workload(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_WORKLOAD_LEN
        && name.bytes().all(|b| (0x21..0x7f).contains(&b))
}

fn check_workload(field: &str, name: &str) -> Result<(), ConfigError> {
    if !is_valid_workload(name) {
        return Err(err(
            field,
            "must be 1-256 printable ASCII characters without spaces",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::testkeys;
    use serde_json::json;

    fn parse(v: Value) -> Result<AuthConfig, ConfigError> {
        let raw: RawAuthConfig = serde_json::from_value(v).map_err(|e| ConfigError {
            field: "<serde>".into(),
            reason: e.to_string(),
        })?;
        AuthConfig::from_raw(raw, "auth")
    }

    fn entra() -> Value {
        json!({
            "issuer": "https://login.microsoftonline.com/11111111-1111-1111-1111-111111111111/v2.0",
            "audiences": ["api://llm-gateway"],
            "jwks": {"cluster": "entra", "path": "/11111111-1111-1111-1111-111111111111/discovery/v2.0/keys"}
        })
    }

    #[test]
    fn full_example_parses_with_defaults() {
        let c = parse(json!({
            "jwt_providers": {"entra": entra()},
            "api_keys": [{"sha256": "a".repeat(64), "workload": "foundry-agent"}]
        }))
        .unwrap();
        assert!(c.required);
        let p = &c.providers[0];
        assert_eq!(p.name, "entra");
        assert_eq!(p.algorithms, vec![Alg::RS256]);
        assert_eq!(p.clock_skew_s, 60);
        assert_eq!(p.workload_claims, vec!["azp", "appid"]);
        assert_eq!(p.jwks_refresh_s, 3600);
        assert_eq!(p.jwks_min_refetch_s, 30);
        assert_eq!(
            p.jwks,
            JwksSource::Remote {
                cluster: "entra".into(),
                authority: "login.microsoftonline.com".into(),
                path: "/11111111-1111-1111-1111-111111111111/discovery/v2.0/keys".into(),
                discovery: false,
                timeout_ms: 5000,
            }
        );
        assert_eq!(c.api_keys.len(), 1);
        assert!(p
            .jwks_slot_key()
            .starts_with("azure-llm-filter.jwks.entra."));
        assert_eq!(p.jwks_schedule().refresh_ms, 3_600_000);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let mut p = entra();
        p["audience"] = json!("x");
        assert!(parse(json!({"jwt_providers": {"e": p}})).is_err());
        assert!(parse(json!({"jwt_providers": {}, "bogus": 1})).is_err());
    }

    fn field_of(v: Value) -> String {
        parse(v).unwrap_err().field
    }

    #[test]
    fn errors_name_the_field() {
        let with = |k: &str, v: Value| {
            let mut p = entra();
            p[k] = v;
            json!({"jwt_providers": {"e": p}})
        };
        assert_eq!(
            field_of(with("audiences", json!([]))),
            "auth.jwt_providers.e.audiences"
        );
        assert_eq!(
            field_of(with("algorithms", json!(["RS256", "HS256"]))),
            "auth.jwt_providers.e.algorithms[1]"
        );
        assert_eq!(
            field_of(with("algorithms", json!(["none"]))),
            "auth.jwt_providers.e.algorithms[0]"
        );
        assert_eq!(
            field_of(with("clock_skew_s", json!(3600))),
            "auth.jwt_providers.e.clock_skew_s"
        );
        assert_eq!(
            field_of(with("required_claims", json!([{"claim": "roles"}]))),
            "auth.jwt_providers.e.required_claims[0]"
        );
        assert_eq!(
            field_of(with(
                "required_claims",
                json!([{"claim": "roles", "any_of": ["a"], "all_of": ["b"]}])
            )),
            "auth.jwt_providers.e.required_claims[0]"
        );
        assert_eq!(
            field_of(with(
                "required_claims",
                json!([{"claim": "roles", "any_of": []}])
            )),
            "auth.jwt_providers.e.required_claims[0].any_of"
        );
        assert_eq!(
            field_of(with(
                "required_claims",
                json!([{"claim": "x", "equals": [1]}])
            )),
            "auth.jwt_providers.e.required_claims[0].equals"
        );
        assert_eq!(
            field_of(with("tenants", json!(["not a guid"]))),
            "auth.jwt_providers.e.tenants[0]"
        );
        assert_eq!(
            field_of(with("jwks_refresh_s", json!(10))),
            "auth.jwt_providers.e.jwks_refresh_s"
        );
        assert_eq!(
            field_of(with("jwks_min_refetch_s", json!(7200))),
            "auth.jwt_providers.e.jwks_min_refetch_s"
        );
        assert_eq!(
            field_of(with("jwks", json!({"cluster": "c"}))),
            "auth.jwt_providers.e.jwks.path"
        );
        assert_eq!(
            field_of(with("jwks", json!({"cluster": "c", "path": "keys"}))),
            "auth.jwt_providers.e.jwks.path"
        );
        assert_eq!(
            field_of(with("jwks", json!({"path": "/k"}))),
            "auth.jwt_providers.e.jwks.cluster"
        );
        assert_eq!(
            field_of(with("jwks", json!({"inline": {"keys": []}}))),
            "auth.jwt_providers.e.jwks.inline"
        );
        assert_eq!(
            field_of(with(
                "jwks",
                json!({"inline": {"keys": []}, "cluster": "c"})
            )),
            "auth.jwt_providers.e.jwks"
        );
        assert_eq!(
            field_of(with("issuer", json!("not-a-url"))),
            "auth.jwt_providers.e.issuer"
        );
        assert_eq!(
            field_of(with("workload_claim", json!([]))),
            "auth.jwt_providers.e.workload_claim"
        );
        assert_eq!(
            field_of(json!({"jwt_providers": {"bad name": entra()}})),
            "auth.jwt_providers.bad name"
        );
        assert_eq!(
            field_of(json!({"api_keys": [{"sha256": "abc", "workload": "w"}]})),
            "auth.api_keys[0].sha256"
        );
        assert_eq!(
            field_of(json!({"api_keys": [{"sha256": "a".repeat(64), "workload": "has space"}]})),
            "auth.api_keys[0].workload"
        );
        assert_eq!(
            field_of(json!({"api_keys": [
                {"sha256": "a".repeat(64), "workload": "w"},
                {"sha256": "A".repeat(64), "workload": "v"}
            ]})),
            "auth.api_keys[1].sha256"
        );
        assert_eq!(field_of(json!({})), "auth");
    }

    #[test]
    fn optional_auth_without_methods_is_allowed() {
        let c = parse(json!({"required": false})).unwrap();
        assert!(!c.required);
        assert!(c.providers.is_empty());
    }

    #[test]
    fn v1_and_v2_issuers_and_templates() {
        let mut p = entra();
        p["issuers"] = json!(["https://sts.windows.net/11111111-1111-1111-1111-111111111111/"]);
        p["workload_claim"] = json!("oid");
        let c = parse(json!({"jwt_providers": {"e": p}})).unwrap();
        assert_eq!(c.providers[0].issuers.len(), 2);
        assert_eq!(c.providers[0].workload_claims, vec!["oid"]);

        let mut t = entra();
        t["issuer"] = json!("https://login.microsoftonline.com/{tid}/v2.0");
        assert_eq!(
            field_of(json!({"jwt_providers": {"e": t.clone()}})),
            "auth.jwt_providers.e.tenants"
        );
        t["tenants"] = json!(["11111111-1111-1111-1111-111111111111"]);
        assert!(parse(json!({"jwt_providers": {"e": t}})).is_ok());
    }

    #[test]
    fn inline_and_discovery_sources() {
        let mut p = entra();
        p["jwks"] = json!({"inline": {"keys": [testkeys::rsa_jwk("k1")]}});
        p["algorithms"] = json!(["RS256", "PS256", "ES256", "EdDSA"]);
        let c = parse(json!({"jwt_providers": {"e": p}})).unwrap();
        assert!(matches!(c.providers[0].jwks, JwksSource::Inline(_)));
        assert_eq!(c.providers[0].algorithms.len(), 4);

        let mut d = entra();
        d["jwks"] = json!({"cluster": "entra", "authority": "Login.MicrosoftOnline.com",
            "discovery_path": "/t/v2.0/.well-known/openid-configuration", "timeout_ms": 2000});
        let c = parse(json!({"jwt_providers": {"e": d}})).unwrap();
        assert!(matches!(
            &c.providers[0].jwks,
            JwksSource::Remote { discovery: true, authority, timeout_ms: 2000, .. }
                if authority == "login.microsoftonline.com"
        ));
    }
}
