//! Federated credentials whose assertion comes from an HTTP endpoint reached through an Envoy
//! cluster (a wasm VM cannot read AZURE_FEDERATED_TOKEN_FILE; AZURE-WIRE.md section 2,
//! "Federated credential"). The endpoint returns a JWT from an issuer the app registration
//! trusts (audience `api://AzureADTokenExchange`), as plain text or in a JSON field.

use super::{retry_after_ms, CalloutRequest, TokenFailure};
use crate::entra::credential::AssertionResponse;

/// Largest assertion accepted.
const MAX_ASSERTION_LEN: usize = 16 * 1024;

/// `GET {path}` on the assertion endpoint; `authorization` is the optional Authorization header
/// value (read from the environment at configure time).
pub fn assertion_request(
    cluster: &str,
    authority: &str,
    path: &str,
    authorization: Option<&str>,
    timeout_ms: u64,
) -> CalloutRequest {
    let mut headers = vec![("accept", "application/json, text/plain".to_string())];
    if let Some(v) = authorization.filter(|v| !v.is_empty()) {
        headers.push(("authorization", v.to_string()));
    }
    CalloutRequest {
        cluster: cluster.to_string(),
        method: "GET",
        authority: authority.to_string(),
        path: path.to_string(),
        headers,
        body: Vec::new(),
        timeout_ms,
    }
}

/// The assertion in the endpoint's answer. Failures never quote the body (it may hold a
/// token).
pub fn extract_assertion(
    response: &AssertionResponse,
    status: u32,
    retry_after: Option<&str>,
    body: &[u8],
) -> Result<String, TokenFailure> {
    let told = retry_after_ms(retry_after);
    if !(200..300).contains(&status) {
        return Err(TokenFailure {
            status,
            code: "assertion_endpoint_error".into(),
            description: format!("the assertion endpoint answered HTTP {status}"),
            retry_after_ms: told,
        });
    }
    let malformed = |why: &str| TokenFailure {
        status,
        code: "malformed_assertion".into(),
        description: why.to_string(),
        retry_after_ms: told,
    };
    let text = match response {
        AssertionResponse::Text => {
            let text = std::str::from_utf8(body)
                .map_err(|_| malformed("the assertion endpoint's answer is not UTF-8 text"))?
                .trim();
            // Tolerate a JSON string ("eyJ...").
            text.strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .unwrap_or(text)
                .to_string()
        }
        AssertionResponse::JsonField(field) => {
            let v: serde_json::Value = serde_json::from_slice(body)
                .map_err(|_| malformed("the assertion endpoint's answer is not JSON"))?;
            v.get(field.as_str())
                .and_then(|f| f.as_str())
                .ok_or_else(|| {
                    malformed(&format!(
                        "the assertion endpoint's JSON answer has no string field {field:?}"
                    ))
                })?
                .trim()
                .to_string()
        }
    };
    if !is_compact_jwt(&text) {
        return Err(malformed(
            "the assertion endpoint's answer is not a JWT (three base64url parts)",
        ));
    }
    Ok(text)
}

/// A compact JWS: three non-empty base64url segments. Also guarantees the value is safe in a
/// form body and a log-free error.
pub fn is_compact_jwt(text: &str) -> bool {
    text.len() <= MAX_ASSERTION_LEN
        && text.split('.').count() == 3
        && text.split('.').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJhcGk6Ly9BenVyZUFEVG9rZW5FeGNoYW5nZSJ9.c2ln";

    #[test]
    fn request_shape() {
        let r = assertion_request(
            "oidc",
            "issuer.local:8080",
            "/token?aud=x",
            Some("Bearer k"),
            700,
        );
        assert_eq!(r.method, "GET");
        assert_eq!(r.cluster, "oidc");
        assert_eq!(r.authority, "issuer.local:8080");
        assert_eq!(r.path, "/token?aud=x");
        assert_eq!(r.timeout_ms, 700);
        assert!(r
            .headers
            .contains(&("authorization", "Bearer k".to_string())));
        assert!(!format!("{r:?}").contains("Bearer k"));
        let r = assertion_request("oidc", "a", "/", None, 1);
        assert!(!r.headers.iter().any(|(k, _)| *k == "authorization"));
    }

    #[test]
    fn text_and_json_answers() {
        let t = AssertionResponse::Text;
        assert_eq!(
            extract_assertion(&t, 200, None, format!("{JWT}\n").as_bytes()).unwrap(),
            JWT
        );
        assert_eq!(
            extract_assertion(&t, 200, None, format!("\"{JWT}\"").as_bytes()).unwrap(),
            JWT
        );
        let j = AssertionResponse::JsonField("value".into());
        let body = serde_json::json!({"count": 1, "value": JWT}).to_string();
        assert_eq!(
            extract_assertion(&j, 200, None, body.as_bytes()).unwrap(),
            JWT
        );
        for (resp, body) in [
            (&t, "not a jwt"),
            (&t, "a.b"),
            (&t, "a..c"),
            (&t, "a.b.c\r\nx: y"),
            (&j, "{}"),
            (&j, r#"{"value": 5}"#),
            (&j, "nope"),
        ] {
            let e = extract_assertion(resp, 200, None, body.as_bytes()).unwrap_err();
            assert_eq!(e.code, "malformed_assertion", "{body}");
            assert!(!e.description.contains(body) || body.len() < 6, "{e:?}");
        }
        let e = extract_assertion(&t, 200, None, &[0xff, 0xfe]).unwrap_err();
        assert_eq!(e.code, "malformed_assertion");
    }

    #[test]
    fn endpoint_errors_do_not_echo_the_body() {
        let e = extract_assertion(&AssertionResponse::Text, 403, Some("9"), JWT.as_bytes())
            .unwrap_err();
        assert_eq!(e.status, 403);
        assert_eq!(e.code, "assertion_endpoint_error");
        assert_eq!(e.retry_after_ms, Some(9000));
        assert!(!e.summary().contains("eyJ"));
    }
}
