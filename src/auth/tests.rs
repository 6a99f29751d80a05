//! End-to-end tests of caller authentication: every hostile input of the issue answered 401
//! (never a panic), Entra v1/v2 tokens, claim policy, caching, JWKS rotation, API keys, and a
//! randomized no-panic property test.

use super::jwks::JwksState;
use super::jwt::{Alg, MAX_TOKEN_BYTES};
use super::testkeys::{self, b64, token, token_with_key};
use super::*;
use serde_json::{json, Value};

const TID: &str = "11111111-1111-1111-1111-111111111111";
const OTHER_TID: &str = "99999999-9999-9999-9999-999999999999";
const AUD: &str = "api://llm-gateway";
const NOW_S: u64 = 1_700_000_000;
const NOW_MS: u64 = NOW_S * 1000;

fn v2_iss() -> String {
    format!("https://login.microsoftonline.com/{TID}/v2.0")
}

fn v1_iss() -> String {
    format!("https://sts.windows.net/{TID}/")
}

fn all_keys_jwks() -> Value {
    json!({"keys": [
        testkeys::rsa_jwk("k1"),
        testkeys::p256_jwk("e1"),
        testkeys::p384_jwk("e2"),
        testkeys::ed25519_jwk("o1"),
    ]})
}

/// A provider trusting both Entra issuer forms, with inline keys of every type.
fn provider(extra: Value) -> Value {
    let mut p = json!({
        "issuer": v2_iss(),
        "issuers": [v1_iss()],
        "audiences": [AUD, "22222222-2222-2222-2222-222222222222"],
        "jwks": {"inline": all_keys_jwks()},
        "algorithms": ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"],
    });
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    p
}

fn config(auth: Value) -> AuthConfig {
    let raw: RawAuthConfig = serde_json::from_value(auth).unwrap();
    AuthConfig::from_raw(raw, "auth").unwrap()
}

fn authenticator(extra: Value) -> Authenticator {
    Authenticator::new(config(json!({"jwt_providers": {"entra": provider(extra)}})))
}

fn claims() -> Value {
    json!({
        "iss": v2_iss(),
        "aud": AUD,
        "tid": TID,
        "iat": NOW_S - 60,
        "nbf": NOW_S - 60,
        "exp": NOW_S + 3600,
        "azp": "app-one",
        "sub": "subject-1",
        "oid": "object-1",
        "roles": ["LLM.Invoke"],
        "ver": "2.0",
    })
}

fn with(mut v: Value, k: &str, val: Value) -> Value {
    if val.is_null() {
        v.as_object_mut().unwrap().remove(k);
    } else {
        v[k] = val;
    }
    v
}

fn hdr(alg: &str, kid: &str) -> Value {
    json!({"alg": alg, "typ": "JWT", "kid": kid})
}

fn rs256(claims: &Value) -> String {
    token(Alg::RS256, &hdr("RS256", "k1"), claims)
}

fn run(a: &mut Authenticator, token: &str) -> Result<Caller, AuthError> {
    let h = format!("Bearer {token}");
    a.authenticate(&[&h], &[], None, NOW_MS)
        .map(|c| c.expect("a caller"))
}

fn code(r: Result<Caller, AuthError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.code(),
    }
}

/// Checks the answer of an error: status, JSON body and headers never carry the token.
fn assert_answer_clean(e: &AuthError, token: &str) {
    let fe = e.to_filter_error();
    assert_eq!(fe.status, e.status());
    let body = fe.body();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], e.code());
    let headers = e.response_headers();
    for seg in token.split('.').filter(|s| s.len() >= 8) {
        assert!(!body.contains(seg), "body echoes the token: {body}");
        for (_, hv) in &headers {
            assert!(!hv.contains(seg));
        }
    }
    if e.status() == 401 {
        let www = headers
            .iter()
            .find(|(k, _)| *k == "www-authenticate")
            .map(|(_, v)| v.clone())
            .unwrap();
        assert!(www.starts_with("Bearer"), "{www}");
    }
}

// ---------------------------------------------------------------------------------------------
// Accepted tokens
// ---------------------------------------------------------------------------------------------

#[test]
fn every_algorithm_verifies() {
    let mut a = authenticator(json!({}));
    for (alg, kid) in [
        (Alg::RS256, "k1"),
        (Alg::RS384, "k1"),
        (Alg::RS512, "k1"),
        (Alg::PS256, "k1"),
        (Alg::PS384, "k1"),
        (Alg::PS512, "k1"),
        (Alg::ES256, "e1"),
        (Alg::ES384, "e2"),
        (Alg::EdDSA, "o1"),
    ] {
        let t = token(alg, &hdr(alg.name(), kid), &claims());
        let c = run(&mut a, &t).unwrap_or_else(|e| panic!("{}: {e}", alg.name()));
        assert_eq!(c.workload, "app-one");
        assert_eq!(c.provider, "entra");
        assert_eq!(c.method, AuthMethod::Jwt);
        assert_eq!(c.tenant.as_deref(), Some(TID));
        assert_eq!(c.exp_s, Some(NOW_S + 3600));
        assert_eq!(c.subject_hash.as_ref().map(String::len), Some(16));
    }
}

#[test]
fn entra_v1_token_names_workload_by_appid() {
    let mut a = authenticator(json!({}));
    let v1 = json!({
        "iss": v1_iss(), "aud": AUD, "tid": TID, "exp": NOW_S + 600, "nbf": NOW_S - 5,
        "appid": "legacy-app", "ver": "1.0", "sub": "s"
    });
    assert_eq!(run(&mut a, &rs256(&v1)).unwrap().workload, "legacy-app");
}

#[test]
fn entra_v2_token_with_guid_audience_in_array() {
    let mut a = authenticator(json!({}));
    let c = with(
        claims(),
        "aud",
        json!(["other", "22222222-2222-2222-2222-222222222222"]),
    );
    assert_eq!(run(&mut a, &rs256(&c)).unwrap().workload, "app-one");
}

#[test]
fn workload_claim_is_selectable() {
    let mut a = authenticator(json!({"workload_claim": ["oid"]}));
    assert_eq!(run(&mut a, &rs256(&claims())).unwrap().workload, "object-1");
    let mut a = authenticator(json!({"workload_claim": "sub"}));
    assert_eq!(
        run(&mut a, &rs256(&claims())).unwrap().workload,
        "subject-1"
    );
    let mut a = authenticator(json!({}));
    let e = run(&mut a, &rs256(&with(claims(), "azp", Value::Null))).unwrap_err();
    assert_eq!(e.code(), "claims_not_satisfied");
    assert_eq!(e.status(), 403);
}

#[test]
fn clock_skew_is_honoured() {
    let mut a = authenticator(json!({"clock_skew_s": 60}));
    assert_eq!(
        code(run(
            &mut a,
            &rs256(&with(claims(), "exp", json!(NOW_S - 30)))
        )),
        "ok"
    );
    assert_eq!(
        code(run(
            &mut a,
            &rs256(&with(claims(), "nbf", json!(NOW_S + 30)))
        )),
        "ok"
    );
    let mut a = authenticator(json!({"clock_skew_s": 0}));
    assert_eq!(
        code(run(
            &mut a,
            &rs256(&with(claims(), "exp", json!(NOW_S - 30)))
        )),
        "expired"
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile inputs: each answered 401 with the right reason, never a panic
// ---------------------------------------------------------------------------------------------

#[test]
fn alg_none_is_refused() {
    let mut a = authenticator(json!({}));
    let h = b64(json!({"alg": "none", "kid": "k1"}).to_string().as_bytes());
    let p = b64(claims().to_string().as_bytes());
    let unsigned = format!("{h}.{p}.");
    assert_eq!(code(run(&mut a, &unsigned)), "malformed");
    let with_sig = format!("{h}.{p}.{}", b64(b"x"));
    let e = run(&mut a, &with_sig).unwrap_err();
    assert_eq!(e.code(), "unsupported_alg");
    assert_answer_clean(&e, &with_sig);
    for alg in ["None", "NONE", "nOnE", ""] {
        let h = b64(json!({"alg": alg, "kid": "k1"}).to_string().as_bytes());
        assert_eq!(
            code(run(&mut a, &format!("{h}.{p}.AAAA"))),
            "unsupported_alg"
        );
    }
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    use ::rsa::pkcs8::EncodePublicKey;
    let mut a = authenticator(json!({}));
    let public = testkeys::rsa_key().to_public_key();
    let pem = public.to_public_key_pem(Default::default()).unwrap();
    let der = public.to_public_key_der().unwrap();
    let n = ::rsa::traits::PublicKeyParts::n(&public).to_bytes_be();
    for secret in [pem.as_bytes(), der.as_bytes(), &n[..]] {
        for alg in ["HS256", "HS384", "HS512"] {
            let input = format!(
                "{}.{}",
                b64(hdr(alg, "k1").to_string().as_bytes()),
                b64(claims().to_string().as_bytes())
            );
            let t = format!(
                "{input}.{}",
                b64(&testkeys::hmac_sha256(secret, input.as_bytes()))
            );
            let e = run(&mut a, &t).unwrap_err();
            assert_eq!(e.code(), "unsupported_alg");
            assert_eq!(e.status(), 401);
        }
    }
    // An HMAC signature under an RS256 header fails the signature check (wrong length).
    let input = format!(
        "{}.{}",
        b64(hdr("RS256", "k1").to_string().as_bytes()),
        b64(claims().to_string().as_bytes())
    );
    let t = format!(
        "{input}.{}",
        b64(&testkeys::hmac_sha256(pem.as_bytes(), input.as_bytes()))
    );
    assert_eq!(code(run(&mut a, &t)), "bad_signature");
}

#[test]
fn expired_and_not_yet_valid() {
    let mut a = authenticator(json!({}));
    let e = run(&mut a, &rs256(&with(claims(), "exp", json!(NOW_S - 3600)))).unwrap_err();
    assert_eq!(e.code(), "expired");
    let www = e.www_authenticate().unwrap();
    assert!(www.starts_with("Bearer error=\"invalid_token\""), "{www}");
    assert_eq!(
        code(run(
            &mut a,
            &rs256(&with(claims(), "nbf", json!(NOW_S + 3600)))
        )),
        "not_yet_valid"
    );
    assert_eq!(
        code(run(&mut a, &rs256(&with(claims(), "exp", Value::Null)))),
        "malformed"
    );
    assert_eq!(
        code(run(&mut a, &rs256(&with(claims(), "exp", json!("soon"))))),
        "malformed"
    );
}

#[test]
fn wrong_issuer_and_audience() {
    let mut a = authenticator(json!({}));
    for iss in [
        json!("https://login.microsoftonline.com/99999999-9999-9999-9999-999999999999/v2.0"),
        json!(format!("{}/", v2_iss())),
        json!("https://evil.example/"),
        json!(5),
        Value::Null,
    ] {
        assert_eq!(
            code(run(&mut a, &rs256(&with(claims(), "iss", iss)))),
            "wrong_issuer"
        );
    }
    for aud in [
        json!("api://other"),
        json!(["a", "b"]),
        json!(7),
        Value::Null,
    ] {
        assert_eq!(
            code(run(&mut a, &rs256(&with(claims(), "aud", aud)))),
            "wrong_audience"
        );
    }
}

#[test]
fn unknown_kid_and_foreign_key() {
    let mut a = authenticator(json!({}));
    let t = token(Alg::RS256, &hdr("RS256", "nope"), &claims());
    assert_eq!(
        run(&mut a, &t).unwrap_err(),
        AuthError::UnknownKid { provider: 0 }
    );
    // The token names a key it carries itself: never used.
    let h = json!({"alg": "RS256", "kid": "attacker", "jku": "https://evil.example/keys",
        "jwk": testkeys::rsa_jwk_of(testkeys::rsa_key2(), "attacker")});
    let t = token_with_key(Alg::RS256, testkeys::rsa_key2(), &h, &claims());
    assert_eq!(code(run(&mut a, &t)), "unknown_kid");
    // A known kid, signed by another key.
    let t = token_with_key(
        Alg::RS256,
        testkeys::rsa_key2(),
        &hdr("RS256", "k1"),
        &claims(),
    );
    assert_eq!(code(run(&mut a, &t)), "bad_signature");
    // No kid at all.
    let t = token(Alg::RS256, &json!({"alg": "RS256"}), &claims());
    assert_eq!(code(run(&mut a, &t)), "malformed");
}

#[test]
fn algorithm_must_fit_provider_and_key() {
    let mut a = authenticator(json!({"algorithms": ["RS256"]}));
    let t = token(Alg::PS256, &hdr("PS256", "k1"), &claims());
    assert_eq!(code(run(&mut a, &t)), "unsupported_alg");
    let t = token(Alg::ES256, &hdr("ES256", "e1"), &claims());
    assert_eq!(code(run(&mut a, &t)), "unsupported_alg");
    let mut a = authenticator(json!({}));
    // RS256 header naming the EC key; ES256 header naming the RSA key.
    let t = token(Alg::RS256, &hdr("RS256", "e1"), &claims());
    assert_eq!(code(run(&mut a, &t)), "unsupported_alg");
    let t = token(Alg::ES256, &hdr("ES256", "k1"), &claims());
    assert_eq!(code(run(&mut a, &t)), "unsupported_alg");
    // ES384 signature presented as ES256 on the P-256 key.
    let t = token(Alg::ES384, &hdr("ES256", "e1"), &claims());
    assert_eq!(code(run(&mut a, &t)), "bad_signature");
}

#[test]
fn tampered_payload_and_signature() {
    let mut a = authenticator(json!({}));
    let good = rs256(&claims());
    let parts: Vec<&str> = good.split('.').collect();
    let forged = b64(with(claims(), "azp", json!("admin-app"))
        .to_string()
        .as_bytes());
    let t = format!("{}.{}.{}", parts[0], forged, parts[2]);
    assert_eq!(code(run(&mut a, &t)), "bad_signature");
    // Flip one signature bit.
    let mut sig =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, parts[2])
            .unwrap();
    sig[100] ^= 1;
    let t = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
    assert_eq!(code(run(&mut a, &t)), "bad_signature");
    // Signature of all zeros, all 0xff (>= n), one byte short.
    for s in [vec![0u8; 256], vec![0xff; 256], vec![1u8; 255]] {
        let t = format!("{}.{}.{}", parts[0], parts[1], b64(&s));
        assert_eq!(code(run(&mut a, &t)), "bad_signature");
    }
    // The same for EC and Ed25519.
    for (alg, kid) in [(Alg::ES256, "e1"), (Alg::ES384, "e2"), (Alg::EdDSA, "o1")] {
        let good = token(alg, &hdr(alg.name(), kid), &claims());
        let p: Vec<&str> = good.split('.').collect();
        let t = format!("{}.{}.{}", p[0], forged, p[2]);
        assert_eq!(code(run(&mut a, &t)), "bad_signature", "{}", alg.name());
        let n = if alg == Alg::ES384 { 96 } else { 64 };
        for s in [vec![0u8; n], vec![0xff; n]] {
            let t = format!("{}.{}.{}", p[0], p[1], b64(&s));
            assert_eq!(code(run(&mut a, &t)), "bad_signature", "{}", alg.name());
        }
    }
    assert_eq!(code(run(&mut a, &good)), "ok");
}

#[test]
fn bad_base64_and_json() {
    let mut a = authenticator(json!({}));
    let good = rs256(&claims());
    let p: Vec<&str> = good.split('.').collect();
    for t in [
        format!("{}=.{}.{}", p[0], p[1], p[2]),
        format!("{}.{}==.{}", p[0], p[1], p[2]),
        format!("{}.{}.{}=", p[0], p[1], p[2]),
        format!("{}+.{}.{}", p[0], p[1], p[2]),
        format!("{}/.{}.{}", p[0], p[1], p[2]),
        format!("{}.{}.{}", b64(b"not json"), p[1], p[2]),
        format!("{}.{}.{}", p[0], b64(b"[1,2,3]"), p[2]),
        format!("{}.{}.{}", p[0], b64(b"{\"iss\":"), p[2]),
        format!(
            "{}.{}.{}",
            b64(b"{\"alg\":\"RS256\",\"alg\":\"RS256\",\"kid\":\"k1\"}"),
            p[1],
            p[2]
        ),
        format!("{}.{}.{}", b64(b"{\"alg\":5,\"kid\":\"k1\"}"), p[1], p[2]),
        format!(
            "{}.{}.{}",
            b64(json!({"alg": "RS256", "kid": "k1", "crit": ["exp"]})
                .to_string()
                .as_bytes()),
            p[1],
            p[2]
        ),
    ] {
        let r = run(&mut a, &t);
        assert_eq!(code(r.clone()), "malformed", "{t}");
        assert_answer_clean(&r.unwrap_err(), &t);
    }
    // Non-canonical trailing bits in the last base64 character.
    let sig_last = p[2].chars().last().unwrap();
    let alt = if sig_last == 'A' { 'B' } else { 'A' };
    let t = format!("{}.{}.{}{}", p[0], p[1], &p[2][..p[2].len() - 1], alt);
    assert_eq!(run(&mut a, &t).unwrap_err().status(), 401);
}

#[test]
fn truncated_tokens_and_wrong_segment_counts() {
    let mut a = authenticator(json!({}));
    let good = rs256(&claims());
    for len in 0..good.len() {
        let t = &good[..len];
        let h = format!("Bearer {t}");
        let e = a.authenticate(&[&h], &[], None, NOW_MS).unwrap_err();
        assert_eq!(e.status(), 401, "prefix {len}: {e}");
    }
    for t in [
        format!("{good}.extra"),
        good.replacen('.', "..", 1),
        format!(".{good}"),
    ] {
        assert_eq!(code(run(&mut a, &t)), "malformed", "{t}");
    }
    // Without any dot it is no JWT at all: an API-key candidate, and no configured key.
    assert_eq!(code(run(&mut a, &good.replace('.', ""))), "invalid_api_key");
}

#[test]
fn oversized_tokens() {
    let mut a = authenticator(json!({}));
    let huge = "a".repeat(64 * 1024);
    let e = run(&mut a, &huge).unwrap_err();
    assert_eq!(e.code(), "too_large");
    assert_answer_clean(&e, &huge);
    // A real, validly signed token padded past the limit with a large claim.
    let big = with(claims(), "pad", json!("x".repeat(MAX_TOKEN_BYTES)));
    assert_eq!(code(run(&mut a, &rs256(&big))), "too_large");
    // Just under the limit is fine.
    let fits = with(claims(), "pad", json!("x".repeat(MAX_TOKEN_BYTES / 2)));
    assert_eq!(code(run(&mut a, &rs256(&fits))), "ok");
    assert_eq!(
        a.authenticate(&[], &[&"k".repeat(4096)], None, NOW_MS)
            .unwrap_err()
            .code(),
        "too_large"
    );
}

#[test]
fn two_authorization_headers_and_mixed_credentials() {
    let mut a = authenticator(json!({}));
    let t = rs256(&claims());
    let h = format!("Bearer {t}");
    let e = a.authenticate(&[&h, &h], &[], None, NOW_MS).unwrap_err();
    assert_eq!(e.code(), "multiple_credentials");
    assert_eq!(e.status(), 401);
    assert!(e.www_authenticate().unwrap().contains("invalid_request"));
    // Joined by a proxy into one value.
    let joined = format!("Bearer {t}, Bearer {t}");
    assert_eq!(
        a.authenticate(&[&joined], &[], None, NOW_MS)
            .unwrap_err()
            .code(),
        "multiple_credentials"
    );
    assert_eq!(
        a.authenticate(&[&h], &["key"], None, NOW_MS)
            .unwrap_err()
            .code(),
        "multiple_credentials"
    );
    assert_eq!(
        a.authenticate(&[], &["k1", "k2"], None, NOW_MS)
            .unwrap_err()
            .code(),
        "multiple_credentials"
    );
}

#[test]
fn token_for_another_tenant() {
    let mut a = authenticator(json!({"tenants": [TID]}));
    assert_eq!(code(run(&mut a, &rs256(&claims()))), "ok");
    let other = with(claims(), "tid", json!(OTHER_TID));
    let e = run(&mut a, &rs256(&other)).unwrap_err();
    assert_eq!(e.code(), "wrong_tenant");
    assert_eq!(e.status(), 401);
    assert_eq!(
        code(run(&mut a, &rs256(&with(claims(), "tid", Value::Null)))),
        "wrong_tenant"
    );

    // Multi-tenant issuer template: the issuer must carry the token's own tid, and the
    // tenant must be allowed.
    let mut m = authenticator(json!({
        "issuer": "https://login.microsoftonline.com/{tid}/v2.0",
        "issuers": [],
        "tenants": [TID, "33333333-3333-3333-3333-333333333333"],
    }));
    assert_eq!(code(run(&mut m, &rs256(&claims()))), "ok");
    let other_iss = with(
        with(claims(), "tid", json!(OTHER_TID)),
        "iss",
        json!(format!(
            "https://login.microsoftonline.com/{OTHER_TID}/v2.0"
        )),
    );
    assert_eq!(code(run(&mut m, &rs256(&other_iss))), "wrong_tenant");
    // iss of one tenant, tid of another: the issuer does not match.
    let mixed = with(
        claims(),
        "tid",
        json!("33333333-3333-3333-3333-333333333333"),
    );
    assert_eq!(code(run(&mut m, &rs256(&mixed))), "wrong_issuer");
}

#[test]
fn authorization_header_forms() {
    let t = rs256(&claims());
    for h in [
        format!("Bearer {t}"),
        format!("bearer {t}"),
        format!("BEARER  {t}"),
        format!("Bearer\t{t} "),
        format!("  Bearer {t}"),
    ] {
        assert_eq!(
            extract_credentials(&[&h], &[]),
            Ok(Presented::Bearer(t.as_str())),
            "{h:?}"
        );
    }
    assert_eq!(extract_credentials(&[], &[]), Ok(Presented::None));
    assert_eq!(
        extract_credentials(&["Basic dXNlcjpwYXNz"], &[]),
        Err(AuthError::UnsupportedScheme)
    );
    assert_eq!(
        extract_credentials(&[t.as_str()], &[]),
        Err(AuthError::UnsupportedScheme)
    );
    assert_eq!(
        extract_credentials(&["Bearer"], &[]).unwrap_err().code(),
        "malformed"
    );
    assert_eq!(
        extract_credentials(&["Bearer   "], &[]).unwrap_err().code(),
        "malformed"
    );
    assert_eq!(
        extract_credentials(&[""], &[]).unwrap_err().code(),
        "malformed"
    );
    assert_eq!(
        extract_credentials(&["Bearer a b"], &[])
            .unwrap_err()
            .code(),
        "malformed"
    );
    assert_eq!(
        extract_credentials(&["Bearer a\"b"], &[])
            .unwrap_err()
            .code(),
        "malformed"
    );
    assert_eq!(
        extract_credentials(&[], &[" key-1 "]),
        Ok(Presented::ApiKey("key-1"))
    );
    assert_eq!(
        extract_credentials(&[], &[""]),
        Err(AuthError::InvalidApiKey)
    );
    assert_eq!(
        extract_credentials(&[], &["a b"]),
        Err(AuthError::InvalidApiKey)
    );
}

/// The headers each official SDK sends with an API key (issue 15).
#[test]
fn api_keys_the_way_sdks_send_them() {
    let key = "gw-key-123";
    let bearer = format!("Bearer {key}");
    let ok = Ok(Presented::ApiKey(key));
    // OpenAI(api_key=...), Anthropic(api_key=...): the key as a Bearer value.
    assert_eq!(extract_credentials(&[&bearer], &[]), ok);
    // AnthropicFoundry: x-api-key and api-key, the same key.
    assert_eq!(extract_credentials(&[], &[key, key]), ok);
    // azure-ai-inference AzureKeyCredential: Authorization: Bearer and api-key.
    assert_eq!(extract_credentials(&[&bearer], &[key]), ok);
    assert_eq!(extract_credentials(&[&bearer], &[key, " gw-key-123"]), ok);
    // Different keys are two credentials, whichever headers carry them.
    for (auth, keys) in [
        (vec![], vec![key, "other"]),
        (vec![bearer.as_str()], vec!["other"]),
        (vec![bearer.as_str(), "Bearer other"], vec![]),
    ] {
        assert_eq!(
            extract_credentials(&auth, &keys),
            Err(AuthError::MultipleCredentials),
            "{auth:?} {keys:?}"
        );
    }
    // A JWT next to anything else (even itself) is refused.
    let t = rs256(&claims());
    let jwt = format!("Bearer {t}");
    assert_eq!(
        extract_credentials(&[&jwt], &[key]),
        Err(AuthError::MultipleCredentials)
    );
    assert_eq!(
        extract_credentials(&[&jwt, &jwt], &[]),
        Err(AuthError::MultipleCredentials)
    );
    assert_eq!(
        extract_credentials(&[&jwt, "Bearer gw-key-123"], &[]),
        Err(AuthError::MultipleCredentials)
    );
}

// ---------------------------------------------------------------------------------------------
// Claim policy
// ---------------------------------------------------------------------------------------------

#[test]
fn required_claims_any_all_equals() {
    let policy = json!({"required_claims": [
        {"claim": "roles", "any_of": ["LLM.Invoke", "LLM.Admin"]},
        {"claim": "idtyp", "equals": "app"},
    ]});
    let mut a = authenticator(policy);
    let ok = with(claims(), "idtyp", json!("app"));
    assert_eq!(code(run(&mut a, &rs256(&ok))), "ok");
    let user = with(claims(), "idtyp", json!("user"));
    let e = run(&mut a, &rs256(&user)).unwrap_err();
    assert_eq!(e.code(), "claims_not_satisfied");
    assert_eq!(e.status(), 403);
    assert!(e.www_authenticate().unwrap().contains("insufficient_scope"));
    assert_eq!(e.to_filter_error().error_type, "permission_error");
    let no_role = with(ok.clone(), "roles", json!(["Other"]));
    assert_eq!(code(run(&mut a, &rs256(&no_role))), "claims_not_satisfied");

    let mut all = authenticator(json!({"required_claims": [
        {"claim": "roles", "all_of": ["LLM.Invoke", "LLM.Batch"]}
    ]}));
    assert_eq!(
        code(run(&mut all, &rs256(&claims()))),
        "claims_not_satisfied"
    );
    let both = with(claims(), "roles", json!(["LLM.Batch", "X", "LLM.Invoke"]));
    assert_eq!(code(run(&mut all, &rs256(&both))), "ok");

    // A forged token that would satisfy the policy is still 401, not 403 or 200.
    let good = rs256(&claims());
    let p: Vec<&str> = good.split('.').collect();
    let t = format!("{}.{}.{}", p[0], b64(both.to_string().as_bytes()), p[2]);
    assert_eq!(code(run(&mut all, &t)), "bad_signature");
}

// ---------------------------------------------------------------------------------------------
// Providers, keys, cache
// ---------------------------------------------------------------------------------------------

#[test]
fn several_providers_are_chosen_by_issuer_and_audience() {
    let other_key = testkeys::rsa_key2();
    let cfg = config(json!({"jwt_providers": {
        "entra": provider(json!({})),
        "entra-other-api": provider(json!({"audiences": ["api://other"],
            "jwks": {"inline": {"keys": [testkeys::rsa_jwk_of(other_key, "k2")]}}})),
        "k8s": {
            "issuer": "https://kubernetes.default.svc.cluster.local",
            "audiences": ["llm"],
            "jwks": {"inline": {"keys": [testkeys::rsa_jwk_of(other_key, "k2")]}},
            "workload_claim": "sub"
        }
    }}));
    let mut a = Authenticator::new(cfg);
    let c = run(&mut a, &rs256(&claims())).unwrap();
    assert_eq!(c.provider, "entra");
    let t = token_with_key(
        Alg::RS256,
        other_key,
        &hdr("RS256", "k2"),
        &with(claims(), "aud", json!("api://other")),
    );
    assert_eq!(run(&mut a, &t).unwrap().provider, "entra-other-api");
    let k8s = json!({"iss": "https://kubernetes.default.svc.cluster.local", "aud": ["llm"],
        "exp": NOW_S + 600, "sub": "system:serviceaccount:agents:planner"});
    let t = token_with_key(Alg::RS256, other_key, &hdr("RS256", "k2"), &k8s);
    let c = run(&mut a, &t).unwrap();
    assert_eq!(
        (c.provider.as_str(), c.workload.as_str()),
        ("k8s", "system:serviceaccount:agents:planner")
    );
    // A token of one provider's issuer is never checked against another provider's keys.
    let t = token_with_key(Alg::RS256, other_key, &hdr("RS256", "k2"), &claims());
    assert_eq!(code(run(&mut a, &t)), "unknown_kid");
}

fn remote_authenticator() -> Authenticator {
    Authenticator::new(config(json!({"jwt_providers": {"entra": provider(json!({
        "jwks": {"cluster": "entra", "path": format!("/{TID}/discovery/v2.0/keys")}
    }))}})))
}

#[test]
fn remote_keys_install_from_shared_state() {
    let mut a = remote_authenticator();
    let t = rs256(&claims());
    let e = run(&mut a, &t).unwrap_err();
    assert_eq!(e, AuthError::KeysUnavailable { provider: 0 });
    assert_eq!(e.status(), 503);
    assert!(e
        .response_headers()
        .contains(&("retry-after", "1".to_string())));

    let p = &a.config().providers[0];
    let schedule = p.jwks_schedule();
    let req = jwks_fetch_request(p, &JwksState::default()).unwrap();
    assert_eq!(req.cluster, "entra");
    assert_eq!(req.authority, "login.microsoftonline.com");
    assert_eq!(req.path, format!("/{TID}/discovery/v2.0/keys"));
    assert!(!req.discovery);

    let body = all_keys_jwks().to_string();
    let (state, parsed) = JwksState::default()
        .with_lease(NOW_MS, &schedule, false)
        .on_fetch_success(NOW_MS, body.as_bytes(), &schedule);
    assert!(parsed.is_ok());
    let encoded = state.encode();
    let state = JwksState::decode(&encoded).unwrap();
    assert_eq!(a.install_jwks(0, &state), Ok(true));
    assert_eq!(
        a.install_jwks(0, &state),
        Ok(false),
        "same generation: no re-parse"
    );
    assert_eq!(code(run(&mut a, &t)), "ok");
    assert_eq!(a.cached_tokens(), 1);

    // Rotation: k1 withdrawn. The cached token stops working at once.
    let rotated = json!({"keys": [testkeys::p256_jwk("e1")]}).to_string();
    let (state2, _) = state.on_fetch_success(NOW_MS + 1000, rotated.as_bytes(), &schedule);
    assert_eq!(a.install_jwks(0, &state2), Ok(true));
    assert_eq!(a.cached_tokens(), 0);
    assert_eq!(
        run(&mut a, &t).unwrap_err(),
        AuthError::UnknownKid { provider: 0 }
    );
    assert!(!state2.may_refetch_for_unknown_kid(NOW_MS + 2000, &schedule));
}

#[test]
fn discovery_then_jwks() {
    let a = Authenticator::new(config(json!({"jwt_providers": {"entra": provider(json!({
        "issuers": [],
        "jwks": {"cluster": "entra", "discovery_path": format!("/{TID}/v2.0/.well-known/openid-configuration")}
    }))}})));
    let p = &a.config().providers[0];
    let s = JwksState::default();
    let req = jwks_fetch_request(p, &s).unwrap();
    assert!(req.discovery);
    let doc = json!({"issuer": v2_iss(),
        "jwks_uri": format!("https://login.microsoftonline.com/{TID}/discovery/v2.0/keys")});
    let loc = discovery_location(p, doc.to_string().as_bytes()).unwrap();
    let s = s.on_discovered(loc);
    let req = jwks_fetch_request(p, &s).unwrap();
    assert!(!req.discovery);
    assert_eq!(req.path, format!("/{TID}/discovery/v2.0/keys"));
    let wrong = json!({"issuer": "https://sts.windows.net/x/", "jwks_uri": "https://login.microsoftonline.com/k"});
    assert!(discovery_location(p, wrong.to_string().as_bytes()).is_err());
}

#[test]
fn cache_serves_repeats_and_never_past_exp() {
    let mut a = authenticator(json!({"clock_skew_s": 60}));
    let exp = NOW_S + 100;
    let t = rs256(&with(claims(), "exp", json!(exp)));
    let h = format!("Bearer {t}");
    assert!(a.authenticate(&[&h], &[], None, NOW_MS).is_ok());
    assert_eq!(a.cached_tokens(), 1);
    assert!(a.authenticate(&[&h], &[], None, NOW_MS + 50_000).is_ok());
    // At exp the cache no longer answers; within the skew a fresh check still accepts but
    // does not cache; past exp + skew the token is expired.
    assert!(a.authenticate(&[&h], &[], None, exp * 1000).is_ok());
    assert_eq!(a.cached_tokens(), 0);
    assert_eq!(
        a.authenticate(&[&h], &[], None, (exp + 60) * 1000)
            .unwrap_err()
            .code(),
        "expired"
    );
}

#[test]
fn cache_is_bounded() {
    let mut a = Authenticator::with_cache_capacity(
        config(json!({"jwt_providers": {"entra": provider(json!({}))}})),
        4,
    );
    for i in 0..10 {
        let t = token(
            Alg::EdDSA,
            &hdr("EdDSA", "o1"),
            &with(claims(), "jti", json!(i)),
        );
        assert_eq!(code(run(&mut a, &t)), "ok");
        assert!(a.cached_tokens() <= 4);
    }
}

#[test]
fn api_keys_map_to_workloads() {
    use sha2::{Digest, Sha256};
    let hex = |k: &str| -> String {
        Sha256::digest(k.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let mut a = Authenticator::new(config(json!({
        "jwt_providers": {"entra": provider(json!({}))},
        "api_keys": [
            {"sha256": hex("foundry-key-1"), "workload": "foundry-agents"},
            {"sha256": hex("batch-key"), "workload": "batch"},
        ]
    })));
    let c = a
        .authenticate(&[], &["foundry-key-1"], None, NOW_MS)
        .unwrap()
        .unwrap();
    assert_eq!(c.workload, "foundry-agents");
    assert_eq!(c.method, AuthMethod::ApiKey);
    assert_eq!(c.provider, "api_key");
    let e = a
        .authenticate(&[], &["wrong-key"], None, NOW_MS)
        .unwrap_err();
    assert_eq!(e.code(), "invalid_api_key");
    assert_eq!(e.status(), 401);
    assert_answer_clean(&e, "wrong-key-wrong-key");
    // JWT callers still work next to keys.
    assert_eq!(code(run(&mut a, &rs256(&claims()))), "ok");
    // The key as the SDKs send it: a Bearer value (OpenAI, Anthropic), or the same key in
    // several headers (AnthropicFoundry, azure-ai-inference).
    for (auth, keys) in [
        (vec!["Bearer foundry-key-1"], vec![]),
        (vec![], vec!["foundry-key-1", "foundry-key-1"]),
        (vec!["Bearer foundry-key-1"], vec!["foundry-key-1"]),
    ] {
        let c = a.authenticate(&auth, &keys, None, NOW_MS).unwrap().unwrap();
        assert_eq!(c.workload, "foundry-agents", "{auth:?} {keys:?}");
    }
    let e = a
        .authenticate(&["Bearer foundry-key-1"], &["batch-key"], None, NOW_MS)
        .unwrap_err();
    assert_eq!(e.code(), "multiple_credentials");
    let e = a
        .authenticate(&["Bearer wrong-key"], &[], None, NOW_MS)
        .unwrap_err();
    assert_eq!(e.code(), "invalid_api_key");
    assert_answer_clean(&e, "wrong-key");
}

#[test]
fn mtls_peer_names_the_workload_of_callers_without_a_credential() {
    const PEER: &str = "spiffe://cluster.local/ns/apps/sa/reporter";
    let mut a = Authenticator::new(config(json!({
        "jwt_providers": {"entra": provider(json!({}))},
        "mtls_peers": {PEER: "reporting"}
    })));
    let c = a
        .authenticate(&[], &[], Some(PEER), NOW_MS)
        .unwrap()
        .unwrap();
    assert_eq!(c.workload, "reporting");
    assert_eq!(c.method, AuthMethod::MtlsPeer);
    // An unknown peer is no credential at all.
    let e = a
        .authenticate(
            &[],
            &[],
            Some("spiffe://cluster.local/ns/apps/sa/other"),
            NOW_MS,
        )
        .unwrap_err();
    assert_eq!(e.code(), "missing_token");
    // A presented token decides, whoever the peer is: a valid one names its own workload,
    // a bad one is refused.
    let h = format!("Bearer {}", rs256(&claims()));
    let c = a
        .authenticate(&[&h], &[], Some(PEER), NOW_MS)
        .unwrap()
        .unwrap();
    assert_eq!(c.method, AuthMethod::Jwt);
    assert!(a
        .authenticate(&["Bearer x.y.z"], &[], Some(PEER), NOW_MS)
        .is_err());
}

#[test]
fn mtls_peers_config_is_checked() {
    let bad = |peers: serde_json::Value| {
        AuthConfig::from_raw(
            serde_json::from_value(json!({"mtls_peers": peers})).unwrap(),
            "auth",
        )
        .unwrap_err()
        .field
    };
    assert_eq!(bad(json!({"not a uri": "w"})), "auth.mtls_peers.not a uri");
    assert_eq!(
        bad(json!({"spiffe://td/ns/a/sa/b": ""})),
        "auth.mtls_peers.spiffe://td/ns/a/sa/b"
    );
    // mTLS peers alone satisfy `required`.
    assert!(AuthConfig::from_raw(
        serde_json::from_value(json!({"mtls_peers": {"spiffe://td/ns/a/sa/b": "w"}})).unwrap(),
        "auth"
    )
    .is_ok());
}

#[test]
fn missing_credentials_required_or_optional() {
    let mut a = authenticator(json!({}));
    let e = a.authenticate(&[], &[], None, NOW_MS).unwrap_err();
    assert_eq!(e.code(), "missing_token");
    assert_eq!(e.www_authenticate().as_deref(), Some("Bearer"));
    let mut o = Authenticator::new(config(json!({
        "jwt_providers": {"entra": provider(json!({}))}, "required": false
    })));
    assert_eq!(o.authenticate(&[], &[], None, NOW_MS), Ok(None));
    // Optional does not mean a bad credential passes.
    assert_eq!(
        o.authenticate(&["Bearer x.y.z"], &[], None, NOW_MS)
            .unwrap_err()
            .status(),
        401
    );
    assert_eq!(
        o.authenticate(&[], &["k"], None, NOW_MS)
            .unwrap_err()
            .code(),
        "invalid_api_key"
    );
}

#[test]
fn every_error_answer_is_well_formed() {
    for e in [
        AuthError::MissingToken,
        AuthError::MultipleCredentials,
        AuthError::UnsupportedScheme,
        AuthError::TooLarge,
        AuthError::Malformed("The token is not valid base64url."),
        AuthError::UnsupportedAlg,
        AuthError::UnknownKid { provider: 0 },
        AuthError::BadSignature,
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::WrongIssuer,
        AuthError::WrongAudience,
        AuthError::WrongTenant,
        AuthError::ClaimsNotSatisfied("x"),
        AuthError::InvalidApiKey,
        AuthError::KeysUnavailable { provider: 0 },
    ] {
        let fe = e.to_filter_error();
        let v: Value = serde_json::from_str(&fe.body()).unwrap();
        assert_eq!(v["error"]["code"], e.code());
        assert!(!e.message().is_empty());
        match e.status() {
            401 => assert!(e.www_authenticate().unwrap().starts_with("Bearer")),
            403 => assert!(e.www_authenticate().unwrap().contains("insufficient_scope")),
            503 => assert!(e.www_authenticate().is_none()),
            s => panic!("unexpected status {s}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Property test: random and mutated tokens never panic and never pass
// ---------------------------------------------------------------------------------------------

const ALPHABET: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ,\"{}";

#[test]
fn random_and_mutated_tokens_never_panic_or_pass() {
    let mut a = authenticator(json!({}));
    let mut rng = crate::fuzzing::Mutator::new(0x9e37_79b9_7f4a_7c15);
    let seeds: Vec<String> = vec![
        rs256(&claims()),
        token(Alg::PS256, &hdr("PS256", "k1"), &claims()),
        token(Alg::ES256, &hdr("ES256", "e1"), &claims()),
        token(Alg::EdDSA, &hdr("EdDSA", "o1"), &claims()),
    ];
    for s in &seeds {
        assert_eq!(code(run(&mut a, s)), "ok");
    }
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    for i in 0..3000 {
        let candidate: String = match i % 4 {
            // Random bytes (lossy UTF-8), random lengths.
            0 => {
                let len = rng.below(600);
                let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            // Random base64url-ish strings with dots.
            1 => {
                let len = rng.below(1200);
                (0..len)
                    .map(|_| ALPHABET[rng.below(ALPHABET.len())] as char)
                    .collect()
            }
            // Point mutations of a valid token.
            2 => {
                let mut t = seeds[rng.below(seeds.len())].clone().into_bytes();
                for _ in 0..1 + rng.below(3) {
                    let pos = rng.below(t.len());
                    match rng.below(3) {
                        0 => t[pos] = ALPHABET[rng.below(ALPHABET.len())],
                        1 => {
                            t.remove(pos);
                        }
                        _ => t.insert(pos, ALPHABET[rng.below(ALPHABET.len())]),
                    }
                }
                String::from_utf8(t).unwrap()
            }
            // Segment splices across tokens and re-encoded mutated JSON.
            _ => {
                let x: Vec<&str> = seeds[rng.below(seeds.len())].split('.').collect();
                let y: Vec<&str> = seeds[rng.below(seeds.len())].split('.').collect();
                match rng.below(3) {
                    0 => format!("{}.{}.{}", x[0], y[1], x[2]),
                    1 => format!("{}.{}.{}", y[0], x[1], x[2]),
                    _ => {
                        let mut c = claims();
                        c["exp"] = json!(rng.next_u64());
                        c["aud"] = if rng.below(2) == 0 {
                            json!(AUD)
                        } else {
                            json!([AUD, rng.next_u64()])
                        };
                        format!("{}.{}.{}", x[0], b64(c.to_string().as_bytes()), x[2])
                    }
                }
            }
        };
        if seeds.contains(&candidate) {
            continue;
        }
        let h = format!("Bearer {candidate}");
        let r = a.authenticate(&[&h], &[], None, NOW_MS);
        match r {
            Ok(c) => panic!("accepted a mutated token {candidate:?}: {c:?}"),
            Err(e) => {
                assert!(matches!(e.status(), 401 | 403), "{e}");
                assert_ne!(e.status(), 403, "403 needs an authentic token: {candidate}");
                *outcomes.entry(e.code()).or_default() += 1;
            }
        }
        // The raw value as an api-key, and both together, must not panic either.
        let _ = a.authenticate(&[], &[&candidate], None, NOW_MS);
        let _ = a.authenticate(&[&candidate], &[&candidate], None, NOW_MS);
    }
    println!("property test outcomes: {outcomes:?}");
    // The run exercised the deep paths, not only the first check.
    assert!(
        outcomes.get("bad_signature").copied().unwrap_or(0) > 20,
        "{outcomes:?}"
    );
    assert!(
        outcomes.get("malformed").copied().unwrap_or(0) > 100,
        "{outcomes:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Cost of a cold verify (run: cargo test --release -p azure-llm-filter --lib -- --ignored
// bench_cold_verify --nocapture)
// ---------------------------------------------------------------------------------------------

#[test]
#[ignore]
fn bench_cold_verify() {
    use std::time::Instant;
    let a = authenticator(json!({}));
    let providers = &a.config().providers;
    let keys = &a.keys;
    for (alg, kid) in [
        (Alg::RS256, "k1"),
        (Alg::PS256, "k1"),
        (Alg::ES256, "e1"),
        (Alg::ES384, "e2"),
        (Alg::EdDSA, "o1"),
    ] {
        let t = token(alg, &hdr(alg.name(), kid), &claims());
        let n = 300;
        let start = Instant::now();
        for _ in 0..n {
            let v = jwt::verify_token(providers, keys, &t, NOW_S);
            assert!(v.is_ok());
        }
        let per = start.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!(
            "cold verify {}: {per:.1} us ({} byte token)",
            alg.name(),
            t.len()
        );
    }
    // A forged RS256 token (valid shape, claims and kid, wrong signature): the worst case an
    // attacker can force.
    let good = rs256(&claims());
    let p: Vec<&str> = good.split('.').collect();
    let forged = format!("{}.{}.{}", p[0], p[1], b64(&[0x42u8; 256]));
    let n = 300;
    let start = Instant::now();
    for _ in 0..n {
        assert!(jwt::verify_token(providers, keys, &forged, NOW_S).is_err());
    }
    println!(
        "forged RS256 (full signature check): {:.1} us",
        start.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let garbage = format!("{}.{}.{}", p[0], b64(b"{\"iss\":\"x\"}"), p[2]);
    let start = Instant::now();
    for _ in 0..n {
        assert!(jwt::verify_token(providers, keys, &garbage, NOW_S).is_err());
    }
    println!(
        "wrong-issuer token (cheap rejection): {:.1} us",
        start.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let mut a = authenticator(json!({}));
    let h = format!("Bearer {good}");
    a.authenticate(&[&h], &[], None, NOW_MS).unwrap();
    let start = Instant::now();
    for _ in 0..n {
        assert!(a.authenticate(&[&h], &[], None, NOW_MS).is_ok());
    }
    println!(
        "cached RS256: {:.2} us",
        start.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}

/// A signed token whose payload names a claim twice (`exp`, `aud`, `iss`, ...) is refused as
/// malformed, whichever value would have won (issue 15).
#[test]
fn duplicate_claim_names_are_malformed() {
    let mut a = authenticator(json!({}));
    let body = claims().to_string();
    let inner = body.trim_start_matches('{');
    let expired = NOW_S - 7200;
    for dup in [
        format!(r#""exp":{expired},"#),
        format!(r#""exp":{},"#, NOW_S + 60),
        r#""aud":"api://someone-else","#.to_string(),
        r#""iss":"https://evil.example/","#.to_string(),
        r#""azp":"other-app","#.to_string(),
    ] {
        let payload = format!("{{{dup}{inner}");
        let input = format!(
            "{}.{}",
            b64(hdr("RS256", "k1").to_string().as_bytes()),
            b64(payload.as_bytes())
        );
        let sig = testkeys::sign_with(Alg::RS256, testkeys::rsa_key(), input.as_bytes());
        let t = format!("{input}.{}", b64(&sig));
        let r = run(&mut a, &t);
        assert_eq!(code(r.clone()), "malformed", "{payload}");
        assert_eq!(
            r.unwrap_err().to_string(),
            AuthError::Malformed("The token payload names a claim more than once.").to_string()
        );
    }
    // The same claims, each once, are fine; nested objects are not this check's business.
    assert_eq!(code(run(&mut a, &rs256(&claims()))), "ok");
}
