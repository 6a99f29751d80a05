//! Caller authentication: who is calling, before anything leaves for Azure.
//!
//! Plain Rust, no proxy-wasm: the host layer feeds it header values, JWKS bodies and the
//! clock. What a request uses, in order:
//!
//! 1. `Authenticator::new(config)` once per worker per configuration (holds the parsed keys
//!    and the verified-token cache).
//! 2. Per remote JWT provider, the JWKS lives in shared data as a [`jwks::JwksState`] under
//!    [`config::JwtProvider::jwks_slot_key`]. On tick (and on `UnknownKid`, rate-limited by
//!    [`jwks::JwksState::may_refetch_for_unknown_kid`]) the host takes the lease
//!    ([`jwks::JwksState::needs_refresh`], `with_lease`), dispatches
//!    [`jwks_fetch_request`], and applies `on_fetch_success` / `on_fetch_failure` (or, for a
//!    discovery answer, [`discovery_location`] then `on_discovered` and a second callout).
//!    Each worker calls [`Authenticator::install_jwks`] with the slot it read; it re-parses
//!    only when the slot's generation changed.
//! 3. Per request: [`Authenticator::authenticate`] with every `authorization` value and every
//!    `api-key` value; it runs [`extract_credentials`], the API-key lookup or the cache and
//!    [`jwt::verify_token`]. `Ok(Some(caller))` names the workload; `Err(e)` is answered with
//!    `e.status()`, `e.to_filter_error().body()` and `e.response_headers()` (which carry
//!    `WWW-Authenticate`).

pub mod api_key;
pub mod cache;
pub mod config;
mod error;
pub mod jwks;
pub mod jwt;
pub mod policy;
pub mod rsa;

#[cfg(test)]
mod testkeys;
#[cfg(test)]
mod tests;

pub use config::{AuthConfig, JwksSource, JwtProvider, RawAuthConfig};
pub use error::AuthError;

use cache::VerifiedCache;
use jwks::{JwksError, JwksLocation, JwksState, KeySet};
use policy::IssuerPattern;

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Jwt,
    ApiKey,
    /// The verified client certificate of an mTLS connection (Istio peer identity).
    MtlsPeer,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The workload name: the configured workload claim of the token (default `azp`, then
    /// `appid`), or the workload an API key maps to.
    pub workload: String,
    /// The JWT provider's name, or `"api_key"`.
    pub provider: String,
    pub method: AuthMethod,
    /// The token's `tid`, when present.
    pub tenant: Option<String>,
    /// 16 hex digits of SHA-256 of `sub`, for logs (the subject itself is not kept).
    pub subject_hash: Option<String>,
    /// The token's `exp` (Unix seconds).
    pub exp_s: Option<u64>,
}

/// The credential a request presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented<'a> {
    None,
    Bearer(&'a str),
    ApiKey(&'a str),
}

/// Picks the one credential of a request from all its `authorization` values and all its
/// api-key header values (the host decides which headers count: `api-key` and `x-api-key`).
/// The scheme is `Bearer`, any case.
///
/// The official SDKs send keys in their own ways, and the filter takes each as it comes:
/// `OpenAI(api_key=...)` and `Anthropic(api_key=...)` send `Authorization: Bearer <key>`,
/// `AnthropicFoundry` sends the key as both `x-api-key` and `api-key`, `azure-ai-inference`
/// as both `Authorization: Bearer` and `api-key`. So:
///
/// - a Bearer value is a JWT when it has a `.` (a JWS always has two); one without is an
///   API-key candidate (looked up like an `api-key` value, never forwarded either);
/// - several headers carrying the *same* key are one credential; different keys, a JWT next to
///   anything else, or two values joined with a comma by a proxy are `multiple_credentials`.
pub fn extract_credentials<'a>(
    authorization_values: &[&'a str],
    api_key_values: &[&'a str],
) -> Result<Presented<'a>, AuthError> {
    let mut jwt = None;
    let mut key: Option<&'a str> = None;
    let mut credentials = 0usize;
    for value in authorization_values {
        let (token, has_dot) = parse_bearer(value)?;
        if has_dot {
            jwt = Some(token);
            credentials += 1;
        } else {
            same_key(&mut key, token)?;
        }
    }
    for value in api_key_values {
        same_key(&mut key, checked_api_key(value)?)?;
    }
    credentials += usize::from(key.is_some());
    match (jwt, key) {
        _ if credentials > 1 => Err(AuthError::MultipleCredentials),
        (Some(token), None) => Ok(Presented::Bearer(token)),
        (None, Some(key)) => Ok(Presented::ApiKey(key)),
        _ => Ok(Presented::None),
    }
}

/// Records an API-key candidate: the first one, or the same key again.
fn same_key<'a>(seen: &mut Option<&'a str>, candidate: &'a str) -> Result<(), AuthError> {
    match seen {
        Some(key) if *key != candidate => Err(AuthError::MultipleCredentials),
        _ => {
            *seen = Some(candidate);
            Ok(())
        }
    }
}

/// An `api-key` / `x-api-key` value: trimmed, printable ASCII, bounded.
fn checked_api_key(value: &str) -> Result<&str, AuthError> {
    let key = value.trim_matches(|c| c == ' ' || c == '\t');
    if key.len() > api_key::MAX_API_KEY_BYTES {
        return Err(AuthError::TooLarge);
    }
    if key.contains(',') {
        return Err(AuthError::MultipleCredentials);
    }
    if key.is_empty() || key.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        return Err(AuthError::InvalidApiKey);
    }
    Ok(key)
}

/// The bytes of an RFC 6750 b64token (a JWS uses only the base64url alphabet and dots).
const B64TOKEN: [bool; 256] = {
    // Evaluated at compile time.
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=');
        b += 1;
    }
    t
};

/// The token of a `Bearer` value, and whether it has a `.` (a JWT). One pass over the token
/// (this runs for every request): a comma anywhere makes any malformed value
/// `multiple_credentials` (two values a proxy joined), and a well-formed one has none.
fn parse_bearer(value: &str) -> Result<(&str, bool), AuthError> {
    // Room for the scheme and some spaces on top of the largest token.
    if value.len() > jwt::MAX_TOKEN_BYTES + 64 {
        return Err(AuthError::TooLarge);
    }
    bearer_token(value).map_err(|e| {
        if value.contains(',') {
            AuthError::MultipleCredentials
        } else {
            e
        }
    })
}

fn bearer_token(value: &str) -> Result<(&str, bool), AuthError> {
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    let (scheme, rest) = match value.find([' ', '\t']) {
        Some(i) => (value.get(..i).unwrap_or(""), value.get(i..).unwrap_or("")),
        None => (value, ""),
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        if value.is_empty() {
            return Err(AuthError::Malformed("The Authorization header is empty."));
        }
        return Err(AuthError::UnsupportedScheme);
    }
    let token = rest.trim_start_matches([' ', '\t']);
    if token.is_empty() {
        return Err(AuthError::Malformed(
            "The Authorization header has no token.",
        ));
    }
    let mut has_dot = false;
    for &b in token.as_bytes() {
        has_dot |= b == b'.';
        if !B64TOKEN.get(usize::from(b)).copied().unwrap_or(false) {
            return Err(AuthError::Malformed(
                "The bearer token contains characters a token cannot have.",
            ));
        }
    }
    if token.len() > jwt::MAX_TOKEN_BYTES {
        return Err(AuthError::TooLarge);
    }
    Ok((token, has_dot))
}

/// A JWKS or discovery callout to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksRequest {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout_ms: u64,
    /// True for the OpenID configuration (answer with [`discovery_location`]); false for the
    /// JWKS itself (answer with `JwksState::on_fetch_success`).
    pub discovery: bool,
}

/// The callout that fetches a remote provider's keys given its shared state: the discovery
/// document first when discovery is configured and the JWKS location is not known yet.
/// `None` for inline providers.
pub fn jwks_fetch_request(provider: &JwtProvider, state: &JwksState) -> Option<JwksRequest> {
    let JwksSource::Remote {
        cluster,
        authority,
        path,
        discovery,
        timeout_ms,
    } = &provider.jwks
    else {
        return None;
    };
    let (authority, path, discovery) = match (discovery, &state.discovered) {
        (true, Some(loc)) => (loc.authority.clone(), loc.path.clone(), false),
        (true, None) => (authority.clone(), path.clone(), true),
        (false, _) => (authority.clone(), path.clone(), false),
    };
    Some(JwksRequest {
        cluster: cluster.clone(),
        authority,
        path,
        timeout_ms: *timeout_ms,
        discovery,
    })
}

/// Reads the JWKS location from a provider's discovery answer (same host as configured; the
/// document's issuer must be one of the provider's exact issuers unless it uses `{tid}`).
pub fn discovery_location(
    provider: &JwtProvider,
    body: &[u8],
) -> Result<JwksLocation, &'static str> {
    let JwksSource::Remote { authority, .. } = &provider.jwks else {
        return Err("provider has inline keys");
    };
    let expected: Vec<&str> = if provider.issuers.iter().any(IssuerPattern::is_template) {
        Vec::new()
    } else {
        provider
            .issuers
            .iter()
            .filter_map(|i| match i {
                IssuerPattern::Exact(s) => Some(s.as_str()),
                IssuerPattern::Template { .. } => None,
            })
            .collect()
    };
    jwks::parse_discovery(body, authority, &expected)
}

/// Per-worker authentication state: the configuration, each provider's parsed keys and the
/// verified-token cache.
#[derive(Debug, Clone)]
pub struct Authenticator {
    config: AuthConfig,
    keys: Vec<KeySet>,
    generations: Vec<Option<u64>>,
    cache: VerifiedCache,
}

impl Authenticator {
    pub fn new(config: AuthConfig) -> Self {
        Self::with_cache_capacity(config, cache::DEFAULT_CAPACITY)
    }

    pub fn with_cache_capacity(config: AuthConfig, capacity: usize) -> Self {
        let keys = config
            .providers
            .iter()
            .map(|p| match &p.jwks {
                // Validated at configuration time; an error here leaves the set empty.
                JwksSource::Inline(json) => KeySet::parse(json.as_bytes())
                    .map(|parsed| parsed.keys)
                    .unwrap_or_default(),
                JwksSource::Remote { .. } => KeySet::default(),
            })
            .collect();
        let generations = vec![None; config.providers.len()];
        Authenticator {
            config,
            keys,
            generations,
            cache: VerifiedCache::new(capacity),
        }
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// True when provider `provider` has keys to verify with.
    pub fn has_keys(&self, provider: usize) -> bool {
        self.keys.get(provider).is_some_and(|k| !k.is_empty())
    }

    /// Installs a provider's keys from its shared state; parses only when the generation
    /// changed. Ok(true) when new keys were installed. Tokens cached under keys that the new
    /// set no longer has are forgotten.
    pub fn install_jwks(&mut self, provider: usize, state: &JwksState) -> Result<bool, JwksError> {
        if !state.has_keys() || self.generations.get(provider) == Some(&Some(state.generation)) {
            return Ok(false);
        }
        let parsed = KeySet::parse(state.keys.as_bytes())?;
        self.install_keys(provider, state.generation, parsed.keys);
        Ok(true)
    }

    /// Installs keys this worker parsed itself (after its own fetch), under the generation of
    /// the state it wrote.
    pub fn install_keys(&mut self, provider: usize, generation: u64, keys: KeySet) {
        if let (Some(slot), Some(g)) = (
            self.keys.get_mut(provider),
            self.generations.get_mut(provider),
        ) {
            self.cache.retain_keys(provider, &keys);
            *slot = keys;
            *g = Some(generation);
        }
    }

    /// Authenticates one request. `Ok(None)`: no credential and authentication is optional.
    /// `mtls_peer`: the URI SAN of the connection's verified client certificate, if any; it
    /// names the workload only when the request presents no token or key.
    pub fn authenticate(
        &mut self,
        authorization_values: &[&str],
        api_key_values: &[&str],
        mtls_peer: Option<&str>,
        now_ms: u64,
    ) -> Result<Option<Caller>, AuthError> {
        match extract_credentials(authorization_values, api_key_values)? {
            Presented::None => {
                if let Some(workload) = mtls_peer.and_then(|p| self.config.mtls_peers.get(p)) {
                    return Ok(Some(Caller {
                        workload: workload.clone(),
                        provider: "mtls".to_string(),
                        method: AuthMethod::MtlsPeer,
                        tenant: None,
                        subject_hash: None,
                        exp_s: None,
                    }));
                }
                if self.config.required {
                    Err(AuthError::MissingToken)
                } else {
                    Ok(None)
                }
            }
            Presented::ApiKey(key) => match self.config.api_keys.lookup(key) {
                Some(workload) => Ok(Some(Caller {
                    workload: workload.to_string(),
                    provider: "api_key".to_string(),
                    method: AuthMethod::ApiKey,
                    tenant: None,
                    subject_hash: None,
                    exp_s: None,
                })),
                None => Err(AuthError::InvalidApiKey),
            },
            Presented::Bearer(token) => self.verify_bearer(token, now_ms).map(Some),
        }
    }

    /// Verifies a bearer token, through the cache.
    pub fn verify_bearer(&mut self, token: &str, now_ms: u64) -> Result<Caller, AuthError> {
        if token.len() > jwt::MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        if let Some(caller) = self.cache.get(token, now_ms) {
            return Ok(caller);
        }
        let v = jwt::verify_token(&self.config.providers, &self.keys, token, now_ms / 1000)?;
        self.cache
            .insert(token, v.caller.clone(), v.exp_s, v.provider, v.kid, now_ms);
        Ok(v.caller)
    }

    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }
}
