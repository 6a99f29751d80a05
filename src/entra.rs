//! Entra ID token requests and responses (wire formats in ../shared/AZURE-WIRE.md section 2).
//!
//! Building the request and reading the answer are pure functions; the host layer only sends
//! the request through `dispatch_http_call` and hands back status, headers and body.

use crate::config::{Credential, CredentialKind, ResolvedSecret};
use serde::Deserialize;

/// An HTTP request for an Envoy cluster callout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalloutRequest {
    pub cluster: String,
    pub method: &'static str,
    pub authority: String,
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u64,
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

/// The client-credentials request for a credential (`POST /{tenant}/oauth2/v2.0/token`).
pub fn token_request(cred: &Credential, secret: &ResolvedSecret) -> CalloutRequest {
    let CredentialKind::ClientSecret {
        tenant_id,
        client_id,
        ..
    } = &cred.kind;
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_id", client_id)
        .append_pair("client_secret", &secret.0)
        .append_pair("scope", &cred.scope)
        .finish();
    CalloutRequest {
        cluster: cred.token_cluster.clone(),
        method: "POST",
        authority: cred.authority_host.clone(),
        path: format!("/{tenant_id}/oauth2/v2.0/token"),
        headers: vec![
            (
                "content-type",
                "application/x-www-form-urlencoded".to_string(),
            ),
            ("accept", "application/json".to_string()),
        ],
        body: body.into_bytes(),
        timeout_ms: cred.timeout_ms,
    }
}

/// One credential's token fetch, which may take several callouts (the federated chain first
/// gets a managed-identity token, then exchanges it). The host sends each request and feeds
/// the answer back until the fetch is done.
pub struct TokenFetch {
    step: FetchStage,
}

enum FetchStage {
    /// Waiting for the token endpoint's answer; nothing more to do after it.
    Final,
}

/// What to do after an answer.
pub enum FetchStep {
    Next(CalloutRequest),
    Done(Result<TokenGrant, TokenFailure>),
}

impl TokenFetch {
    /// The first request of a fetch. `now_s`: Unix seconds (assertions carry timestamps).
    pub fn start(
        cred: &Credential,
        secret: &ResolvedSecret,
        _now_s: u64,
    ) -> Result<(TokenFetch, CalloutRequest), TokenFailure> {
        Ok((
            TokenFetch {
                step: FetchStage::Final,
            },
            token_request(cred, secret),
        ))
    }

    /// Feeds one callout answer (`status` None: no answer at all: timeout, reset, ...).
    pub fn on_response(
        &mut self,
        status: Option<u32>,
        retry_after: Option<&str>,
        body: &[u8],
        now_s: u64,
    ) -> FetchStep {
        let Some(status) = status else {
            return FetchStep::Done(Err(TokenFailure::callout_failed(
                "no response from the token endpoint (timeout, connection failure or reset)",
            )));
        };
        match self.step {
            FetchStage::Final => {
                FetchStep::Done(parse_token_response(status, retry_after, body, now_s))
            }
        }
    }
}

/// A token Entra granted.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenGrant {
    pub access_token: String,
    pub expires_in_s: u64,
}

impl std::fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenGrant {{ expires_in_s: {} }}", self.expires_in_s)
    }
}

/// Why no token came back. Safe to log: it holds codes and Entra's description, never the
/// request (secret, assertion) or a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFailure {
    /// HTTP status, or 0 when the callout itself failed.
    pub status: u32,
    /// `invalid_client`, `AADSTS7000215`, `timeout`, ...
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
}

#[derive(Deserialize)]
struct SuccessBody {
    access_token: Option<String>,
    expires_in: Option<NumberOrString>,
    expires_on: Option<NumberOrString>,
    token_type: Option<String>,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    error: Option<String>,
    error_description: Option<String>,
    #[serde(default)]
    error_codes: Vec<u64>,
}

/// Entra sends numbers; IMDS and the App Service endpoint send them as strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    Number(u64),
    Text(String),
}

impl NumberOrString {
    fn value(&self) -> Option<u64> {
        match self {
            NumberOrString::Number(n) => Some(*n),
            NumberOrString::Text(s) => s.trim().parse().ok(),
        }
    }
}

const MAX_DESCRIPTION: usize = 300;

/// Reads a token endpoint's answer. `retry_after` is the raw `Retry-After` header, if any;
/// `now_s` (Unix seconds) turns an absolute `expires_on` into a lifetime.
pub fn parse_token_response(
    status: u32,
    retry_after: Option<&str>,
    body: &[u8],
    now_s: u64,
) -> Result<TokenGrant, TokenFailure> {
    let retry_after_ms = retry_after
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| s.saturating_mul(1000));
    if status != 200 {
        let err: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
        let code = err
            .error_codes
            .first()
            .map(|c| format!("AADSTS{c}"))
            .or(err.error.clone())
            .unwrap_or_else(|| "http_error".to_string());
        let mut description = err.error_description.unwrap_or_default();
        // Entra appends trace and correlation ids after the first line; keep the first line.
        if let Some(first) = description.split(['\r', '\n']).next() {
            description = first.to_string();
        }
        if let Some(e) = err.error {
            if !code.eq_ignore_ascii_case(&e) {
                description = format!("{e}: {description}");
            }
        }
        return Err(TokenFailure {
            status,
            code,
            description: sanitize(&description),
            retry_after_ms,
        });
    }
    let malformed = |why: &str| TokenFailure {
        status,
        code: "malformed_token_response".into(),
        description: why.into(),
        retry_after_ms,
    };
    let ok: SuccessBody =
        serde_json::from_slice(body).map_err(|_| malformed("token response is not JSON"))?;
    let token = ok
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| malformed("token response has no access_token"))?;
    // The token goes verbatim into an Authorization header: refuse anything that could break
    // out of it.
    if token.len() > 16 * 1024 || !token.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(malformed(
            "access_token has characters not allowed in a header",
        ));
    }
    if let Some(tt) = ok.token_type.as_deref() {
        if !tt.eq_ignore_ascii_case("bearer") {
            return Err(malformed("token_type is not Bearer"));
        }
    }
    let expires_in_s = match (ok.expires_in.as_ref(), ok.expires_on.as_ref()) {
        (Some(v), _) => v.value(),
        (None, Some(on)) => on.value().map(|on| on.saturating_sub(now_s)),
        (None, None) => None,
    }
    .filter(|&s| s > 0)
    .ok_or_else(|| malformed("token response has no usable expires_in / expires_on"))?;
    Ok(TokenGrant {
        access_token: token,
        expires_in_s,
    })
}

/// Keeps log lines single-line, printable and short.
fn sanitize(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_DESCRIPTION)
        .collect();
    if text.chars().count() > MAX_DESCRIPTION {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde_json::json;

    fn cred() -> Credential {
        let v = json!({
            "credentials": {"main": {"kind": "client_secret", "tenant_id": "tenant-1", "client_id": "app-1",
                                     "client_secret": "s&cr=t", "token_cluster": "entra"}},
            "backends": {"b": {"kind": "azure_openai", "host": "h.openai.azure.com", "api_version": "2024-10-21", "credential": "main"}},
            "models": {"m": {"backend": "b", "deployment": "d"}}
        });
        Config::parse(v.to_string().as_bytes())
            .unwrap()
            .credentials
            .remove(0)
    }

    #[test]
    fn client_secret_request_is_form_encoded() {
        let r = token_request(&cred(), &ResolvedSecret("s&cr=t".into()));
        assert_eq!(r.path, "/tenant-1/oauth2/v2.0/token");
        assert_eq!(r.authority, "login.microsoftonline.com");
        assert_eq!(r.cluster, "entra");
        let form: Vec<(String, String)> =
            url::form_urlencoded::parse(&r.body).into_owned().collect();
        assert!(form.contains(&("client_secret".into(), "s&cr=t".into())));
        assert!(form.contains(&("grant_type".into(), "client_credentials".into())));
        assert!(form.contains(&(
            "scope".into(),
            "https://cognitiveservices.azure.com/.default".into()
        )));
        let hh = r.host_headers();
        assert_eq!(hh[0], (":method", "POST"));
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
    }

    #[test]
    fn throttling_and_garbage() {
        let e = parse_token_response(429, Some("7"), b"not json", 0).unwrap_err();
        assert_eq!(e.retry_after_ms, Some(7000));
        assert_eq!(e.code, "http_error");
        for bad in [
            &b"garbage"[..],
            br#"{"access_token":""}"#,
            br#"{"access_token":"x"}"#,
            br#"{"access_token":"a\r\nb","expires_in":5}"#,
            br#"{"access_token":"x","expires_in":0}"#,
            br#"{"access_token":"x","expires_in":5,"token_type":"pop"}"#,
            br#"[]"#,
        ] {
            let e = parse_token_response(200, None, bad, 0).unwrap_err();
            assert_eq!(e.code, "malformed_token_response");
        }
    }
}
