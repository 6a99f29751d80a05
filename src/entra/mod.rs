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
#[cfg(test)]
mod tests;
pub mod workload_identity;

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
    /// Entra, exchanging a workload identity's projected token (its errors get hints).
    EntraWorkloadIdentity,
    ManagedIdentity(ManagedIdentityEndpoint),
}

#[derive(Debug)]
enum AssertionFrom {
    Endpoint(AssertionResponse),
    ManagedIdentity(ManagedIdentityEndpoint),
    /// The token route serving AZURE_FEDERATED_TOKEN_FILE: the audiences the token may carry,
    /// and the file's name when the VM knows it (for log lines).
    TokenFile {
        audiences: Vec<String>,
        file: Option<String>,
    },
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
            (CredentialKind::WorkloadIdentity(wi), ResolvedSecret::WorkloadIdentity(resolved)) => {
                let (exchange, req) = workload_identity::start(cred, wi, resolved)?;
                Ok((
                    fetch(Stage::Assertion {
                        from: AssertionFrom::TokenFile {
                            audiences: resolved.audiences.clone(),
                            file: resolved.token_file.clone(),
                        },
                        exchange,
                    }),
                    req,
                ))
            }
            _ => Err(TokenFailure::internal(
                "the resolved secret does not match the credential kind",
            )),
        }
    }

    /// A response header the next answer's reader wants besides `Retry-After` (the token
    /// route's failure reason), if any: the host passes its value to `on_response_with`.
    pub fn wanted_header(&self) -> Option<&'static str> {
        matches!(
            self.stage,
            Stage::Assertion {
                from: AssertionFrom::TokenFile { .. },
                ..
            }
        )
        .then_some(workload_identity::TOKEN_FILE_ERROR_HEADER)
    }

    /// Feeds one callout answer (`status` None: no answer at all: timeout, reset, ...).
    pub fn on_response(
        &mut self,
        status: Option<u32>,
        retry_after: Option<&str>,
        body: &[u8],
        now_s: u64,
    ) -> FetchStep {
        self.on_response_with(status, retry_after, None, body, now_s)
    }

    /// `on_response` with the value of `wanted_header`.
    pub fn on_response_with(
        &mut self,
        status: Option<u32>,
        retry_after: Option<&str>,
        wanted_header: Option<&str>,
        body: &[u8],
        now_s: u64,
    ) -> FetchStep {
        match std::mem::replace(&mut self.stage, Stage::Finished) {
            Stage::Finished => FetchStep::Done(Err(TokenFailure::internal(
                "an answer came for a token fetch that had already finished",
            ))),
            Stage::Token(answerer) => {
                FetchStep::Done(read_token(answerer, status, retry_after, body, now_s))
            }
            Stage::Assertion { from, exchange } => {
                let answer = (status, retry_after, wanted_header, body);
                match read_assertion(&from, answer, now_s) {
                    Ok(jwt) => {
                        self.stage = Stage::Token(match from {
                            AssertionFrom::TokenFile { .. } => Answerer::EntraWorkloadIdentity,
                            _ => Answerer::Entra,
                        });
                        FetchStep::Next(exchange.request(ClientAuth::Assertion(&jwt)))
                    }
                    Err(failure) => FetchStep::Done(Err(failure)),
                }
            }
        }
    }
}

/// The answer that carries the access token.
fn read_token(
    answerer: Answerer,
    status: Option<u32>,
    retry_after: Option<&str>,
    body: &[u8],
    now_s: u64,
) -> Result<TokenGrant, TokenFailure> {
    match (answerer, status) {
        (Answerer::Entra | Answerer::EntraWorkloadIdentity, None) => {
            Err(TokenFailure::callout_failed(
                "no response from the token endpoint (timeout, connection failure or reset)",
            ))
        }
        (Answerer::ManagedIdentity(endpoint), None) => Err(TokenFailure::callout_failed(&format!(
            "no response from the managed identity endpoint ({}): timeout, connection failure \
             or reset",
            endpoint.label()
        ))),
        (Answerer::Entra, Some(status)) => parse_token_response(status, retry_after, body, now_s),
        (Answerer::EntraWorkloadIdentity, Some(status)) => {
            parse_token_response(status, retry_after, body, now_s)
                .map_err(workload_identity::with_hint)
        }
        (Answerer::ManagedIdentity(endpoint), Some(status)) => {
            managed_identity::parse_response(endpoint, status, retry_after, body, now_s)
        }
    }
}

/// The answer that carries the client assertion: (status, Retry-After, the wanted header,
/// body).
fn read_assertion(
    from: &AssertionFrom,
    (status, retry_after, wanted_header, body): (Option<u32>, Option<&str>, Option<&str>, &[u8]),
    now_s: u64,
) -> Result<String, TokenFailure> {
    match (from, status) {
        (AssertionFrom::Endpoint(_), None) => Err(TokenFailure::callout_failed(
            "no response from the assertion endpoint (timeout, connection failure or reset)",
        )),
        (AssertionFrom::ManagedIdentity(endpoint), None) => {
            Err(TokenFailure::callout_failed(&format!(
                "no response from the managed identity endpoint ({}) for the federated \
                 assertion: timeout, connection failure or reset",
                endpoint.label()
            )))
        }
        (AssertionFrom::TokenFile { .. }, None) => Err(TokenFailure::callout_failed(
            "no response from the token route serving AZURE_FEDERATED_TOKEN_FILE (is its \
             internal listener and cluster in Envoy's configuration?)",
        )),
        (AssertionFrom::Endpoint(response), Some(status)) => {
            federated::extract_assertion(response, status, retry_after, body)
        }
        (AssertionFrom::ManagedIdentity(endpoint), Some(status)) => {
            managed_identity::parse_response(*endpoint, status, retry_after, body, now_s)
                .map(|grant| grant.access_token)
                .map_err(|f| f.in_step("federated assertion (managed identity token)"))
        }
        (AssertionFrom::TokenFile { audiences, file }, Some(status)) => {
            workload_identity::read_token_file(status, wanted_header, body, audiences, file, now_s)
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
