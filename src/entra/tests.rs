//! Token fetches of every credential kind: the requests each step sends, how answers and
//! errors are read (AADSTS codes, throttling, garbage), and that no description carries a JWT.

use super::assertion::tests::{verify_jwt, CERT, KEY_PKCS8};
use super::*;
use crate::config::{resolve_secrets, Config};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde_json::json;

const NOW: u64 = 1_700_000_000;
const MI_JWT: &str = "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJhcGk6Ly9BenVyZUFEVG9rZW5FeGNoYW5nZSJ9.bWktc2ln";

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
    let mi = format!(r#"{{"access_token":"{MI_JWT}","expires_in":"60","token_type":"Bearer"}}"#);
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
    let g =
        parse_token_response(200, None, br#"{"access_token":"x","expires_in":3599.0}"#, 0).unwrap();
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
        let status =
            [200, 201, 400, 401, 404, 410, 429, 500, 503, 0, 999][(rng.next_u32() % 11) as usize];
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
