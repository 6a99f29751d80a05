//! Entra ID token requests and responses (wire formats in ../shared/AZURE-WIRE.md section 2).
//!
//! Building requests and reading answers are pure functions; the host layer only sends each
//! `CalloutRequest` through `dispatch_http_call` and feeds status, `Retry-After` and body back
//! to `TokenFetch::on_response` until it says `Done`.
//!
//! | credential kind | callouts |
//! |---|---|
//! | `client_secret` | `POST /{tenant}/oauth2/v2.0/token` with `client_secret` |
//! | `client_certificate` | same, with a `client_assertion` JWT the filter signs (`assertion`) |
//! | `managed_identity` | `GET` IMDS or the App Service identity endpoint (`managed_identity`) |
//! | `federated`, HTTP source | `GET` the assertion endpoint (`federated`), then the token endpoint |
//! | `federated`, managed identity | managed identity token for `api://AzureADTokenExchange`, then the token endpoint of the customer's tenant with it as `client_assertion` |
//!
//! Secrets, private keys, assertions and tokens never appear in Debug output, in a
//! `TokenFailure` or in any message built here.

pub mod assertion;
pub mod credential;
pub mod federated;
pub mod managed_identity;

use credential::{
    AssertionResponse, AssertionSource, Credential, CredentialKind, ManagedIdentityEndpoint,
    ResolvedSecret,
};
use std::fmt;

/// `client_assertion_type` for JWT client assertions (RFC 7523).
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Longest description kept from an error answer.
const MAX_DESCRIPTION: usize = 300;
/// Longest access token accepted (it goes into a request header).
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER_S: u64 = 3600;

/// An HTTP request for an Envoy cluster callout. Its Debug output shows header names and the
/// body length only (the body and headers may carry a secret or an assertion).
#[derive(Clone, PartialEq, Eq)]
pub struct CalloutRequest {
    pub cluster: String,
    pub method: &'static str,
    pub authority: String,
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u64,
}

impl fmt::Debug for CalloutRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| *k).collect();
        f.debug_struct("CalloutRequest")
            .field("cluster", &self.cluster)
            .field("method", &self.method)
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("headers", &names)
            .field("body_len", &self.body.len())
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

impl CalloutRequest {
    /// Headers as the proxy-wasm host wants them, pseudo-headers first.
    pub fn host_headers(&self) -> Vec<(&str, &str)> {
        let mut h: Vec<(&str, &str)> = vec![
            (":method", self.method),
            (":path", self.path.as_str()),
            (":authority", self.authority.as_str()),
        ];
        h.extend(self.headers.iter().map(|(k, v)| (*k, v.as_str())));
        h
    }
}

/// How the client proves itself to the token endpoint.
enum ClientAuth<'a> {
    Secret(&'a str),
    Assertion(&'a str),
}

/// A request for a token from one tenant's token endpoint, without the client's proof.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Exchange {
    cluster: String,
    authority_host: String,
    tenant_id: String,
    client_id: String,
    scope: String,
    timeout_ms: u64,
}

impl Exchange {
    fn new(cred: &Credential, tenant_id: &str, client_id: &str) -> Exchange {
        Exchange {
            cluster: cred.token_cluster.clone(),
            authority_host: cred.authority_host.clone(),
            tenant_id: tenant_id.to_string(),
            client_id: client_id.to_string(),
            scope: cred.scope.clone(),
            timeout_ms: cred.timeout_ms,
        }
    }

    fn path(&self) -> String {
        format!("/{}/oauth2/v2.0/token", self.tenant_id)
    }

    /// The token endpoint URL, the `aud` of a client assertion.
    fn audience(&self) -> String {
        format!("https://{}{}", self.authority_host, self.path())
    }

    /// `POST /{tenant}/oauth2/v2.0/token`, client credentials grant, form-encoded.
    fn request(&self, auth: ClientAuth<'_>) -> CalloutRequest {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials")
            .append_pair("client_id", &self.client_id)
            .append_pair("scope", &self.scope);
        match auth {
            ClientAuth::Secret(secret) => {
                form.append_pair("client_secret", secret);
            }
            ClientAuth::Assertion(jwt) => {
                form.append_pair("client_assertion_type", CLIENT_ASSERTION_TYPE)
                    .append_pair("client_assertion", jwt);
            }
        }
        CalloutRequest {
            cluster: self.cluster.clone(),
            method: "POST",
            authority: self.authority_host.clone(),
            path: self.path(),
            headers: vec![
                (
                    "content-type",
                    "application/x-www-form-urlencoded".to_string(),
                ),
                ("accept", "application/json".to_string()),
            ],
            body: form.finish().into_bytes(),
            timeout_ms: self.timeout_ms,
        }
    }
}

/// One credential's token fetch, which may take several callouts (a federated credential first
/// gets its assertion, then exchanges it). The host sends each request and feeds the answer back
/// until the fetch is done. Holds no secret: the assertion of the first step goes straight into
/// the second request.
#[derive(Debug)]
pub struct TokenFetch {
    stage: Stage,
}

#[derive(Debug)]
enum Stage {
    /// Waiting for the answer that carries the access token.
    Token(Answerer),
    /// Waiting for the assertion; then exchange it at the token endpoint.
    Assertion {
        from: AssertionFrom,
        exchange: Exchange,
    },
    Finished,
}

#[derive(Debug, Clone, Copy)]
enum Answerer {
    Entra,
    ManagedIdentity(ManagedIdentityEndpoint),
}

#[derive(Debug)]
enum AssertionFrom {
    Endpoint(AssertionResponse),
    ManagedIdentity(ManagedIdentityEndpoint),
}

/// What to do after an answer.
#[derive(Debug)]
pub enum FetchStep {
    Next(CalloutRequest),
    Done(Result<TokenGrant, TokenFailure>),
}

impl TokenFetch {
    /// The first request of a fetch. `now_s`: Unix seconds (assertions carry timestamps).
    pub fn start(
        cred: &Credential,
        secret: &ResolvedSecret,
        now_s: u64,
    ) -> Result<(TokenFetch, CalloutRequest), TokenFailure> {
        let fetch = |stage| TokenFetch { stage };
        match (&cred.kind, secret) {
            (
                CredentialKind::ClientSecret {
                    tenant_id,
                    client_id,
                    ..
                },
                ResolvedSecret::ClientSecret(secret),
            ) => Ok((
                fetch(Stage::Token(Answerer::Entra)),
                Exchange::new(cred, tenant_id, client_id).request(ClientAuth::Secret(secret)),
            )),
            (
                CredentialKind::ClientCertificate {
                    tenant_id,
                    client_id,
                    ..
                },
                ResolvedSecret::SigningKey(key),
            ) => {
                let exchange = Exchange::new(cred, tenant_id, client_id);
                let jwt = key
                    .sign_assertion(&exchange.audience(), client_id, now_s)
                    .map_err(|why| TokenFailure {
                        status: 0,
                        code: "assertion_signing_failed".into(),
                        description: why,
                        retry_after_ms: None,
                    })?;
                Ok((
                    fetch(Stage::Token(Answerer::Entra)),
                    exchange.request(ClientAuth::Assertion(&jwt)),
                ))
            }
            (
                CredentialKind::ManagedIdentity(identity),
                ResolvedSecret::ManagedIdentity { identity_header },
            ) => {
                let req = managed_identity::request(
                    identity,
                    &cred.token_cluster,
                    &cred.authority_host,
                    managed_identity::resource_for_scope(&cred.scope),
                    identity_header.as_deref(),
                    cred.timeout_ms,
                )?;
                Ok((
                    fetch(Stage::Token(Answerer::ManagedIdentity(identity.endpoint))),
                    req,
                ))
            }
            (
                CredentialKind::Federated {
                    tenant_id,
                    client_id,
                    assertion:
                        AssertionSource::Http {
                            cluster,
                            authority,
                            path,
                            response,
                            ..
                        },
                },
                ResolvedSecret::AssertionEndpoint { authorization },
            ) => Ok((
                fetch(Stage::Assertion {
                    from: AssertionFrom::Endpoint(response.clone()),
                    exchange: Exchange::new(cred, tenant_id, client_id),
                }),
                federated::assertion_request(
                    cluster,
                    authority,
                    path,
                    authorization.as_deref(),
                    cred.timeout_ms,
                ),
            )),
            (
                CredentialKind::Federated {
                    tenant_id,
                    client_id,
                    assertion:
                        AssertionSource::ManagedIdentity {
                            identity,
                            cluster,
                            authority,
                            timeout_ms,
                            audience,
                            ..
                        },
                },
                ResolvedSecret::ManagedIdentity { identity_header },
            ) => {
                let req = managed_identity::request(
                    identity,
                    cluster,
                    authority,
                    audience,
                    identity_header.as_deref(),
                    *timeout_ms,
                )?;
                Ok((
                    fetch(Stage::Assertion {
                        from: AssertionFrom::ManagedIdentity(identity.endpoint),
                        exchange: Exchange::new(cred, tenant_id, client_id),
                    }),
                    req,
                ))
            }
            _ => Err(TokenFailure::internal(
                "the resolved secret does not match the credential kind",
            )),
        }
    }

    /// Feeds one callout answer (`status` None: no answer at all: timeout, reset, ...).
    pub fn on_response(
        &mut self,
        status: Option<u32>,
        retry_after: Option<&str>,
        body: &[u8],
        now_s: u64,
    ) -> FetchStep {
        match std::mem::replace(&mut self.stage, Stage::Finished) {
            Stage::Finished => FetchStep::Done(Err(TokenFailure::internal(
                "an answer came for a token fetch that had already finished",
            ))),
            Stage::Token(answerer) => {
                let result = match (answerer, status) {
                    (Answerer::Entra, None) => Err(TokenFailure::callout_failed(
                        "no response from the token endpoint (timeout, connection failure or reset)",
                    )),
                    (Answerer::ManagedIdentity(endpoint), None) => {
                        Err(TokenFailure::callout_failed(&format!(
                            "no response from the managed identity endpoint ({}): timeout, \
                             connection failure or reset",
                            endpoint.label()
                        )))
                    }
                    (Answerer::Entra, Some(status)) => {
                        parse_token_response(status, retry_after, body, now_s)
                    }
                    (Answerer::ManagedIdentity(endpoint), Some(status)) => {
                        managed_identity::parse_response(endpoint, status, retry_after, body, now_s)
                    }
                };
                FetchStep::Done(result)
            }
            Stage::Assertion { from, exchange } => {
                let assertion = match (&from, status) {
                    (AssertionFrom::Endpoint(_), None) => Err(TokenFailure::callout_failed(
                        "no response from the assertion endpoint (timeout, connection failure or reset)",
                    )),
                    (AssertionFrom::ManagedIdentity(endpoint), None) => {
                        Err(TokenFailure::callout_failed(&format!(
                            "no response from the managed identity endpoint ({}) for the \
                             federated assertion: timeout, connection failure or reset",
                            endpoint.label()
                        )))
                    }
                    (AssertionFrom::Endpoint(response), Some(status)) => {
                        federated::extract_assertion(response, status, retry_after, body)
                    }
                    (AssertionFrom::ManagedIdentity(endpoint), Some(status)) => {
                        managed_identity::parse_response(*endpoint, status, retry_after, body, now_s)
                            .map(|grant| grant.access_token)
                            .map_err(|f| f.in_step("federated assertion (managed identity token)"))
                    }
                };
                match assertion {
                    Ok(jwt) => {
                        self.stage = Stage::Token(Answerer::Entra);
                        FetchStep::Next(exchange.request(ClientAuth::Assertion(&jwt)))
                    }
                    Err(failure) => FetchStep::Done(Err(failure)),
                }
            }
        }
    }
}

/// A token Entra granted. Debug output hides the token.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenGrant {
    pub access_token: String,
    pub expires_in_s: u64,
}

impl fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenGrant {{ expires_in_s: {} }}", self.expires_in_s)
    }
}

/// Why no token came back. Safe to log: it holds codes and the endpoint's description (with
/// anything shaped like a JWT removed), never the request (secret, assertion) or a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFailure {
    /// HTTP status, or 0 when the callout itself failed.
    pub status: u32,
    /// `invalid_client`, `AADSTS7000215`, `callout_failed`, ...
    pub code: String,
    pub description: String,
    pub retry_after_ms: Option<u64>,
}

impl TokenFailure {
    pub fn summary(&self) -> String {
        if self.status == 0 {
            format!("{}: {}", self.code, self.description)
        } else {
            format!("HTTP {} {}: {}", self.status, self.code, self.description)
        }
    }

    pub fn callout_failed(reason: &str) -> TokenFailure {
        TokenFailure {
            status: 0,
            code: "callout_failed".into(),
            description: reason.into(),
            retry_after_ms: None,
        }
    }

    pub fn internal(reason: &str) -> TokenFailure {
        TokenFailure {
            status: 0,
            code: "internal_error".into(),
            description: reason.into(),
            retry_after_ms: None,
        }
    }

    /// Says which step of a multi-callout fetch failed.
    fn in_step(mut self, step: &str) -> TokenFailure {
        self.description = format!("{step}: {}", self.description);
        self
    }
}

/// `Retry-After` in seconds (HTTP dates are not used by these endpoints), capped.
pub(crate) fn retry_after_ms(header: Option<&str>) -> Option<u64> {
    header
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| s.min(MAX_RETRY_AFTER_S).saturating_mul(1000))
}

/// Reads a token endpoint's answer. `retry_after` is the raw `Retry-After` header, if any;
/// `now_s` (Unix seconds) turns an absolute `expires_on` into a lifetime.
pub fn parse_token_response(
    status: u32,
    retry_after: Option<&str>,
    body: &[u8],
    now_s: u64,
) -> Result<TokenGrant, TokenFailure> {
    let told = retry_after_ms(retry_after);
    if status != 200 {
        return Err(error_from_body(status, body, told));
    }
    parse_success(status, body, now_s, told)
}

/// A success answer: Entra's JSON numbers, or IMDS / App Service strings.
pub(crate) fn parse_success(
    status: u32,
    body: &[u8],
    now_s: u64,
    retry_after_ms: Option<u64>,
) -> Result<TokenGrant, TokenFailure> {
    let malformed = |why: &str| TokenFailure {
        status,
        code: "malformed_token_response".into(),
        description: why.into(),
        retry_after_ms,
    };
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| malformed("token response is not JSON"))?;
    let obj = v
        .as_object()
        .ok_or_else(|| malformed("token response is not a JSON object"))?;
    let token = obj
        .get("access_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| malformed("token response has no access_token"))?;
    // The token goes verbatim into an Authorization header: refuse anything that could break
    // out of it.
    if token.len() > MAX_TOKEN_LEN || !token.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(malformed(
            "access_token has characters not allowed in a header",
        ));
    }
    match obj.get("token_type") {
        None | Some(serde_json::Value::Null) => {}
        Some(tt)
            if tt
                .as_str()
                .is_some_and(|t| t.eq_ignore_ascii_case("bearer")) => {}
        Some(_) => return Err(malformed("token_type is not Bearer")),
    }
    let expires_in = obj.get("expires_in").and_then(number_or_string);
    let expires_on = obj.get("expires_on").and_then(number_or_string);
    let expires_in_s = match (expires_in, expires_on) {
        (Some(v), _) if v > 0 => Some(v),
        (_, Some(on)) => Some(on.saturating_sub(now_s)),
        _ => None,
    }
    .filter(|&s| s > 0)
    .ok_or_else(|| malformed("token response has no usable expires_in / expires_on"))?;
    Ok(TokenGrant {
        access_token: token.to_string(),
        expires_in_s,
    })
}

/// Entra sends numbers; IMDS and the App Service endpoint send them as strings.
fn number_or_string(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && *f < 1e15)
                .map(|f| f as u64)
        }),
        serde_json::Value::String(s) => {
            let s = s.trim();
            s.parse::<u64>().ok().or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && *f >= 0.0 && *f < 1e15)
                    .map(|f| f as u64)
            })
        }
        _ => None,
    }
}

/// An error answer of Entra, IMDS or the App Service endpoint, in whichever of their shapes:
/// `{"error","error_description","error_codes"}`, `{"error":{"code","message"}}`,
/// `{"statusCode","message"}`. The code is `AADSTS<n>` when one is known.
pub(crate) fn error_from_body(
    status: u32,
    body: &[u8],
    retry_after_ms: Option<u64>,
) -> TokenFailure {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = |key: &str| v.get(key).and_then(|x| x.as_str()).map(str::to_string);
    let (error, mut description) = match v.get("error") {
        Some(serde_json::Value::Object(e)) => (
            e.get("code").and_then(|x| x.as_str()).map(str::to_string),
            e.get("message")
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .unwrap_or_default(),
        ),
        _ => (
            text("error"),
            text("error_description")
                .or_else(|| text("message"))
                .or_else(|| text("Message"))
                .unwrap_or_default(),
        ),
    };
    // Entra appends trace and correlation ids after the first line; keep the first line.
    if let Some(first) = description.split(['\r', '\n']).next() {
        description = first.to_string();
    }
    let aadsts = v
        .get("error_codes")
        .and_then(|c| c.as_array())
        .and_then(|c| c.first())
        .and_then(|c| c.as_u64())
        .map(|c| format!("AADSTS{c}"))
        .or_else(|| aadsts_in(&description));
    let code = aadsts
        .clone()
        .or(error.clone())
        .unwrap_or_else(|| "http_error".to_string());
    if let Some(e) = error {
        if !code.eq_ignore_ascii_case(&e) {
            description = if description.is_empty() {
                e
            } else {
                format!("{e}: {description}")
            };
        }
    }
    TokenFailure {
        status,
        code: sanitize(&code, 64),
        description: sanitize(&description, MAX_DESCRIPTION),
        retry_after_ms,
    }
}

/// The first `AADSTS<digits>` in a text.
fn aadsts_in(text: &str) -> Option<String> {
    let start = text.find("AADSTS")?;
    let digits: String = text
        .get(start + 6..)?
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .take(12)
        .collect();
    (!digits.is_empty()).then(|| format!("AADSTS{digits}"))
}

/// Keeps log lines single-line, printable and short, and removes anything shaped like a JWT
/// (an endpoint that echoed an assertion or a token must not get it into a log).
fn sanitize(text: &str, max_chars: usize) -> String {
    let words: Vec<String> = text
        .split(' ')
        .map(|w| {
            let core = w.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_');
            if core.len() >= 20 && core.starts_with("eyJ") && core.matches('.').count() >= 1 {
                "<redacted>".to_string()
            } else {
                w.to_string()
            }
        })
        .collect();
    let joined = words.join(" ");
    let mut out: String = joined
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max_chars)
        .collect();
    if joined.chars().count() > max_chars {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::assertion::tests::{verify_jwt, CERT, KEY_PKCS8};
    use super::*;
    use crate::config::{resolve_secrets, Config};
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;
    const MI_JWT: &str =
        "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJhcGk6Ly9BenVyZUFEVG9rZW5FeGNoYW5nZSJ9.bWktc2ln";

    /// A config with one backend per credential, and the env the credentials read.
    fn config(credentials: serde_json::Value) -> Config {
        let names: Vec<String> = credentials.as_object().unwrap().keys().cloned().collect();
        let mut backends = serde_json::Map::new();
        for n in &names {
            backends.insert(
                format!("b-{n}"),
                json!({"kind": "azure_openai", "host": "h.openai.azure.com", "api_version": "2024-10-21", "credential": n}),
            );
        }
        let first = format!("b-{}", names[0]);
        let v = json!({
            "credentials": credentials,
            "backends": backends,
            "models": {"m": {"backend": first, "deployment": "d"}}
        });
        Config::parse(v.to_string().as_bytes()).unwrap()
    }

    fn env(k: &str) -> Option<String> {
        match k {
            "SECRET" => Some("s&cr=t".into()),
            "IDENTITY_HEADER" => Some("identity-header-value".into()),
            "OIDC_AUTH" => Some("Bearer oidc-endpoint-key".into()),
            "KEY_PEM" => Some(KEY_PKCS8.replace('\n', "\\n")),
            _ => None,
        }
    }

    /// Starts the fetch of credential `name`.
    fn start(c: &Config, name: &str) -> (TokenFetch, CalloutRequest) {
        let secrets = resolve_secrets(c, env).unwrap();
        let i = c.credential_index(name).unwrap();
        TokenFetch::start(&c.credentials[i], &secrets[i], NOW).unwrap()
    }

    fn form(r: &CalloutRequest) -> Vec<(String, String)> {
        url::form_urlencoded::parse(&r.body).into_owned().collect()
    }

    fn field(r: &CalloutRequest, name: &str) -> String {
        form(r)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no form field {name}"))
    }

    const ENTRA_OK: &[u8] = br#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"final.token.x"}"#;

    fn done(step: FetchStep) -> Result<TokenGrant, TokenFailure> {
        match step {
            FetchStep::Done(r) => r,
            FetchStep::Next(r) => panic!("unexpected next request {r:?}"),
        }
    }

    fn next(step: FetchStep) -> CalloutRequest {
        match step {
            FetchStep::Next(r) => r,
            FetchStep::Done(r) => panic!("unexpected end {r:?}"),
        }
    }

    fn assert_entra_post(r: &CalloutRequest, tenant: &str, client: &str, scope: &str) {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, format!("/{tenant}/oauth2/v2.0/token"));
        assert!(r.headers.contains(&(
            "content-type",
            "application/x-www-form-urlencoded".to_string()
        )));
        assert_eq!(field(r, "grant_type"), "client_credentials");
        assert_eq!(field(r, "client_id"), client);
        assert_eq!(field(r, "scope"), scope);
        let hh = r.host_headers();
        assert_eq!(hh[0], (":method", "POST"));
        assert_eq!(hh[1].0, ":path");
        assert_eq!(hh[2], (":authority", r.authority.as_str()));
    }

    #[test]
    fn client_secret_request_is_form_encoded() {
        let c = config(
            json!({"main": {"kind": "client_secret", "tenant_id": "tenant-1", "client_id": "app-1",
                                        "client_secret_env": "SECRET", "token_cluster": "entra"}}),
        );
        let (mut f, r) = start(&c, "main");
        assert_entra_post(
            &r,
            "tenant-1",
            "app-1",
            "https://cognitiveservices.azure.com/.default",
        );
        assert_eq!(r.authority, "login.microsoftonline.com");
        assert_eq!(r.cluster, "entra");
        assert_eq!(r.timeout_ms, 5000);
        assert_eq!(field(&r, "client_secret"), "s&cr=t");
        assert!(!form(&r).iter().any(|(k, _)| k == "client_assertion"));
        assert!(!format!("{r:?}").contains("s&cr=t"));
        let g = done(f.on_response(Some(200), None, ENTRA_OK, NOW)).unwrap();
        assert_eq!(g.access_token, "final.token.x");
        assert_eq!(g.expires_in_s, 3599);
        // A second answer to a finished fetch is an error, not a panic.
        assert_eq!(
            done(f.on_response(Some(200), None, ENTRA_OK, NOW))
                .unwrap_err()
                .code,
            "internal_error"
        );
    }

    #[test]
    fn client_certificate_signs_a_verifiable_assertion() {
        for (alg, key_source) in [
            ("PS256", json!({"private_key_pem": KEY_PKCS8})),
            ("RS256", json!({"private_key_env": "KEY_PEM"})),
        ] {
            let mut cred = json!({"kind": "client_certificate", "tenant_id": "contoso.onmicrosoft.com",
                "client_id": "app-2", "certificate_pem": CERT, "algorithm": alg,
                "token_cluster": "entra-gov", "authority_host": "login.microsoftonline.us",
                "scope": "https://cognitiveservices.azure.us/.default", "timeout_ms": 2500});
            for (k, v) in key_source.as_object().unwrap() {
                cred[k] = v.clone();
            }
            let c = config(json!({ "cert": cred }));
            let secrets = resolve_secrets(&c, env).unwrap();
            let ResolvedSecret::SigningKey(key) = &secrets[0] else {
                panic!("not a signing key")
            };
            let (mut f, r) = TokenFetch::start(&c.credentials[0], &secrets[0], NOW).unwrap();
            assert_entra_post(
                &r,
                "contoso.onmicrosoft.com",
                "app-2",
                "https://cognitiveservices.azure.us/.default",
            );
            assert_eq!(r.authority, "login.microsoftonline.us");
            assert_eq!(r.cluster, "entra-gov");
            assert_eq!(r.timeout_ms, 2500);
            assert!(!form(&r).iter().any(|(k, _)| k == "client_secret"));
            assert_eq!(field(&r, "client_assertion_type"), CLIENT_ASSERTION_TYPE);
            let jwt = field(&r, "client_assertion");
            let (header, claims) = verify_jwt(&jwt, &key.public_key());
            assert_eq!(header["alg"], alg);
            assert_eq!(header["typ"], "JWT");
            assert_eq!(
                header["x5t#S256"],
                "O4Dqb2tZQ7Q40WVAM414xMpp4fTA0zjdMwj3LkVxisA"
            );
            if alg == "RS256" {
                assert_eq!(header["x5t"], "GfqgT2pmAjUNjuaJvbMUPVs5b1g");
            } else {
                assert!(header.get("x5t").is_none());
            }
            assert_eq!(
                claims["aud"],
                "https://login.microsoftonline.us/contoso.onmicrosoft.com/oauth2/v2.0/token"
            );
            assert_eq!(claims["iss"], "app-2");
            assert_eq!(claims["sub"], "app-2");
            assert_eq!(claims["nbf"], NOW);
            assert_eq!(claims["iat"], NOW);
            assert_eq!(claims["exp"], NOW + 600);
            assert!(claims["jti"].as_str().is_some_and(|j| j.len() == 36));
            assert!(!format!("{r:?}").contains(&jwt[..20]));
            assert!(done(f.on_response(Some(200), None, ENTRA_OK, NOW)).is_ok());
        }
    }

    #[test]
    fn managed_identity_imds_and_app_service() {
        let c = config(json!({
            "imds": {"kind": "managed_identity", "client_id": "uami-1", "token_cluster": "imds"},
            "apps": {"kind": "managed_identity", "endpoint": "app_service", "mi_res_id": "/subscriptions/s/rg/x",
                     "token_cluster": "identity", "authority": "localhost:42356", "scope": "https://ai.azure.com/.default"}
        }));
        let (mut f, r) = start(&c, "imds");
        assert_eq!(r.method, "GET");
        assert_eq!(r.cluster, "imds");
        assert_eq!(r.authority, "169.254.169.254");
        assert_eq!(
            r.path,
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fcognitiveservices.azure.com&client_id=uami-1"
        );
        assert!(r.headers.contains(&("metadata", "true".to_string())));
        let body = br#"{"access_token":"mi.tok.en","expires_in":"3599","expires_on":"1700003599","not_before":"1700000000","resource":"https://cognitiveservices.azure.com","token_type":"Bearer"}"#;
        let g = done(f.on_response(Some(200), None, body, NOW)).unwrap();
        assert_eq!(
            (g.access_token.as_str(), g.expires_in_s),
            ("mi.tok.en", 3599)
        );

        let (mut f, r) = start(&c, "apps");
        assert_eq!(r.authority, "localhost:42356");
        assert_eq!(
            r.path,
            "/msi/token?api-version=2019-08-01&resource=https%3A%2F%2Fai.azure.com&mi_res_id=%2Fsubscriptions%2Fs%2Frg%2Fx"
        );
        assert!(r
            .headers
            .contains(&("x-identity-header", "identity-header-value".to_string())));
        let body = format!(
            r#"{{"access_token":"as.tok.en","expires_on":"{}","resource":"https://ai.azure.com","token_type":"Bearer"}}"#,
            NOW + 1800
        );
        let g = done(f.on_response(Some(200), None, body.as_bytes(), NOW)).unwrap();
        assert_eq!(g.expires_in_s, 1800);

        // IMDS being updated: 410 -> come back within 70 s.
        let (mut f, _) = start(&c, "imds");
        let e = done(f.on_response(Some(410), None, b"", NOW)).unwrap_err();
        assert_eq!(e.retry_after_ms, Some(70_000));
        let (mut f, _) = start(&c, "imds");
        let e = done(f.on_response(None, None, b"", NOW)).unwrap_err();
        assert_eq!(e.code, "callout_failed");
        assert!(e.description.contains("IMDS"));
    }

    fn chain_config() -> Config {
        config(json!({
            "uami": {"kind": "managed_identity", "client_id": "uami-1", "token_cluster": "imds", "timeout_ms": 1500},
            "customer-a": {"kind": "federated", "tenant_id": "customer-tenant-a", "client_id": "multi-tenant-app",
                           "token_cluster": "entra", "assertion": {"source": "managed_identity", "credential": "uami"}},
            "oidc": {"kind": "federated", "tenant_id": "t3", "client_id": "app-3", "token_cluster": "entra",
                     "assertion": {"source": "http", "cluster": "oidc-issuer", "authority": "issuer.internal:8443",
                                   "path": "/token?audience=api%3A%2F%2FAzureADTokenExchange",
                                   "header_env": "OIDC_AUTH", "response": "json_field:token"}}
        }))
    }

    #[test]
    fn federated_managed_identity_chain_uses_the_mi_token_as_assertion() {
        let c = chain_config();
        let (mut f, first) = start(&c, "customer-a");
        assert_eq!(first.method, "GET");
        assert_eq!(first.cluster, "imds");
        assert_eq!(first.authority, "169.254.169.254");
        assert_eq!(first.timeout_ms, 1500);
        assert_eq!(
            first.path,
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=api%3A%2F%2FAzureADTokenExchange&client_id=uami-1"
        );
        let mi = format!(
            r#"{{"access_token":"{MI_JWT}","expires_in":"86399","expires_on":"1700086399","resource":"api://AzureADTokenExchange","token_type":"Bearer"}}"#
        );
        let second = next(f.on_response(Some(200), None, mi.as_bytes(), NOW));
        assert_entra_post(
            &second,
            "customer-tenant-a",
            "multi-tenant-app",
            "https://cognitiveservices.azure.com/.default",
        );
        assert_eq!(second.cluster, "entra");
        assert_eq!(second.authority, "login.microsoftonline.com");
        assert_eq!(field(&second, "client_assertion"), MI_JWT);
        assert_eq!(
            field(&second, "client_assertion_type"),
            CLIENT_ASSERTION_TYPE
        );
        assert!(!format!("{second:?}").contains(MI_JWT));
        assert!(!format!("{f:?}").contains(MI_JWT));
        let g = done(f.on_response(Some(200), None, ENTRA_OK, NOW)).unwrap();
        assert_eq!(g.access_token, "final.token.x");
    }

    #[test]
    fn federated_chain_failures_name_the_step_and_code() {
        let c = chain_config();
        // The MI step fails.
        let (mut f, _) = start(&c, "customer-a");
        let body = br#"{"error":"invalid_request","error_description":"Identity not found"}"#;
        let e = done(f.on_response(Some(400), None, body, NOW)).unwrap_err();
        assert_eq!(e.code, "invalid_request");
        assert!(e
            .description
            .starts_with("federated assertion (managed identity token): IMDS:"));
        // The exchange fails: no federated credential matches (AADSTS70021).
        let (mut f, _) = start(&c, "customer-a");
        let mi =
            format!(r#"{{"access_token":"{MI_JWT}","expires_in":"60","token_type":"Bearer"}}"#);
        next(f.on_response(Some(200), None, mi.as_bytes(), NOW));
        let body = json!({"error": "invalid_request", "error_description": format!("AADSTS70021: No matching federated identity record found for presented assertion. Assertion Issuer: 'x'. Assertion: {MI_JWT}\r\nTrace ID: t"), "error_codes": [70021]});
        let e = done(f.on_response(Some(400), None, body.to_string().as_bytes(), NOW)).unwrap_err();
        assert_eq!(e.code, "AADSTS70021");
        assert!(e
            .summary()
            .contains("AADSTS70021: No matching federated identity record"));
        assert!(!e.summary().contains("eyJ0eXAi"), "{}", e.summary());
        // A malformed MI answer.
        let (mut f, _) = start(&c, "customer-a");
        let e = done(f.on_response(Some(200), None, b"{\"access_token\": 5}", NOW)).unwrap_err();
        assert_eq!(e.code, "malformed_token_response");
    }

    #[test]
    fn federated_http_assertion_source() {
        let c = chain_config();
        let (mut f, first) = start(&c, "oidc");
        assert_eq!(first.method, "GET");
        assert_eq!(first.cluster, "oidc-issuer");
        assert_eq!(first.authority, "issuer.internal:8443");
        assert_eq!(
            first.path,
            "/token?audience=api%3A%2F%2FAzureADTokenExchange"
        );
        assert!(first
            .headers
            .contains(&("authorization", "Bearer oidc-endpoint-key".to_string())));
        let body = json!({"token": MI_JWT, "expires": 5}).to_string();
        let second = next(f.on_response(Some(200), None, body.as_bytes(), NOW));
        assert_entra_post(
            &second,
            "t3",
            "app-3",
            "https://cognitiveservices.azure.com/.default",
        );
        assert_eq!(field(&second, "client_assertion"), MI_JWT);
        assert!(done(f.on_response(Some(200), None, ENTRA_OK, NOW)).is_ok());
        // The endpoint fails or answers garbage.
        let (mut f, _) = start(&c, "oidc");
        let e = done(f.on_response(Some(503), Some("4"), b"busy", NOW)).unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.retry_after_ms),
            ("assertion_endpoint_error", Some(4000))
        );
        let (mut f, _) = start(&c, "oidc");
        let e = done(f.on_response(Some(200), None, b"{\"tok\":\"x\"}", NOW)).unwrap_err();
        assert_eq!(e.code, "malformed_assertion");
        let (mut f, _) = start(&c, "oidc");
        let e = done(f.on_response(None, None, b"", NOW)).unwrap_err();
        assert_eq!(e.code, "callout_failed");
    }

    #[test]
    fn mismatched_secret_is_a_failure_not_a_panic() {
        let c = chain_config();
        let i = c.credential_index("oidc").unwrap();
        let e = TokenFetch::start(
            &c.credentials[i],
            &ResolvedSecret::ClientSecret("x".into()),
            NOW,
        )
        .unwrap_err();
        assert_eq!(e.code, "internal_error");
    }

    #[test]
    fn success_numbers_or_strings() {
        let g = parse_token_response(
            200,
            None,
            br#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"abc.def.ghi"}"#,
            0,
        )
        .unwrap();
        assert_eq!(g.expires_in_s, 3599);
        assert_eq!(g.access_token, "abc.def.ghi");
        let g = parse_token_response(
            200,
            None,
            br#"{"access_token":"x","expires_in":"3599","expires_on":"1506484173","token_type":"Bearer"}"#,
            0,
        )
        .unwrap();
        assert_eq!(g.expires_in_s, 3599);
        let g = parse_token_response(
            200,
            None,
            br#"{"access_token":"SECRETTOKEN","expires_on":"1000","token_type":"Bearer"}"#,
            400,
        )
        .unwrap();
        assert_eq!(g.expires_in_s, 600);
        assert!(
            !format!("{g:?}").contains("SECRETTOKEN"),
            "token in Debug output"
        );
        let g = parse_token_response(200, None, br#"{"access_token":"x","expires_in":3599.0}"#, 0)
            .unwrap();
        assert_eq!(g.expires_in_s, 3599);
    }

    #[test]
    fn aadsts_error_is_reported_with_code() {
        let body = json!({"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 1\r\nCorrelation ID: 2","error_codes":[7000215]});
        let e = parse_token_response(401, None, body.to_string().as_bytes(), 0).unwrap_err();
        assert_eq!(e.code, "AADSTS7000215");
        assert_eq!(
            e.description,
            "invalid_client: AADSTS7000215: Invalid client secret provided."
        );
        assert_eq!(e.status, 401);
        assert_eq!(
            e.summary(),
            "HTTP 401 AADSTS7000215: invalid_client: AADSTS7000215: Invalid client secret provided."
        );
        for (code, text) in [
            (700016, "AADSTS700016: Application with identifier 'app' was not found in the directory 'contoso'."),
            (7000222, "AADSTS7000222: The provided client secret keys for app 'app' are expired."),
            (700027, "AADSTS700027: Client assertion contains an invalid signature."),
            (70011, "AADSTS70011: The provided value for the input parameter 'scope' is not valid."),
        ] {
            let body = json!({"error":"invalid_client","error_description":text,"error_codes":[code]});
            let e = parse_token_response(400, None, body.to_string().as_bytes(), 0).unwrap_err();
            assert_eq!(e.code, format!("AADSTS{code}"));
            assert!(e.description.contains(text), "{}", e.description);
        }
    }

    #[test]
    fn throttling_and_garbage() {
        let e = parse_token_response(429, Some("7"), b"not json", 0).unwrap_err();
        assert_eq!(e.retry_after_ms, Some(7000));
        assert_eq!(e.code, "http_error");
        let e = parse_token_response(429, Some("99999999999999999999"), b"", 0).unwrap_err();
        assert_eq!(e.retry_after_ms, None);
        let e = parse_token_response(429, Some("86400"), b"", 0).unwrap_err();
        assert_eq!(e.retry_after_ms, Some(3_600_000));
        for bad in [
            &b"garbage"[..],
            br#"{"access_token":""}"#,
            br#"{"access_token":"x"}"#,
            br#"{"access_token":"a\r\nb","expires_in":5}"#,
            br#"{"access_token":"x","expires_in":0}"#,
            br#"{"access_token":"x","expires_in":-5}"#,
            br#"{"access_token":"x","expires_in":"soon"}"#,
            br#"{"access_token":"x","expires_in":5,"token_type":"pop"}"#,
            br#"{"access_token":"x","expires_in":5,"token_type":7}"#,
            br#"[]"#,
            br#""x""#,
        ] {
            let e = parse_token_response(200, None, bad, 0).unwrap_err();
            assert_eq!(e.code, "malformed_token_response");
        }
    }

    #[test]
    fn descriptions_are_single_line_short_and_jwt_free() {
        let long = "x".repeat(1000);
        let body = json!({"error": "e", "error_description": format!("{long}\nsecond line")});
        let e = parse_token_response(400, None, body.to_string().as_bytes(), 0).unwrap_err();
        assert!(e.description.chars().count() <= MAX_DESCRIPTION + 1);
        assert!(!e.description.contains('\n'));
        let body =
            json!({"error": "e", "error_description": format!("got token '{MI_JWT}' and\tmore")});
        let e = parse_token_response(400, None, body.to_string().as_bytes(), 0).unwrap_err();
        assert_eq!(e.description, "got token <redacted> and more");
    }

    /// Random bytes and mutated real answers through every response parser and every stage:
    /// failures are fine, panics are not.
    #[test]
    fn random_answers_never_panic() {
        let mut rng = rand_chacha::ChaCha20Rng::from_seed([7; 32]);
        let samples: Vec<Vec<u8>> = vec![
            ENTRA_OK.to_vec(),
            br#"{"access_token":"a.b.c","expires_in":"3599","expires_on":"1700003599","token_type":"Bearer"}"#.to_vec(),
            br#"{"error":"invalid_client","error_description":"AADSTS7000215: x","error_codes":[7000215]}"#.to_vec(),
            br#"{"error":{"code":"c","message":"m"}}"#.to_vec(),
            json!({"token": MI_JWT}).to_string().into_bytes(),
            MI_JWT.as_bytes().to_vec(),
        ];
        let c = chain_config();
        let cert = config(
            json!({"cert": {"kind": "client_certificate", "tenant_id": "t", "client_id": "c",
            "private_key_pem": KEY_PKCS8, "certificate_pem": CERT, "token_cluster": "entra"}}),
        );
        let secrets = resolve_secrets(&c, env).unwrap();
        let responses = [
            AssertionResponse::Text,
            AssertionResponse::JsonField("token".into()),
        ];
        for round in 0..4000u32 {
            let body: Vec<u8> = if round % 2 == 0 {
                let mut b = vec![0u8; (rng.next_u32() % 200) as usize];
                rng.fill_bytes(&mut b);
                b
            } else {
                let mut b = samples[(rng.next_u32() as usize) % samples.len()].clone();
                for _ in 0..(1 + rng.next_u32() % 4) {
                    if b.is_empty() {
                        break;
                    }
                    let pos = (rng.next_u32() as usize) % b.len();
                    match rng.next_u32() % 3 {
                        0 => b[pos] = rng.next_u32() as u8,
                        1 => {
                            b.remove(pos);
                        }
                        _ => b.insert(pos, b"\"{}[]:,.0-e\\"[(rng.next_u32() % 12) as usize]),
                    }
                }
                b
            };
            let status = [200, 201, 400, 401, 404, 410, 429, 500, 503, 0, 999]
                [(rng.next_u32() % 11) as usize];
            let retry = ["5", "x", "", "-1", "1e9"][(rng.next_u32() % 5) as usize];
            let now = u64::from(rng.next_u32()) * 1000;
            let _ = parse_token_response(status, Some(retry), &body, now);
            for ep in [
                ManagedIdentityEndpoint::Imds,
                ManagedIdentityEndpoint::AppService,
            ] {
                let _ = managed_identity::parse_response(ep, status, Some(retry), &body, now);
            }
            for r in &responses {
                let _ = federated::extract_assertion(r, status, Some(retry), &body);
            }
            // Every stage of every kind.
            for (i, cred) in c.credentials.iter().enumerate() {
                let (mut f, _) = TokenFetch::start(cred, &secrets[i], now).unwrap();
                let status = (round % 3 != 0).then_some(status);
                if let FetchStep::Next(_) = f.on_response(status, Some(retry), &body, now) {
                    let _ = f.on_response(status, None, &body, now);
                }
            }
            if round % 400 == 0 {
                let cs = resolve_secrets(&cert, env).unwrap();
                let (mut f, _) = TokenFetch::start(&cert.credentials[0], &cs[0], now).unwrap();
                let _ = f.on_response(Some(status), Some(retry), &body, now);
            }
        }
    }
}
