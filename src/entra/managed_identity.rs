//! Managed identity tokens: Azure IMDS and the App Service / Container Apps identity endpoint
//! (AZURE-WIRE.md section 2; Microsoft Learn, "How to use managed identities for Azure
//! resources on an Azure VM to acquire an access token" and "Managed identities for App
//! Service and Azure Functions", REST protocol).
//!
//! - IMDS: `GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=...`, header
//!   `Metadata: true`; user-assigned selectors `client_id`, `object_id`, `msi_res_id`. Numbers in
//!   the answer are strings. Retry 404, 429 and 5xx with back-off, 410 after up to 70 s, never
//!   quickly after another 4xx.
//! - App Service / Container Apps: `GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=...`,
//!   header `X-IDENTITY-HEADER: {IDENTITY_HEADER}`; selectors `client_id`, `principal_id`,
//!   `mi_res_id`; the answer has `expires_on` only.

use super::{
    error_from_body, parse_success, retry_after_ms, CalloutRequest, TokenFailure, TokenGrant,
};
use crate::entra::credential::{IdentitySelector, ManagedIdentity, ManagedIdentityEndpoint};

pub const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
pub const IMDS_API_VERSION: &str = "2018-02-01";
pub const APP_SERVICE_API_VERSION: &str = "2019-08-01";
/// IMDS answers 410 while it is being updated: "retry after up to 70 seconds".
pub const IMDS_GONE_RETRY_MS: u64 = 70_000;
/// A 4xx that retrying will not fix (unknown identity, bad resource): do not try again soon.
pub const NON_RETRYABLE_RETRY_MS: u64 = 30_000;

/// The `resource` parameter of a scope: the scope without `/.default`.
pub fn resource_for_scope(scope: &str) -> &str {
    scope.strip_suffix("/.default").unwrap_or(scope)
}

impl ManagedIdentityEndpoint {
    /// For log lines and failures.
    pub fn label(self) -> &'static str {
        match self {
            ManagedIdentityEndpoint::Imds => "IMDS",
            ManagedIdentityEndpoint::AppService => "App Service identity endpoint",
        }
    }
}

/// The token request for `resource`. `identity_header` is the App Service endpoint's
/// `X-IDENTITY-HEADER` value (unused for IMDS).
pub fn request(
    identity: &ManagedIdentity,
    cluster: &str,
    authority: &str,
    resource: &str,
    identity_header: Option<&str>,
    timeout_ms: u64,
) -> Result<CalloutRequest, TokenFailure> {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    let (api_version, base_path) = match identity.endpoint {
        ManagedIdentityEndpoint::Imds => (IMDS_API_VERSION, IMDS_PATH),
        ManagedIdentityEndpoint::AppService => (APP_SERVICE_API_VERSION, identity.path.as_str()),
    };
    query.append_pair("api-version", api_version);
    query.append_pair("resource", resource);
    if let Some(selector) = &identity.selector {
        let (name, value) = match (identity.endpoint, selector) {
            (_, IdentitySelector::ClientId(v)) => ("client_id", v),
            (ManagedIdentityEndpoint::Imds, IdentitySelector::ObjectId(v)) => ("object_id", v),
            (ManagedIdentityEndpoint::Imds, IdentitySelector::ResourceId(v)) => ("msi_res_id", v),
            (ManagedIdentityEndpoint::AppService, IdentitySelector::ObjectId(v)) => {
                ("principal_id", v)
            }
            (ManagedIdentityEndpoint::AppService, IdentitySelector::ResourceId(v)) => {
                ("mi_res_id", v)
            }
        };
        query.append_pair(name, value);
    }
    let mut headers = vec![("accept", "application/json".to_string())];
    match identity.endpoint {
        ManagedIdentityEndpoint::Imds => headers.push(("metadata", "true".to_string())),
        ManagedIdentityEndpoint::AppService => {
            let value = identity_header.filter(|v| !v.is_empty()).ok_or_else(|| {
                TokenFailure::internal("no X-IDENTITY-HEADER value for the identity endpoint")
            })?;
            headers.push(("x-identity-header", value.to_string()));
        }
    }
    let separator = if base_path.contains('?') { '&' } else { '?' };
    Ok(CalloutRequest {
        cluster: cluster.to_string(),
        method: "GET",
        authority: authority.to_string(),
        path: format!("{base_path}{separator}{}", query.finish()),
        headers,
        body: Vec::new(),
        timeout_ms,
    })
}

/// Reads a managed identity endpoint's answer, applying IMDS's retry guidance to failures.
pub fn parse_response(
    endpoint: ManagedIdentityEndpoint,
    status: u32,
    retry_after: Option<&str>,
    body: &[u8],
    now_s: u64,
) -> Result<TokenGrant, TokenFailure> {
    let told = retry_after_ms(retry_after);
    if (200..300).contains(&status) {
        return parse_success(status, body, now_s, told);
    }
    let mut failure = error_from_body(status, body, told);
    failure.description = if failure.description.is_empty() {
        format!("{} answered HTTP {status}", endpoint.label())
    } else {
        format!("{}: {}", endpoint.label(), failure.description)
    };
    failure.retry_after_ms = match status {
        410 if endpoint == ManagedIdentityEndpoint::Imds => {
            Some(told.unwrap_or(IMDS_GONE_RETRY_MS))
        }
        // Retryable: the cache's exponential back-off, or what the endpoint asked for.
        404 | 429 | 500..=599 => told,
        400..=499 => Some(told.unwrap_or(0).max(NON_RETRYABLE_RETRY_MS)),
        _ => told,
    };
    Err(failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mi(
        endpoint: ManagedIdentityEndpoint,
        selector: Option<IdentitySelector>,
    ) -> ManagedIdentity {
        ManagedIdentity {
            endpoint,
            selector,
            path: "/msi/token".into(),
            identity_header_env: None,
        }
    }

    fn query(path: &str) -> Vec<(String, String)> {
        let q = path.split_once('?').map(|(_, q)| q).unwrap_or("");
        url::form_urlencoded::parse(q.as_bytes())
            .into_owned()
            .collect()
    }

    #[test]
    fn imds_request_shapes() {
        let sel = [
            (None, None),
            (
                Some(IdentitySelector::ClientId("c".into())),
                Some(("client_id", "c")),
            ),
            (
                Some(IdentitySelector::ObjectId("o".into())),
                Some(("object_id", "o")),
            ),
            (
                Some(IdentitySelector::ResourceId("/subscriptions/s/x".into())),
                Some(("msi_res_id", "/subscriptions/s/x")),
            ),
        ];
        for (selector, want) in sel {
            let r = request(
                &mi(ManagedIdentityEndpoint::Imds, selector),
                "imds",
                "169.254.169.254",
                "https://cognitiveservices.azure.com",
                None,
                900,
            )
            .unwrap();
            assert_eq!(r.method, "GET");
            assert_eq!(r.cluster, "imds");
            assert_eq!(r.authority, "169.254.169.254");
            assert_eq!(r.timeout_ms, 900);
            assert!(
                r.path.starts_with("/metadata/identity/oauth2/token?"),
                "{}",
                r.path
            );
            assert!(r.body.is_empty());
            assert!(r.headers.contains(&("metadata", "true".to_string())));
            let q = query(&r.path);
            assert!(q.contains(&("api-version".into(), "2018-02-01".into())));
            assert!(q.contains(&(
                "resource".into(),
                "https://cognitiveservices.azure.com".into()
            )));
            assert_eq!(q.len(), 2 + usize::from(want.is_some()));
            if let Some((k, v)) = want {
                assert!(q.contains(&(k.to_string(), v.to_string())), "{q:?}");
            }
        }
    }

    #[test]
    fn app_service_request_shapes() {
        for (selector, want) in [
            (IdentitySelector::ClientId("c".into()), ("client_id", "c")),
            (
                IdentitySelector::ObjectId("p".into()),
                ("principal_id", "p"),
            ),
            (
                IdentitySelector::ResourceId("/r".into()),
                ("mi_res_id", "/r"),
            ),
        ] {
            let r = request(
                &mi(ManagedIdentityEndpoint::AppService, Some(selector)),
                "identity",
                "localhost:42356",
                "api://AzureADTokenExchange",
                Some("hdr-value"),
                1000,
            )
            .unwrap();
            assert!(r.path.starts_with("/msi/token?"), "{}", r.path);
            assert!(r
                .headers
                .contains(&("x-identity-header", "hdr-value".to_string())));
            assert!(!r.headers.iter().any(|(k, _)| *k == "metadata"));
            let q = query(&r.path);
            assert!(q.contains(&("api-version".into(), "2019-08-01".into())));
            assert!(q.contains(&("resource".into(), "api://AzureADTokenExchange".into())));
            assert!(
                q.contains(&(want.0.to_string(), want.1.to_string())),
                "{q:?}"
            );
            assert!(!format!("{r:?}").contains("hdr-value"));
        }
        let e = request(
            &mi(ManagedIdentityEndpoint::AppService, None),
            "identity",
            "localhost:1",
            "r",
            None,
            1,
        )
        .unwrap_err();
        assert_eq!(e.code, "internal_error");
    }

    #[test]
    fn resource_strips_default_suffix() {
        assert_eq!(
            resource_for_scope("https://cognitiveservices.azure.com/.default"),
            "https://cognitiveservices.azure.com"
        );
        assert_eq!(
            resource_for_scope("api://AzureADTokenExchange"),
            "api://AzureADTokenExchange"
        );
    }

    #[test]
    fn imds_success_with_string_numbers() {
        let body = br#"{"access_token":"eyJ0.eyJ1.sig","client_id":"c","expires_in":"86399","expires_on":"1506484173","ext_expires_in":"86399","not_before":"1506397473","resource":"https://cognitiveservices.azure.com","token_type":"Bearer"}"#;
        let g = parse_response(ManagedIdentityEndpoint::Imds, 200, None, body, 0).unwrap();
        assert_eq!(g.expires_in_s, 86399);
        assert_eq!(g.access_token, "eyJ0.eyJ1.sig");
    }

    #[test]
    fn app_service_success_with_expires_on_only() {
        let body = br#"{"access_token":"tok","expires_on":"1700003600","resource":"r","token_type":"Bearer","client_id":"c"}"#;
        let g = parse_response(
            ManagedIdentityEndpoint::AppService,
            200,
            None,
            body,
            1_700_000_000,
        )
        .unwrap();
        assert_eq!(g.expires_in_s, 3600);
        // A number works too; an expiry in the past does not.
        let body = br#"{"access_token":"tok","expires_on":1700003600,"token_type":"Bearer"}"#;
        assert!(parse_response(
            ManagedIdentityEndpoint::AppService,
            200,
            None,
            body,
            1_700_000_000
        )
        .is_ok());
        let e = parse_response(
            ManagedIdentityEndpoint::AppService,
            200,
            None,
            body,
            1_800_000_000,
        )
        .unwrap_err();
        assert_eq!(e.code, "malformed_token_response");
    }

    #[test]
    fn imds_retry_rules() {
        let imds = ManagedIdentityEndpoint::Imds;
        let e = parse_response(imds, 410, None, b"", 0).unwrap_err();
        assert_eq!(e.retry_after_ms, Some(70_000));
        assert_eq!(e.status, 410);
        let e = parse_response(imds, 410, Some("5"), b"", 0).unwrap_err();
        assert_eq!(e.retry_after_ms, Some(5_000));
        for status in [404, 429, 500, 503] {
            let e = parse_response(imds, status, None, b"oops", 0).unwrap_err();
            assert_eq!(e.retry_after_ms, None, "{status}: back-off of the cache");
            let e = parse_response(imds, status, Some("3"), b"", 0).unwrap_err();
            assert_eq!(e.retry_after_ms, Some(3_000));
        }
        let body = br#"{"error":"invalid_request","error_description":"Identity not found"}"#;
        let e = parse_response(imds, 400, None, body, 0).unwrap_err();
        assert_eq!(e.retry_after_ms, Some(NON_RETRYABLE_RETRY_MS));
        assert_eq!(e.code, "invalid_request");
        assert_eq!(e.description, "IMDS: Identity not found");
        assert_eq!(
            e.summary(),
            "HTTP 400 invalid_request: IMDS: Identity not found"
        );
    }

    #[test]
    fn aadsts_codes_in_managed_identity_errors() {
        let body = br#"{"error":"invalid_resource","error_description":"AADSTS500011: The resource principal named api://nope was not found in the tenant.\r\nTrace ID: x","error_codes":[500011]}"#;
        let e = parse_response(ManagedIdentityEndpoint::Imds, 400, None, body, 0).unwrap_err();
        assert_eq!(e.code, "AADSTS500011");
        assert!(
            e.description
                .contains("AADSTS500011: The resource principal"),
            "{}",
            e.description
        );
        assert!(!e.description.contains("Trace ID"));
        // App Service style error objects; code found in the text.
        let body = br#"{"statusCode":400,"message":"AADSTS700016: Application with identifier 'x' was not found."}"#;
        let e =
            parse_response(ManagedIdentityEndpoint::AppService, 400, None, body, 0).unwrap_err();
        assert_eq!(e.code, "AADSTS700016");
        assert!(e
            .description
            .starts_with("App Service identity endpoint: AADSTS700016"));
        let body = br#"{"error":{"code":"UnauthorizedRequest","message":"bad header"}}"#;
        let e =
            parse_response(ManagedIdentityEndpoint::AppService, 401, None, body, 0).unwrap_err();
        assert_eq!(e.code, "UnauthorizedRequest");
        assert_eq!(e.description, "App Service identity endpoint: bad header");
    }
}
