//! Unit tests through real HTTP (a raw HTTP/1.1 client over `std::net::TcpStream`).

use crate::crypto::{pem_blocks, Jwt};
use crate::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::signature::{RandomizedSigner as _, SignatureEncoding as _, Signer as _};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const SECONDARY_KEY: &str = include_str!("../keys/entra-secondary-TEST-ONLY.key.pem");
const SECONDARY_CERT: &str = include_str!("../keys/entra-secondary-TEST-ONLY.cert.pem");
const PRIMARY_KEY: &str = include_str!("../keys/entra-primary-TEST-ONLY.key.pem");
const TOKEN_PATH: &str = "/11111111-1111-1111-1111-111111111111/oauth2/v2.0/token";

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The connection ended before a complete answer.
    truncated: bool,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request (`Connection: close`) and reads everything. None: no answer at all.
fn send(
    standin: &StandIn,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Resp> {
    let mut s = TcpStream::connect(standin.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nhost: login.example\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let mut errored = false;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(_) => {
                errored = true;
                break;
            }
        }
    }
    parse(&raw, errored)
}

fn parse(raw: &[u8], errored: bool) -> Option<Resp> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let (body, complete) = if chunked {
        dechunk(rest)
    } else if let Some(len) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        (rest[..rest.len().min(len)].to_vec(), rest.len() >= len)
    } else {
        (rest.to_vec(), true)
    };
    Some(Resp {
        status,
        headers,
        body,
        truncated: errored || !complete,
    })
}

fn dechunk(mut data: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let Ok(size) = usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16)
        else {
            return (out, false);
        };
        data = &data[eol + 2..];
        if size == 0 {
            return (out, true);
        }
        if data.len() < size + 2 {
            out.extend_from_slice(&data[..data.len().min(size)]);
            return (out, false);
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn start(cfg: StandInConfig) -> StandIn {
    StandIn::start_blocking("127.0.0.1:0".parse().unwrap(), cfg).unwrap()
}

fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
        .into_bytes()
}

fn token_request(standin: &StandIn, pairs: &[(&str, &str)]) -> Resp {
    send(
        standin,
        "POST",
        TOKEN_PATH,
        &[("content-type", "application/x-www-form-urlencoded")],
        &form(pairs),
    )
    .unwrap()
}

fn secret_token(standin: &StandIn) -> Resp {
    token_request(
        standin,
        &[
            ("client_id", DEFAULT_CLIENT_ID),
            ("client_secret", DEFAULT_CLIENT_SECRET),
            ("scope", "https://cognitiveservices.azure.com/.default"),
            ("grant_type", "client_credentials"),
        ],
    )
}

fn claims_of(token: &str) -> Value {
    Value::Object(Jwt::decode(token).unwrap().claims)
}

fn assert_aad_error(r: &Resp, status: u16, error: &str, code: u64) {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"], error, "{v}");
    assert_eq!(v["error_codes"], json!([code]), "{v}");
    let d = v["error_description"].as_str().unwrap();
    assert!(d.starts_with(&format!("AADSTS{code}: ")), "{d}");
    assert!(
        d.contains(" Trace ID: ") && d.contains(" Correlation ID: ") && d.contains(" Timestamp: ")
    );
    for k in ["timestamp", "trace_id", "correlation_id"] {
        assert!(v[k].is_string(), "{k} in {v}");
    }
}

fn chat_body(stream: bool, include_usage: bool) -> Vec<u8> {
    let mut v = json!({"messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Say hello to the world"}]},
    ]});
    if stream {
        v["stream"] = json!(true);
        if include_usage {
            v["stream_options"] = json!({"include_usage": true});
        }
    }
    v.to_string().into_bytes()
}

const CHAT: &str = "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21";

fn chat_with(standin: &StandIn, auth: &str, body: &[u8]) -> Resp {
    send(
        standin,
        "POST",
        CHAT,
        &[
            ("authorization", auth),
            ("content-type", "application/json"),
        ],
        body,
    )
    .unwrap()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// (event name or "", data) of each SSE event.
fn sse(body: &str) -> Vec<(String, String)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = String::new();
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = d.to_string();
                }
            }
            (name, data)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Token endpoint

#[test]
fn token_endpoint_issues_a_v1_app_token_for_the_secret() {
    let standin = start(StandInConfig::default());
    let r = secret_token(&standin);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 3599);
    assert_eq!(v["ext_expires_in"], 3599);
    let token = v["access_token"].as_str().unwrap();
    let jwt = Jwt::decode(token).unwrap();
    assert_eq!(jwt.header_str("alg"), Some("RS256"));
    assert_eq!(jwt.header_str("typ"), Some("JWT"));
    assert_eq!(jwt.header_str("kid"), Some(standin.kid().as_str()));
    assert_eq!(jwt.header_str("x5t"), Some(standin.kid().as_str()));
    let c = claims_of(token);
    assert_eq!(c["aud"], "https://cognitiveservices.azure.com");
    assert_eq!(
        c["iss"],
        format!("https://sts.windows.net/{DEFAULT_TENANT_ID}/")
    );
    assert_eq!(c["appid"], DEFAULT_CLIENT_ID);
    assert_eq!(c["appidacr"], "1");
    assert_eq!(c["tid"], DEFAULT_TENANT_ID);
    assert_eq!(c["ver"], "1.0");
    assert_eq!(c["idtyp"], "app");
    assert_eq!(c["sub"], c["oid"]);
    assert_eq!(
        c["exp"].as_i64().unwrap() - c["nbf"].as_i64().unwrap(),
        3599
    );
    assert!(standin.verify_access_token(token).is_ok());
    // Unique tokens.
    let again = secret_token(&standin).json();
    assert_ne!(
        claims_of(again["access_token"].as_str().unwrap())["uti"],
        c["uti"]
    );
    // Recorded with the form.
    let reqs = standin.requests_of(EndpointKind::Token);
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[0].form_value("client_id").as_deref(),
        Some(DEFAULT_CLIENT_ID)
    );
    assert_eq!(
        reqs[0].header("Content-Type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(reqs[0].outcome_status, 200);
    assert_eq!(reqs[0].path, TOKEN_PATH);
}

#[test]
fn token_endpoint_refuses_bad_secret_unknown_client_tenant_and_scope() {
    let standin = start(StandInConfig {
        token_lifetime_secs: 4,
        ..StandInConfig::default()
    });
    let base = |secret: &str, client: &str, scope: &str| {
        token_request(
            &standin,
            &[
                ("client_id", client),
                ("client_secret", secret),
                ("scope", scope),
                ("grant_type", "client_credentials"),
            ],
        )
    };
    let scope = "https://cognitiveservices.azure.com/.default";
    assert_aad_error(
        &base("wrong", DEFAULT_CLIENT_ID, scope),
        401,
        "invalid_client",
        7000215,
    );
    assert_aad_error(
        &base(
            DEFAULT_CLIENT_SECRET,
            "99999999-0000-0000-0000-000000000000",
            scope,
        ),
        400,
        "unauthorized_client",
        700016,
    );
    assert_aad_error(
        &base(
            DEFAULT_CLIENT_SECRET,
            DEFAULT_CLIENT_ID,
            "https://cognitiveservices.azure.com",
        ),
        400,
        "invalid_scope",
        1002012,
    );
    assert_aad_error(
        &base(
            DEFAULT_CLIENT_SECRET,
            DEFAULT_CLIENT_ID,
            "https://management.azure.com/.default",
        ),
        400,
        "invalid_scope",
        70011,
    );
    // Short lifetime is honoured.
    let ok = base(
        DEFAULT_CLIENT_SECRET,
        DEFAULT_CLIENT_ID,
        "https://cognitiveservices.azure.com//.default",
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["expires_in"], 4);
    // Wrong tenant.
    let r = send(
        &standin,
        "POST",
        "/other-tenant/oauth2/v2.0/token",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("client-request-id", "corr-1"),
        ],
        &form(&[
            ("client_id", DEFAULT_CLIENT_ID),
            ("client_secret", DEFAULT_CLIENT_SECRET),
            ("scope", scope),
            ("grant_type", "client_credentials"),
        ]),
    )
    .unwrap();
    assert_aad_error(&r, 400, "invalid_request", 90002);
    assert_eq!(r.json()["correlation_id"], "corr-1");
    // Wrong grant, missing pieces, no client authentication, GET.
    let r = token_request(
        &standin,
        &[("client_id", DEFAULT_CLIENT_ID), ("grant_type", "password")],
    );
    assert_aad_error(&r, 400, "unsupported_grant_type", 70003);
    let r = token_request(
        &standin,
        &[
            ("client_id", DEFAULT_CLIENT_ID),
            ("scope", scope),
            ("grant_type", "client_credentials"),
        ],
    );
    assert_aad_error(&r, 401, "invalid_client", 7000216);
    let r = send(&standin, "GET", TOKEN_PATH, &[], b"").unwrap();
    assert_aad_error(&r, 400, "invalid_request", 900561);
    let r = send(
        &standin,
        "POST",
        TOKEN_PATH,
        &[("content-type", "application/json")],
        b"{}",
    )
    .unwrap();
    assert_aad_error(&r, 400, "invalid_request", 900144);
}

/// A client assertion signed with the secondary TEST-ONLY key.
fn assertion(alg: &str, header_extra: Value, claims: Value, key_pem: &str) -> String {
    let mut header = json!({"alg": alg, "typ": "JWT"});
    if let (Value::Object(h), Value::Object(extra)) = (&mut header, header_extra) {
        h.extend(extra);
    }
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(key_pem).unwrap();
    let sig = if alg == "PS256" {
        rsa::pss::SigningKey::<Sha256>::new(key)
            .sign_with_rng(&mut rand::thread_rng(), input.as_bytes())
            .to_vec()
    } else {
        rsa::pkcs1v15::SigningKey::<Sha256>::new(key)
            .sign(input.as_bytes())
            .to_vec()
    };
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

#[test]
fn token_endpoint_verifies_certificate_assertions() {
    let cert_client = "55555555-5555-5555-5555-555555555555";
    let standin = start(StandInConfig {
        clients: vec![ClientRegistration::with_certificate(
            cert_client,
            SECONDARY_CERT,
        )],
        ..StandInConfig::default()
    });
    let der = &pem_blocks(SECONDARY_CERT)[0].der;
    let s256 = URL_SAFE_NO_PAD.encode(Sha256::digest(der));
    let s1 = URL_SAFE_NO_PAD.encode(<sha1::Sha1 as sha2::Digest>::digest(der));
    let now = util::now_secs();
    let claims = |aud: &str, nbf: i64, exp: i64| json!({"aud": aud, "iss": cert_client, "sub": cert_client, "jti": util::uuid_v4(), "nbf": nbf, "iat": nbf, "exp": exp});
    let aud = format!("https://login.microsoftonline.com/{DEFAULT_TENANT_ID}/oauth2/v2.0/token");
    let post = |a: &str| {
        token_request(
            &standin,
            &[
                ("client_id", cert_client),
                ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE),
                ("client_assertion", a),
                ("scope", "https://cognitiveservices.azure.com/.default"),
                ("grant_type", "client_credentials"),
            ],
        )
    };
    // PS256 + x5t#S256, and RS256 + x5t: accepted.
    let good = assertion(
        "PS256",
        json!({"x5t#S256": s256}),
        claims(&aud, now, now + 600),
        SECONDARY_KEY,
    );
    let r = post(&good);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        claims_of(r.json()["access_token"].as_str().unwrap())["appidacr"],
        "2"
    );
    let r = post(&assertion(
        "RS256",
        json!({"x5t": s1}),
        claims(&aud, now, now + 300),
        SECONDARY_KEY,
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    // Any host in aud, but the path must match.
    let other_host = format!("https://127.0.0.1:8089/{DEFAULT_TENANT_ID}/oauth2/v2.0/token");
    assert_eq!(
        post(&assertion(
            "PS256",
            json!({"x5t#S256": s256}),
            claims(&other_host, now, now + 60),
            SECONDARY_KEY
        ))
        .status,
        200
    );
    let bad_aud = format!("https://login.microsoftonline.com/{DEFAULT_TENANT_ID}/oauth2/token");
    assert_aad_error(
        &post(&assertion(
            "PS256",
            json!({"x5t#S256": s256}),
            claims(&bad_aud, now, now + 60),
            SECONDARY_KEY,
        )),
        400,
        "invalid_client",
        50027,
    );
    // Missing / wrong thumbprint, wrong key, too long, expired, no jti.
    assert_aad_error(
        &post(&assertion(
            "PS256",
            json!({}),
            claims(&aud, now, now + 60),
            SECONDARY_KEY,
        )),
        401,
        "invalid_client",
        700027,
    );
    assert_aad_error(
        &post(&assertion(
            "PS256",
            json!({"x5t#S256": s1}),
            claims(&aud, now, now + 60),
            SECONDARY_KEY,
        )),
        401,
        "invalid_client",
        700027,
    );
    assert_aad_error(
        &post(&assertion(
            "PS256",
            json!({"x5t#S256": s256}),
            claims(&aud, now, now + 60),
            PRIMARY_KEY,
        )),
        401,
        "invalid_client",
        700027,
    );
    assert_aad_error(
        &post(&assertion(
            "PS256",
            json!({"x5t#S256": s256}),
            claims(&aud, now, now + 601),
            SECONDARY_KEY,
        )),
        400,
        "invalid_client",
        700024,
    );
    assert_aad_error(
        &post(&assertion(
            "PS256",
            json!({"x5t#S256": s256}),
            claims(&aud, now - 700, now - 100),
            SECONDARY_KEY,
        )),
        400,
        "invalid_client",
        700024,
    );
    let mut no_jti = claims(&aud, now, now + 60);
    no_jti.as_object_mut().unwrap().remove("jti");
    assert_aad_error(
        &post(&assertion(
            "PS256",
            json!({"x5t#S256": s256}),
            no_jti,
            SECONDARY_KEY,
        )),
        400,
        "invalid_client",
        50027,
    );
    assert_aad_error(&post("not.a.jwt"), 400, "invalid_client", 50027);
}

#[test]
fn managed_identity_token_works_as_federated_assertion() {
    let standin = start(StandInConfig::default());
    let r = send(
        &standin,
        "GET",
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=api://AzureADTokenExchange",
        &[("metadata", "true")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let mi_token = r.json()["access_token"].as_str().unwrap().to_string();
    let c = claims_of(&mi_token);
    assert_eq!(c["aud"], TOKEN_EXCHANGE_AUDIENCE);
    assert_eq!(c["iss"], v2_issuer(DEFAULT_TENANT_ID));
    assert_eq!(c["sub"], DEFAULT_MI_OBJECT_ID);
    // Not usable on the data plane.
    assert!(standin.verify_access_token(&mi_token).is_err());
    let exchange = |a: &str| {
        token_request(
            &standin,
            &[
                ("client_id", DEFAULT_CLIENT_ID),
                ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE),
                ("client_assertion", a),
                ("scope", "https://cognitiveservices.azure.com/.default"),
                ("grant_type", "client_credentials"),
            ],
        )
    };
    let r = exchange(&mi_token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(standin
        .verify_access_token(r.json()["access_token"].as_str().unwrap())
        .is_ok());
    // Unregistered subject, wrong audience, foreign signature.
    let now = util::now_secs();
    let mut claims = json!({"aud": TOKEN_EXCHANGE_AUDIENCE, "iss": v2_issuer(DEFAULT_TENANT_ID), "sub": "someone-else", "exp": now + 600, "nbf": now});
    assert_aad_error(
        &exchange(&standin.sign_token(claims.clone())),
        400,
        "invalid_client",
        70021,
    );
    claims["sub"] = json!(DEFAULT_MI_OBJECT_ID);
    assert_eq!(exchange(&standin.sign_token(claims.clone())).status, 200);
    assert_aad_error(
        &exchange(&standin.sign_token_with_foreign_key(claims.clone())),
        401,
        "invalid_client",
        700027,
    );
    claims["aud"] = json!("https://cognitiveservices.azure.com");
    assert_aad_error(
        &exchange(&standin.sign_token(claims)),
        400,
        "invalid_client",
        700212,
    );
}

const WI_CLIENT: &str = "55555555-5555-5555-5555-555555555555";

/// A stand-in whose only client trusts the Kubernetes issuer's tokens for
/// `llm-gateway/llm-gateway` (AKS workload identity), with `audience` on its credential.
fn workload_identity_standin(issuer: &KubernetesIssuer, audience: &str) -> StandIn {
    let mut client = issuer.federated_client(WI_CLIENT, "llm-gateway", "llm-gateway");
    client.federated_audience = audience.to_string();
    start(StandInConfig {
        clients: vec![client],
        external_issuers: vec![issuer.trust()],
        ..StandInConfig::default()
    })
}

fn exchange(standin: &StandIn, assertion: &str) -> Resp {
    token_request(
        standin,
        &[
            ("client_id", WI_CLIENT),
            ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE),
            ("client_assertion", assertion),
            ("scope", "https://cognitiveservices.azure.com/.default"),
            ("grant_type", "client_credentials"),
        ],
    )
}

#[test]
fn kubernetes_issuer_tokens_look_like_projected_service_account_tokens() {
    let issuer = KubernetesIssuer::new().unwrap();
    let token = issuer.service_account_token("llm-gateway", "llm-gateway", 3600);
    let jwt = Jwt::decode(&token).unwrap();
    assert_eq!(jwt.alg(), "RS256");
    assert_eq!(jwt.header_str("kid"), Some(issuer.kid()));
    assert!(jwt.header_str("typ").is_none() && jwt.header_str("x5t").is_none());
    let c = claims_of(&token);
    assert_eq!(c["iss"], DEFAULT_KUBERNETES_ISSUER);
    assert_eq!(c["sub"], "system:serviceaccount:llm-gateway:llm-gateway");
    assert_eq!(c["aud"], json!([TOKEN_EXCHANGE_AUDIENCE]));
    assert_eq!(c["kubernetes.io"]["serviceaccount"]["name"], "llm-gateway");
    assert_eq!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
        3600
    );
    // Every token is new (the kubelet rotates the file with a fresh token).
    assert_ne!(
        token,
        issuer.service_account_token("llm-gateway", "llm-gateway", 3600)
    );
    let jwks = issuer.jwks_json();
    assert_eq!(jwks["keys"][0]["kid"], issuer.kid());
    assert_eq!(jwks["keys"][0]["kty"], "RSA");
}

#[test]
fn entra_accepts_only_the_trusted_issuers_token_for_the_service_account() {
    let issuer = KubernetesIssuer::new().unwrap();
    let standin = workload_identity_standin(&issuer, TOKEN_EXCHANGE_AUDIENCE);
    let r = exchange(
        &standin,
        &issuer.service_account_token("llm-gateway", "llm-gateway", 3600),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let access = r.json()["access_token"].as_str().unwrap().to_string();
    assert!(standin.verify_access_token(&access).is_ok());
    assert_eq!(claims_of(&access)["appid"], WI_CLIENT);
    assert_eq!(claims_of(&access)["appidacr"], "2");

    // Another service account of the same cluster: no record for that subject.
    let other_sa = issuer.service_account_token("llm-gateway", "default", 3600);
    assert_aad_error(&exchange(&standin, &other_sa), 400, "invalid_client", 70021);
    let other_ns = issuer.service_account_token("default", "llm-gateway", 3600);
    assert_aad_error(&exchange(&standin, &other_ns), 400, "invalid_client", 70021);
    // Another cluster (issuer), even with the same key.
    let other_cluster =
        KubernetesIssuer::with_issuer("https://westeurope.oic.prod-aks.azure.com/x/y/")
            .unwrap()
            .service_account_token("llm-gateway", "llm-gateway", 3600);
    let r = exchange(&standin, &other_cluster);
    assert_aad_error(&r, 400, "invalid_client", 700211);
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("westeurope.oic.prod-aks.azure.com"));
    // Wrong audience.
    let mut claims = issuer.service_account_claims("llm-gateway", "llm-gateway", 3600);
    claims["aud"] = json!(["https://kubernetes.default.svc"]);
    assert_aad_error(
        &exchange(&standin, &issuer.sign(&claims)),
        400,
        "invalid_client",
        700212,
    );
    // Right claims, wrong key: the issuer's kid, a foreign signature; or the stand-in's own
    // Entra key (trusted for managed identities, not for this issuer).
    let claims = issuer.service_account_claims("llm-gateway", "llm-gateway", 3600);
    assert_aad_error(
        &exchange(&standin, &issuer.sign_with_foreign_key(&claims)),
        401,
        "invalid_client",
        700027,
    );
    assert_aad_error(
        &exchange(&standin, &standin.sign_token(claims.clone())),
        401,
        "invalid_client",
        700027,
    );
    // Expired (a file the kubelet stopped rotating).
    let mut expired = claims.clone();
    expired["exp"] = json!(util::now_secs() - 10);
    assert_aad_error(
        &exchange(&standin, &issuer.sign(&expired)),
        400,
        "invalid_client",
        700024,
    );
    // The client has no secret: a secret is no way in.
    let r = token_request(
        &standin,
        &[
            ("client_id", WI_CLIENT),
            ("client_secret", DEFAULT_CLIENT_SECRET),
            ("scope", "https://cognitiveservices.azure.com/.default"),
            ("grant_type", "client_credentials"),
        ],
    );
    assert_eq!(r.status, 401, "{}", r.text());
    // Without the issuer's keys, Entra cannot verify its tokens at all.
    let untrusting = start(StandInConfig {
        clients: vec![issuer.federated_client(WI_CLIENT, "llm-gateway", "llm-gateway")],
        ..StandInConfig::default()
    });
    assert_aad_error(
        &exchange(
            &untrusting,
            &issuer.service_account_token("llm-gateway", "llm-gateway", 3600),
        ),
        401,
        "invalid_client",
        700027,
    );
}

#[test]
fn sovereign_cloud_federated_credentials_expect_their_own_audience() {
    let issuer = KubernetesIssuer::new().unwrap();
    let standin = workload_identity_standin(&issuer, "api://AzureADTokenExchangeUSGov");
    let mut claims = issuer.service_account_claims("llm-gateway", "llm-gateway", 3600);
    assert_aad_error(
        &exchange(&standin, &issuer.sign(&claims)),
        400,
        "invalid_client",
        700212,
    );
    claims["aud"] = json!(["api://AzureADTokenExchangeUSGov"]);
    assert_eq!(exchange(&standin, &issuer.sign(&claims)).status, 200);
}

// ---------------------------------------------------------------------------------------------
// IMDS, App Service, JWKS

#[test]
fn imds_answers_string_numbers_and_checks_header_and_identity() {
    let standin = start(StandInConfig {
        token_lifetime_secs: 1200,
        ..StandInConfig::default()
    });
    let path = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://cognitiveservices.azure.com";
    let r = send(&standin, "GET", path, &[], b"").unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"error": "invalid_request", "error_description": "Required metadata header not specified"})
    );
    let r = send(&standin, "GET", path, &[("Metadata", "true")], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["expires_in"], "1200");
    assert_eq!(v["refresh_token"], "");
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["resource"], "https://cognitiveservices.azure.com");
    assert_eq!(v["client_id"], DEFAULT_MI_CLIENT_ID);
    let on: i64 = v["expires_on"].as_str().unwrap().parse().unwrap();
    let nb: i64 = v["not_before"].as_str().unwrap().parse().unwrap();
    assert_eq!(on - nb, 1200);
    let token = v["access_token"].as_str().unwrap();
    assert!(standin.verify_access_token(token).is_ok());
    assert_eq!(claims_of(token)["appid"], DEFAULT_MI_CLIENT_ID);
    // Selectors.
    let sel = |q: &str| {
        send(
            &standin,
            "GET",
            &format!("{path}&{q}"),
            &[("metadata", "true")],
            b"",
        )
        .unwrap()
        .status
    };
    assert_eq!(sel(&format!("client_id={DEFAULT_MI_CLIENT_ID}")), 200);
    assert_eq!(sel(&format!("object_id={DEFAULT_MI_OBJECT_ID}")), 200);
    assert_eq!(sel("client_id=00000000-0000-0000-0000-000000000000"), 400);
    let r = send(
        &standin,
        "GET",
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net",
        &[("metadata", "true")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_resource");
    // No identity at all.
    let none = start(StandInConfig {
        managed_identity: None,
        ..StandInConfig::default()
    });
    let r = send(&none, "GET", path, &[("metadata", "true")], b"").unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"error": "invalid_request", "error_description": "Identity not found"})
    );
}

#[test]
fn app_service_identity_endpoint() {
    let standin = start(StandInConfig::default());
    let path = "/msi/token?resource=https://cognitiveservices.azure.com&api-version=2019-08-01";
    assert_eq!(send(&standin, "GET", path, &[], b"").unwrap().status, 400);
    assert_eq!(
        send(&standin, "GET", path, &[("x-identity-header", "nope")], b"")
            .unwrap()
            .status,
        401
    );
    let r = send(
        &standin,
        "GET",
        path,
        &[("X-IDENTITY-HEADER", DEFAULT_IDENTITY_HEADER)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert!(v.get("expires_in").is_none());
    assert!(v["expires_on"].as_str().unwrap().parse::<i64>().is_ok());
    assert_eq!(v["client_id"], DEFAULT_MI_CLIENT_ID);
    assert!(standin
        .verify_access_token(v["access_token"].as_str().unwrap())
        .is_ok());
    assert_eq!(standin.count(EndpointKind::AppServiceIdentity), 3);
}

#[test]
fn jwks_verifies_issued_tokens() {
    let standin = start(StandInConfig::default());
    for path in [
        format!("/{DEFAULT_TENANT_ID}/discovery/v2.0/keys"),
        format!("/{DEFAULT_TENANT_ID}/discovery/keys"),
        "/common/discovery/v2.0/keys".to_string(),
    ] {
        let r = send(&standin, "GET", &path, &[], b"").unwrap();
        assert_eq!(r.status, 200, "{path}");
        let jwk = &r.json()["keys"][0];
        assert_eq!(jwk["kid"], standin.kid());
        assert_eq!(jwk["kty"], "RSA");
        let n = rsa::BigUint::from_bytes_be(
            &URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap(),
        );
        let e = rsa::BigUint::from_bytes_be(
            &URL_SAFE_NO_PAD.decode(jwk["e"].as_str().unwrap()).unwrap(),
        );
        let key = rsa::RsaPublicKey::new(n, e).unwrap();
        assert!(Jwt::decode(&standin.issue_access_token("x", 60))
            .unwrap()
            .verify_rs256(&key));
    }
    assert_eq!(standin.jwks_json()["keys"][0]["kid"], standin.kid());
    assert_eq!(
        send(
            &standin,
            "GET",
            "/unknown-tenant/discovery/v2.0/keys",
            &[],
            b""
        )
        .unwrap()
        .status,
        400
    );
    assert_eq!(standin.count(EndpointKind::Jwks), 4);
}

// ---------------------------------------------------------------------------------------------
// Data plane

#[test]
fn data_plane_rejects_bad_credentials_and_accepts_a_valid_token() {
    let standin = start(StandInConfig {
        api_keys: vec!["key-1".into()],
        ..StandInConfig::default()
    });
    let body = chat_body(false, false);
    let unauthorized = |r: Resp, reason: &str| {
        assert_eq!(r.status, 401, "{reason}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "401");
        assert_eq!(r.header("x-standin-auth-error"), Some(reason));
        assert!(r.header("x-ms-error-code").is_some());
    };
    // Missing.
    let r = send(
        &standin,
        "POST",
        CHAT,
        &[("content-type", "application/json")],
        &body,
    )
    .unwrap();
    assert_eq!(r.json()["error"]["message"], "Unauthorized. Access token is missing, invalid, audience is incorrect (https://cognitiveservices.azure.com), or have expired.");
    unauthorized(r, "missing credential");
    let now = util::now_secs();
    let mut claims = standin.access_token_claims(DEFAULT_CLIENT_ID, 3600);
    // Expired beyond the 5 minute skew (but inside it is still fine).
    claims["exp"] = json!(now - 301);
    unauthorized(
        chat_with(
            &standin,
            &bearer(&standin.sign_token(claims.clone())),
            &body,
        ),
        "expired",
    );
    claims["exp"] = json!(now - 200);
    assert_eq!(
        chat_with(
            &standin,
            &bearer(&standin.sign_token(claims.clone())),
            &body
        )
        .status,
        200
    );
    claims["exp"] = json!(now + 3600);
    // Wrong audience, wrong issuer, foreign key, not yet valid, garbage, not bearer.
    let mut c = claims.clone();
    c["aud"] = json!("https://management.azure.com");
    unauthorized(
        chat_with(&standin, &bearer(&standin.sign_token(c)), &body),
        "wrong audience",
    );
    let mut c = claims.clone();
    c["iss"] = json!("https://sts.windows.net/99999999-9999-9999-9999-999999999999/");
    unauthorized(
        chat_with(&standin, &bearer(&standin.sign_token(c)), &body),
        "wrong issuer",
    );
    unauthorized(
        chat_with(
            &standin,
            &bearer(&standin.sign_token_with_foreign_key(claims.clone())),
            &body,
        ),
        "bad signature",
    );
    let mut c = claims.clone();
    c["nbf"] = json!(now + 400);
    unauthorized(
        chat_with(&standin, &bearer(&standin.sign_token(c)), &body),
        "not yet valid",
    );
    unauthorized(
        chat_with(&standin, "Bearer abc.def.ghi", &body),
        "malformed token",
    );
    unauthorized(
        chat_with(
            &standin,
            &format!("Basic {}", standin.sign_token(claims.clone())),
            &body,
        ),
        "not a bearer token",
    );
    // A token of another Entra (secondary key) is refused; one sharing keys is accepted.
    let other = start(StandInConfig {
        signing_key: EntraKey::Secondary,
        ..StandInConfig::default()
    });
    unauthorized(
        chat_with(
            &standin,
            &bearer(&other.issue_access_token(DEFAULT_CLIENT_ID, 60)),
            &body,
        ),
        "unknown kid",
    );
    let twin = StandIn::spawn(
        "127.0.0.1:0".parse().unwrap(),
        StandInConfig::default(),
        standin.shared.keys.clone(),
    )
    .unwrap();
    assert_eq!(
        chat_with(
            &standin,
            &bearer(&twin.issue_access_token(DEFAULT_CLIENT_ID, 60)),
            &body
        )
        .status,
        200
    );
    // api-key.
    let r = send(&standin, "POST", CHAT, &[("api-key", "key-1")], &body).unwrap();
    assert_eq!(r.status, 200);
    unauthorized(
        send(&standin, "POST", CHAT, &[("api-key", "key-2")], &body).unwrap(),
        "invalid api-key",
    );
    // Valid token from the token endpoint.
    let token = secret_token(&standin).json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = chat_with(&standin, &bearer(&token), &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["model"], "gpt-4o-2024-11-20",
        "Azure names the model version"
    );
    // P = (3 + 3 words) + (3 + 5 words) = 14; C = 12.
    assert_eq!(v["usage"]["prompt_tokens"], 14);
    assert_eq!(v["usage"]["completion_tokens"], 12);
    assert_eq!(v["usage"]["total_tokens"], 26);
    assert_eq!(
        v["choices"][0]["message"]["content"],
        dataplane::ANSWER.join(" ")
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(r.header("x-standin-deployment"), Some("gpt-4o-prod"));
    for h in [
        "x-ms-region",
        "apim-request-id",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-remaining-requests",
    ] {
        assert!(r.header(h).is_some(), "{h}");
    }
    let last = standin.requests_of(EndpointKind::DataPlane).pop().unwrap();
    assert_eq!(last.outcome_status, 200);
    assert_eq!(last.query, "api-version=2024-10-21");
    assert_eq!(last.body_json().unwrap()["messages"][0]["role"], "system");
}

#[test]
fn data_plane_routes_and_validates_like_azure() {
    let standin = start(StandInConfig::default());
    let auth = bearer(&standin.issue_access_token(DEFAULT_CLIENT_ID, 600));
    let post = |path: &str, body: &[u8]| {
        send(
            &standin,
            "POST",
            path,
            &[
                ("authorization", &auth),
                ("anthropic-version", "2023-06-01"),
            ],
            body,
        )
        .unwrap()
    };
    let chat = chat_body(false, false);
    // Missing api-version, unknown deployment, wrong operation, not JSON, unknown path.
    let r = post("/openai/deployments/gpt-4o-prod/chat/completions", &chat);
    assert_eq!(
        (r.status, r.json()),
        (
            404,
            json!({"error": {"code": "404", "message": "Resource not found"}})
        )
    );
    let r = post(
        "/openai/deployments/nope/chat/completions?api-version=2024-10-21",
        &chat,
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "DeploymentNotFound");
    assert_eq!(r.header("x-ms-error-code"), Some("DeploymentNotFound"));
    let r = post(
        "/openai/deployments/text-embedding-3-small/chat/completions?api-version=2024-10-21",
        &chat,
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!("OperationNotSupported"))
    );
    let r = post(CHAT, b"not json");
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!("BadRequest"))
    );
    let r = post(
        CHAT,
        br#"{"messages":[{"role":"user","content":"hi"}],"stream_options":{"include_usage":true}}"#,
    );
    assert_eq!(r.status, 400);
    assert_eq!(post("/openai/nothing", &chat).status, 404);
    // max_tokens bounds C.
    let r = post(
        CHAT,
        br#"{"messages":[{"role":"user","content":"one two"}],"max_tokens":3}"#,
    );
    let v = r.json();
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}})
    );
    assert_eq!(v["choices"][0]["message"]["content"], "This is a");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    // v1 with the deployment in the body.
    let r = post("/openai/v1/chat/completions", br#"{"model":"gpt-4o-prod","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":2}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["completion_tokens"], 2);
    assert_eq!(
        post(
            "/openai/v1/chat/completions",
            br#"{"model":"gpt-5","messages":[{"role":"user","content":"hi"}]}"#
        )
        .status,
        404
    );
    let r = send(
        &standin,
        "GET",
        "/openai/v1/models",
        &[("authorization", &auth)],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 3);
    // Embeddings (dated, v1, Foundry).
    let r = post(
        "/openai/deployments/text-embedding-3-small/embeddings?api-version=2024-10-21",
        br#"{"input":["a b c","d"]}"#,
    );
    let v = r.json();
    assert_eq!(v["usage"], json!({"prompt_tokens": 4, "total_tokens": 4}));
    assert_eq!(v["data"][1]["index"], 1);
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 8);
    let r = post(
        "/openai/v1/embeddings",
        br#"{"model":"text-embedding-3-small","input":"a b","encoding_format":"base64"}"#,
    );
    assert!(r.json()["data"][0]["embedding"].is_string());
    let r = post(
        "/models/embeddings?api-version=2024-05-01-preview",
        br#"{"model":"text-embedding-3-small","input":"x y z"}"#,
    );
    assert_eq!(r.json()["usage"]["prompt_tokens"], 3);
    assert_eq!(
        post(
            "/models/embeddings",
            br#"{"model":"text-embedding-3-small","input":"x"}"#
        )
        .status,
        404
    );
    let r = post(
        "/models/chat/completions?api-version=2024-05-01-preview",
        br#"{"messages":[{"role":"user","content":"x"}]}"#,
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!("no_model_name"))
    );
    let r = post(
        "/models/chat/completions?api-version=2024-05-01-preview",
        br#"{"model":"gpt-4o-prod","messages":[{"role":"user","content":"x"}]}"#,
    );
    assert_eq!(r.json()["usage"]["prompt_tokens"], 4);
    // Responses API.
    let r = post("/openai/v1/responses", br#"{"model":"gpt-4o-prod","input":"hello there","instructions":"be brief","max_output_tokens":5}"#);
    assert_eq!(r.json()["usage"]["input_tokens"], 10);
    assert_eq!(r.json()["usage"]["output_tokens"], 5);
    assert_eq!(r.json()["usage"]["total_tokens"], 15);
    // Anthropic.
    let msg = br#"{"model":"claude-opus-4-5","max_tokens":100,"system":"be nice","messages":[{"role":"user","content":"hello"}]}"#;
    let r = post("/anthropic/v1/messages", msg);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(
        v["usage"],
        json!({"input_tokens": 9, "output_tokens": 12, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0})
    );
    let r = send(
        &standin,
        "POST",
        "/anthropic/v1/messages",
        &[("authorization", &auth)],
        msg,
    )
    .unwrap();
    assert_eq!((r.status, r.json()["type"].clone()), (400, json!("error")));
    let r = post(
        "/anthropic/v1/messages",
        br#"{"model":"claude-opus-4-5","messages":[{"role":"user","content":"hello"}]}"#,
    );
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert_eq!(post("/anthropic/v1/messages", br#"{"model":"gpt-4o-prod","max_tokens":5,"messages":[{"role":"user","content":"hello"}]}"#).status, 404);
    let r = post(
        "/openai/deployments/claude-opus-4-5/chat/completions?api-version=2024-10-21",
        &chat,
    );
    assert_eq!(r.status, 400);
    // x-api-key only on the Anthropic path.
    let keyed = start(StandInConfig {
        api_keys: vec!["k".into()],
        ..StandInConfig::default()
    });
    assert_eq!(
        send(
            &keyed,
            "POST",
            "/anthropic/v1/messages",
            &[("x-api-key", "k"), ("anthropic-version", "2023-06-01")],
            msg
        )
        .unwrap()
        .status,
        200
    );
    assert_eq!(
        send(&keyed, "POST", CHAT, &[("x-api-key", "k")], &chat)
            .unwrap()
            .status,
        401
    );
}

#[test]
fn streamed_chat_ends_with_usage_then_done() {
    let standin = start(StandInConfig::default());
    let auth = bearer(&standin.issue_access_token(DEFAULT_CLIENT_ID, 600));
    let r = chat_with(&standin, &auth, &chat_body(true, true));
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert!(!r.truncated);
    let events = sse(&r.text());
    let n = events.len();
    assert_eq!(events[n - 1].1, "[DONE]");
    let usage_chunk: Value = serde_json::from_str(&events[n - 2].1).unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 14);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 12);
    assert_eq!(usage_chunk["usage"]["total_tokens"], 26);
    // Azure's prompt-filter chunk, its role chunk (no token), 12 word chunks, the finish chunk.
    assert_eq!(n, 1 + 1 + 12 + 1 + 1 + 1);
    let text: String = events[1..14]
        .iter()
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).unwrap()["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(text, dataplane::ANSWER.join(" "));
    let role: Value = serde_json::from_str(&events[1].1).unwrap();
    assert_eq!(role["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(role["choices"][0]["delta"]["content"], "");
    assert!(role["usage"].is_null());
    // Without include_usage: no usage anywhere.
    let r = chat_with(&standin, &auth, &chat_body(true, false));
    let events = sse(&r.text());
    assert_eq!(events.last().unwrap().1, "[DONE]");
    assert!(events.iter().all(|(_, d)| !d.contains("\"usage\"")));
}

/// Foundry model inference (`/models`): no `stream_options` without `extra-parameters:
/// pass-through`; usage on the last chunk anyway.
#[test]
fn foundry_models_streams_carry_usage_and_refuse_stream_options() {
    let standin = start(StandInConfig::default());
    let auth = bearer(&standin.issue_access_token(DEFAULT_CLIENT_ID, 600));
    let path = "/models/chat/completions?api-version=2024-05-01-preview";
    let body = |usage: bool| {
        let mut v: Value = serde_json::from_slice(&chat_body(true, usage)).unwrap();
        v["model"] = json!("gpt-4o-prod");
        v.to_string().into_bytes()
    };
    let r = send(
        &standin,
        "POST",
        path,
        &[("authorization", &auth)],
        &body(false),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let events = sse(&r.text());
    let n = events.len();
    assert_eq!(events[n - 1].1, "[DONE]");
    let last: Value = serde_json::from_str(&events[n - 2].1).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["usage"]["completion_tokens"], 12);
    assert_eq!(
        events
            .iter()
            .filter(|(_, d)| d.contains("\"usage\""))
            .count(),
        1
    );
    let r = send(
        &standin,
        "POST",
        path,
        &[("authorization", &auth)],
        &body(true),
    )
    .unwrap();
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("stream_options"));
    let r = send(
        &standin,
        "POST",
        path,
        &[
            ("authorization", &auth),
            ("extra-parameters", "pass-through"),
        ],
        &body(true),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let events = sse(&r.text());
    let usage_chunk: Value = serde_json::from_str(&events[events.len() - 2].1).unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
}

#[test]
fn streamed_responses_and_messages_carry_usage() {
    let standin = start(StandInConfig {
        chunk_delay_ms: 5,
        ..StandInConfig::default()
    });
    let auth = bearer(&standin.issue_access_token(DEFAULT_CLIENT_ID, 600));
    let r = send(&standin, "POST", "/openai/v1/responses", &[("authorization", &auth)], br#"{"model":"gpt-4o-prod","input":[{"role":"user","content":[{"type":"input_text","text":"a b c"}]}],"stream":true}"#).unwrap();
    let events = sse(&r.text());
    assert_eq!(events[0].0, "response.created");
    assert_eq!(
        events
            .iter()
            .filter(|(n, _)| n == "response.output_text.delta")
            .count(),
        12
    );
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "response.completed");
    let v: Value = serde_json::from_str(data).unwrap();
    assert_eq!(v["response"]["usage"]["input_tokens"], 6);
    assert_eq!(v["response"]["usage"]["output_tokens"], 12);
    let started = Instant::now();
    let r = send(&standin, "POST", "/anthropic/v1/messages", &[("authorization", &auth), ("anthropic-version", "2023-06-01")], br#"{"model":"claude-opus-4-5","max_tokens":4,"stream":true,"messages":[{"role":"user","content":[{"type":"text","text":"hi there"}]}]}"#).unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(40),
        "chunk delay"
    );
    let events = sse(&r.text());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let start: Value = serde_json::from_str(&events[0].1).unwrap();
    assert_eq!(start["message"]["usage"]["input_tokens"], 5);
    let delta: Value = serde_json::from_str(&events[8].1).unwrap();
    assert_eq!(delta["usage"]["output_tokens"], 4);
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
}

// ---------------------------------------------------------------------------------------------
// Faults

#[test]
fn pushed_fault_applies_exactly_times_then_sticky_then_clear() {
    let standin = start(StandInConfig::default());
    standin.push_fault(
        EndpointKind::Token,
        Fault::Status {
            status: 503,
            body: r#"{"error":"temporarily_unavailable"}"#.into(),
        },
        2,
    );
    standin.push_fault(EndpointKind::Token, Fault::GarbageBody, 1);
    let statuses: Vec<u16> = (0..4).map(|_| secret_token(&standin).status).collect();
    assert_eq!(statuses, [503, 503, 200, 200]);
    let garbage = &standin.requests_of(EndpointKind::Token)[2];
    assert_eq!(garbage.outcome_status, 200);
    // The garbage answer was not JSON.
    standin.push_fault(EndpointKind::Token, Fault::GarbageBody, 1);
    assert!(serde_json::from_slice::<Value>(&secret_token(&standin).body).is_err());
    // Faults of one kind do not touch another.
    standin.push_fault(EndpointKind::Imds, Fault::DropConnection, 1);
    assert_eq!(secret_token(&standin).status, 200);
    // Sticky until cleared; queued faults go first.
    standin.set_fault(
        EndpointKind::Token,
        Some(Fault::RateLimited {
            retry_after_secs: 7,
        }),
    );
    standin.push_fault(
        EndpointKind::Token,
        Fault::Status {
            status: 500,
            body: "{}".into(),
        },
        1,
    );
    assert_eq!(secret_token(&standin).status, 500);
    for _ in 0..2 {
        let r = secret_token(&standin);
        assert_eq!(r.status, 429);
        assert_eq!(r.header("retry-after"), Some("7"));
        assert_eq!(r.json()["error_codes"], json!([90055]));
    }
    standin.set_fault(EndpointKind::Token, None);
    assert_eq!(secret_token(&standin).status, 200);
    // Everything was recorded, in order, with its outcome.
    let outcomes: Vec<u16> = standin
        .requests_of(EndpointKind::Token)
        .iter()
        .map(|r| r.outcome_status)
        .collect();
    assert_eq!(outcomes, [503, 503, 200, 200, 200, 200, 500, 429, 429, 200]);
    standin.clear_requests();
    assert_eq!(standin.requests().len(), 0);
}

#[test]
fn drop_delay_reset_and_rate_limit_faults() {
    let standin = start(StandInConfig::default());
    let auth = bearer(&standin.issue_access_token(DEFAULT_CLIENT_ID, 600));
    // DropConnection: no answer, outcome 0, then normal again.
    standin.push_fault(EndpointKind::Token, Fault::DropConnection, 1);
    assert!(send(
        &standin,
        "POST",
        TOKEN_PATH,
        &[("content-type", "application/x-www-form-urlencoded")],
        b"grant_type=client_credentials"
    )
    .is_none());
    assert_eq!(
        standin.requests_of(EndpointKind::Token)[0].outcome_status,
        0
    );
    assert_eq!(secret_token(&standin).status, 200);
    // Delay.
    standin.push_fault(
        EndpointKind::DataPlane,
        Fault::Delay(Duration::from_millis(300)),
        1,
    );
    let t = Instant::now();
    assert_eq!(
        chat_with(&standin, &auth, &chat_body(false, false)).status,
        200
    );
    assert!(t.elapsed() >= Duration::from_millis(300));
    // ResetMidStream on a stream: 3 events then the connection dies without the last chunk.
    standin.push_fault(
        EndpointKind::DataPlane,
        Fault::ResetMidStream { after_chunks: 3 },
        1,
    );
    let r = chat_with(&standin, &auth, &chat_body(true, true));
    assert_eq!(r.status, 200);
    assert!(r.truncated);
    assert_eq!(sse(&r.text()).len(), 3);
    // On a JSON answer: half a body.
    standin.push_fault(
        EndpointKind::DataPlane,
        Fault::ResetMidStream { after_chunks: 1 },
        1,
    );
    let r = chat_with(&standin, &auth, &chat_body(false, false));
    assert!(r.truncated);
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());
    // Azure 429.
    standin.push_fault(
        EndpointKind::DataPlane,
        Fault::RateLimited {
            retry_after_secs: 3,
        },
        1,
    );
    let r = chat_with(&standin, &auth, &chat_body(false, false));
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("3"));
    assert_eq!(r.header("retry-after-ms"), Some("3000"));
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("ChatCompletions_Create")
            && msg.contains("2024-10-21")
            && msg.contains("retry after 3 seconds"),
        "{msg}"
    );
    assert_eq!(r.json()["error"]["code"], "429");
    // Status fault on the data plane gets x-ms-error-code from the body.
    standin.push_fault(
        EndpointKind::DataPlane,
        Fault::Status {
            status: 503,
            body: r#"{"error":{"code":"ServiceUnavailable","message":"busy"}}"#.into(),
        },
        1,
    );
    let r = chat_with(&standin, &auth, &chat_body(false, false));
    assert_eq!(
        (r.status, r.header("x-ms-error-code")),
        (503, Some("ServiceUnavailable"))
    );
    let outcomes: Vec<u16> = standin
        .requests_of(EndpointKind::DataPlane)
        .iter()
        .map(|r| r.outcome_status)
        .collect();
    assert_eq!(outcomes, [200, 200, 200, 429, 503]);
}

#[tokio::test]
async fn async_start_keep_alive_and_drop_frees_the_port() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let addr = standin.addr();
    // Two requests on one keep-alive connection.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = "GET /common/discovery/v2.0/keys HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut buf = vec![0u8; 65536];
    for _ in 0..2 {
        s.write_all(req.as_bytes()).unwrap();
        let n = s.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }
    let second = StandIn::start_sharing_keys(&standin, StandInConfig::default())
        .await
        .unwrap();
    assert!(second
        .verify_access_token(&standin.issue_access_token("a", 60))
        .is_ok());
    drop(standin);
    assert!(std::net::TcpListener::bind(addr).is_ok());
}

#[test]
fn legacy_completions_only_on_instruct_models() {
    let mut cfg = StandInConfig::default();
    cfg.deployments.push(Deployment::new(
        "instruct",
        "gpt-35-turbo-instruct",
        "OpenAI",
    ));
    let standin = start(cfg);
    let auth = bearer(&standin.issue_access_token(DEFAULT_CLIENT_ID, 600));
    let post = |d: &str, body: &[u8]| {
        send(
            &standin,
            "POST",
            &format!("/openai/deployments/{d}/completions?api-version=2024-10-21"),
            &[("authorization", &auth)],
            body,
        )
        .unwrap()
    };
    let r = post("instruct", br#"{"prompt":"one two three","max_tokens":2}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["usage"],
        json!({"prompt_tokens": 6, "completion_tokens": 2, "total_tokens": 8})
    );
    assert_eq!(r.json()["choices"][0]["text"], "This is");
    let r = post(
        "instruct",
        br#"{"prompt":"x","stream":true,"stream_options":{"include_usage":true}}"#,
    );
    let events = sse(&r.text());
    assert_eq!(events.last().unwrap().1, "[DONE]");
    assert!(events[events.len() - 2].1.contains("\"total_tokens\":16"));
    assert_eq!(
        post("gpt-4o-prod", br#"{"prompt":"x"}"#).json()["error"]["code"],
        "OperationNotSupported"
    );
}

/// Hostile and odd inputs get an HTTP answer (never a panic or a hang).
#[test]
fn odd_inputs_always_get_an_answer() {
    let standin = start(StandInConfig::default());
    let token = standin.issue_access_token(DEFAULT_CLIENT_ID, 600);
    let auth = bearer(&token);
    let huge = json!({"exp": 9.9e300, "nbf": -9.9e300, "iat": i64::MIN, "aud": [1, null], "iss": {}, "sub": []});
    let weird_tokens = [
        standin.sign_token(huge.clone()),
        standin.sign_token(json!([])),
        "a.b.c.d".to_string(),
        "..".to_string(),
        "\u{7f}".to_string(),
        format!("{}.", token),
    ];
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        vec![0xff, 0xfe, 0x00],
        br#"{"messages":"x"}"#.to_vec(),
        br#"{"messages":[1,2]}"#.to_vec(),
        br#"{"messages":[{"role":"user","content":{"a":1}}],"max_tokens":-1}"#.to_vec(),
        br#"{"messages":[{"role":"user","content":[1,null,{"text":5}]}],"max_tokens":1e99,"stream":"yes"}"#.to_vec(),
        br#"{"model":"gpt-4o-prod","input":[[1,2],[3]],"max_tokens":0}"#.to_vec(),
        br#"{"model":"text-embedding-3-small","input":[[1,2],[3]],"encoding_format":7}"#.to_vec(),
        br#"{"model":"claude-opus-4-5","max_tokens":3,"messages":[{"role":"system","content":"x"}]}"#.to_vec(),
        format!("{}{}", "[".repeat(500), "]".repeat(500)).into_bytes(),
    ];
    let paths = [
        CHAT,
        "/openai/v1/chat/completions",
        "/openai/v1/responses",
        "/openai/v1/embeddings",
        "/models/chat/completions?api-version=x",
        "/anthropic/v1/messages",
        "/openai/deployments//chat/completions?api-version=1",
        "/openai/deployments",
        TOKEN_PATH,
        "/metadata/identity/oauth2/token?resource=%FF&api-version=%",
        "/msi/token",
        "//discovery//keys",
        "/",
    ];
    for path in paths {
        for body in &bodies {
            let r = send(
                &standin,
                "POST",
                path,
                &[
                    ("authorization", &auth),
                    ("anthropic-version", "1"),
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("metadata", "true"),
                ],
                body,
            );
            let r = r.unwrap_or_else(|| panic!("no answer for {path}"));
            assert!((200..600).contains(&r.status));
        }
        for t in &weird_tokens {
            let r = send(
                &standin,
                "POST",
                path,
                &[("authorization", &bearer(t))],
                &bodies[4],
            )
            .unwrap();
            assert!((200..600).contains(&r.status));
        }
    }
    // Odd assertions on the token endpoint.
    for t in &weird_tokens {
        let r = token_request(
            &standin,
            &[
                ("client_id", DEFAULT_CLIENT_ID),
                ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE),
                ("client_assertion", t),
                ("scope", "https://cognitiveservices.azure.com/.default"),
                ("grant_type", "client_credentials"),
            ],
        );
        assert!(r.status == 400 || r.status == 401, "{}", r.text());
    }
    let mut c = huge;
    c["iss"] = json!(v2_issuer(DEFAULT_TENANT_ID));
    c["sub"] = json!(DEFAULT_MI_OBJECT_ID);
    c["aud"] = json!(TOKEN_EXCHANGE_AUDIENCE);
    let r = token_request(
        &standin,
        &[
            ("client_id", DEFAULT_CLIENT_ID),
            ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE),
            ("client_assertion", &standin.sign_token(c)),
            ("scope", "https://cognitiveservices.azure.com/.default"),
            ("grant_type", "client_credentials"),
        ],
    );
    assert!(r.status < 500, "{}", r.text());
    // Status fault with an invalid status code still answers.
    standin.push_fault(
        EndpointKind::Jwks,
        Fault::Status {
            status: 42,
            body: "x".into(),
        },
        1,
    );
    assert_eq!(
        send(&standin, "GET", "/common/discovery/keys", &[], b"")
            .unwrap()
            .status,
        500
    );
}

/// The dated Responses API (`AzureOpenAI(...).responses.create`): model in the body, from
/// api-version 2025-03-01-preview on.
#[test]
fn dated_responses_api_needs_a_recent_api_version() {
    let standin = start(StandInConfig::default());
    let auth = bearer(&standin.issue_access_token(DEFAULT_CLIENT_ID, 600));
    let body = br#"{"model":"gpt-4o-prod","input":"hello there"}"#;
    let post = |q: &str| {
        send(
            &standin,
            "POST",
            &format!("/openai/responses{q}"),
            &[("authorization", &auth)],
            body,
        )
        .unwrap()
    };
    let r = post("?api-version=2025-04-01-preview");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["input_tokens"], 5);
    assert_eq!(post("?api-version=2024-10-21").status, 404);
    assert_eq!(post("").status, 404);
}

#[test]
fn gzip_when_asked_embedding_dimensions_and_lenient_multipart_model() {
    let mut cfg = StandInConfig::default();
    cfg.deployments
        .push(Deployment::new("whisper", "whisper", "OpenAI"));
    cfg.deployments.push(Deployment::new(
        "gpt-4o-transcribe",
        "gpt-4o-transcribe",
        "OpenAI",
    ));
    let standin = start(cfg);
    let auth = bearer(
        secret_token(&standin).json()["access_token"]
            .as_str()
            .unwrap(),
    );
    let emb = "/openai/deployments/text-embedding-3-small/embeddings?api-version=2024-10-21";
    let body = br#"{"input":["a b c"],"dimensions":300}"#;
    let plain = send(&standin, "POST", emb, &[("authorization", &auth)], body).unwrap();
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(
        plain.json()["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .len(),
        300
    );
    let zipped = send(
        &standin,
        "POST",
        emb,
        &[
            ("authorization", &auth),
            ("accept-encoding", "gzip, deflate"),
        ],
        body,
    )
    .unwrap();
    assert_eq!(zipped.header("content-encoding"), Some("gzip"));
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&zipped.body[..])
        .read_to_end(&mut unzipped)
        .unwrap();
    let v: Value = serde_json::from_slice(&unzipped).unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], 3);

    // Multipart: the last `model` field wins, split at any `--boundary`.
    let form = "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF--XyZ\r\nContent-Disposition: form-data; name=model\r\n\r\ngpt-4o-transcribe\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--XyZ--\r\n";
    let ct = "multipart/form-data; boundary=XyZ";
    let r = send(
        &standin,
        "POST",
        "/openai/v1/audio/transcriptions",
        &[("authorization", &auth), ("content-type", ct)],
        form.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-standin-deployment"), Some("whisper"));
}
