//! Issue 4 and the per-workload part of issue 6, end to end: callers authenticated by JWT
//! (keys fetched through an Envoy cluster from the stand-in's JWKS) or API key, hostile tokens
//! refused with 401 before anything reaches Azure, and per-workload budgets.

mod common;

use azure_standin::{EndpointKind, StandIn, StandInConfig};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{client, Cluster, Envoy, EnvoyOptions};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const AUDIENCE: &str = "api://llm-gateway";
const GATEWAY_KEY: &str = "foundry-connection-key-1";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn v2_issuer(tenant: &str) -> String {
    format!("https://login.microsoftonline.com/{tenant}/v2.0")
}

fn plugin_config(standin: &StandIn, rate_limits: Value) -> Value {
    let tenant = standin.tenant_id();
    json!({
        "credentials": {"main": {
            "kind": "client_secret",
            "tenant_id": tenant,
            "client_id": "22222222-2222-2222-2222-222222222222",
            "client_secret": "standin-secret",
            "token_cluster": "entra"
        }},
        "backends": {"aoai": {"kind": "azure_openai", "host": "r.openai.azure.com", "api_version": "2024-10-21", "credential": "main"}},
        "models": {"gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"}},
        "auth": {
            "jwt_providers": {"entra": {
                "issuers": [v2_issuer(&tenant), format!("https://sts.windows.net/{tenant}/")],
                "audiences": [AUDIENCE],
                "jwks": {"cluster": "entra", "authority": "login.microsoftonline.com",
                         "path": format!("/{tenant}/discovery/v2.0/keys")},
                "tenants": [tenant],
                "required_claims": [{"claim": "roles", "any_of": ["LLM.Invoke"]}]
            }},
            "api_keys": [{"sha256": common::hex(&Sha256::digest(GATEWAY_KEY.as_bytes())), "workload": "foundry-agents"}]
        },
        "rate_limits": rate_limits
    })
}

async fn setup(rate_limits: Value) -> (StandIn, Envoy) {
    setup_with(rate_limits, json!({}), 1).await
}

async fn setup_with(
    rate_limits: Value,
    provider_extra: Value,
    concurrency: u32,
) -> (StandIn, Envoy) {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let mut plugin = plugin_config(&standin, rate_limits);
    for (k, v) in provider_extra.as_object().unwrap() {
        plugin["auth"]["jwt_providers"]["entra"][k] = v.clone();
    }
    let mut o = EnvoyOptions::new(plugin);
    o.concurrency = concurrency;
    o.clusters = vec![
        Cluster::new("entra", standin.port()),
        Cluster::new("aoai", standin.port()),
    ];
    o.backend_routes = vec!["aoai".into()];
    let envoy = Envoy::start(o).await;
    // The JWKS is fetched right after start; wait until a valid caller gets through.
    let token = caller_token(&standin, "warmup-app", json!({}));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = chat(&envoy, &[("authorization", format!("Bearer {token}"))]).await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "JWKS never loaded: {}",
            envoy.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    standin.clear_requests();
    (standin, envoy)
}

/// A caller token as Entra would issue it for an app calling the gateway.
fn caller_token(standin: &StandIn, app: &str, overrides: Value) -> String {
    let t = now();
    let mut claims = json!({
        "iss": v2_issuer(&standin.tenant_id()),
        "aud": AUDIENCE,
        "azp": app,
        "tid": standin.tenant_id(),
        "sub": format!("sp-{app}"),
        "roles": ["LLM.Invoke"],
        "iat": t, "nbf": t - 5, "exp": t + 600,
        "ver": "2.0"
    });
    for (k, v) in overrides.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    standin.sign_token(claims)
}

async fn chat(envoy: &Envoy, headers: &[(&str, String)]) -> (u16, reqwest::Response) {
    let mut req = client()
        .post(envoy.url("/v1/chat/completions"))
        .json(&json!({"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": "hello"}]}));
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp)
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = if key.len() > 64 {
        Sha256::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    k.resize(64, 0);
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::digest([ipad.as_slice(), msg].concat());
    Sha256::digest([opad.as_slice(), &inner[..]].concat()).to_vec()
}

fn with_header(token: &str, header: Value) -> String {
    let rest = token.split_once('.').unwrap().1;
    format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header.to_string()))
}

#[tokio::test]
async fn valid_callers_pass_and_their_credentials_never_reach_azure() {
    let (standin, envoy) = setup(json!({})).await;
    let token = caller_token(&standin, "app-a", json!({}));
    let (status, resp) = chat(&envoy, &[("authorization", format!("Bearer {token}"))]).await;
    assert_eq!(status, 200, "{}", envoy.logs());
    drop(resp);
    let r = standin.requests_of(EndpointKind::DataPlane).pop().unwrap();
    assert_ne!(
        r.header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    assert_eq!(r.outcome_status, 200);

    let (status, _) = chat(&envoy, &[("api-key", GATEWAY_KEY.to_string())]).await;
    assert_eq!(status, 200);
    let r = standin.requests_of(EndpointKind::DataPlane).pop().unwrap();
    assert_eq!(r.header("api-key"), None);

    // Entra v1 issuer form of the same tenant is accepted too.
    let v1 = caller_token(
        &standin,
        "app-v1",
        json!({"iss": format!("https://sts.windows.net/{}/", standin.tenant_id()), "azp": null, "appid": "app-v1", "ver": "1.0"}),
    );
    let (status, _) = chat(&envoy, &[("authorization", format!("Bearer {v1}"))]).await;
    assert_eq!(status, 200);

    // Discovery is authenticated too.
    let resp = client().get(envoy.url("/v1/models")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn hostile_and_wrong_tokens_get_401_and_reach_nothing() {
    let (standin, envoy) = setup(json!({})).await;
    let good = caller_token(&standin, "app-a", json!({}));
    let (h, p, s) = {
        let mut it = good.split('.');
        (
            it.next().unwrap().to_string(),
            it.next().unwrap().to_string(),
            it.next().unwrap().to_string(),
        )
    };
    let mut payload: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&p).unwrap()).unwrap();
    payload["azp"] = json!("someone-else");
    let tampered = format!("{h}.{}.{s}", URL_SAFE_NO_PAD.encode(payload.to_string()));
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&h).unwrap()).unwrap();
    let none_alg = format!(
        "{}.{p}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT"}).to_string())
    );
    let hs_header = URL_SAFE_NO_PAD
        .encode(json!({"alg": "HS256", "typ": "JWT", "kid": header["kid"]}).to_string());
    let hs_input = format!("{hs_header}.{p}");
    let hs_sig = hmac_sha256(
        standin.jwks_json().to_string().as_bytes(),
        hs_input.as_bytes(),
    );
    let confused = format!("{hs_input}.{}", URL_SAFE_NO_PAD.encode(hs_sig));
    let unknown_kid = with_header(
        &good,
        json!({"alg": "RS256", "typ": "JWT", "kid": "not-a-known-kid"}),
    );

    let cases: Vec<(&str, String)> = vec![
        ("alg none", none_alg),
        ("HS256 with the RSA key", confused),
        (
            "expired",
            caller_token(
                &standin,
                "a",
                json!({"exp": now() - 3600, "nbf": now() - 7200}),
            ),
        ),
        (
            "not yet valid",
            caller_token(
                &standin,
                "a",
                json!({"nbf": now() + 3600, "exp": now() + 7200}),
            ),
        ),
        (
            "wrong issuer",
            caller_token(&standin, "a", json!({"iss": "https://evil.example/"})),
        ),
        (
            "wrong audience",
            caller_token(&standin, "a", json!({"aud": "api://other"})),
        ),
        ("unknown kid", unknown_kid),
        ("tampered payload", tampered),
        ("bad base64", format!("{h}.!!!not-base64!!!.{s}")),
        ("truncated", good[..good.len() / 2].to_string()),
        ("64 KB token", format!("{h}.{}.{s}", "A".repeat(64 * 1024))),
        (
            "another tenant",
            caller_token(
                &standin,
                "a",
                json!({"tid": "99999999-9999-9999-9999-999999999999",
            "iss": v2_issuer("99999999-9999-9999-9999-999999999999")}),
            ),
        ),
        ("garbage", "x".to_string()),
    ];
    for (name, token) in cases {
        let (status, resp) = chat(&envoy, &[("authorization", format!("Bearer {token}"))]).await;
        assert_eq!(status, 401, "{name}");
        let www = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string());
        assert!(www.unwrap_or_default().starts_with("Bearer"), "{name}");
        let body: Value = resp.json().await.unwrap();
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            !message.contains(&token[..token.len().min(40)]) || token.len() < 8,
            "{name}: token echoed"
        );
    }
    // Two Authorization headers, and no credential at all.
    let (status, _) = chat(
        &envoy,
        &[
            ("authorization", format!("Bearer {good}")),
            ("authorization", format!("Bearer {good}")),
        ],
    )
    .await;
    assert_eq!(status, 401, "two Authorization headers");
    let (status, _) = chat(&envoy, &[]).await;
    assert_eq!(status, 401, "no credential");
    let (status, _) = chat(&envoy, &[("api-key", "wrong-key".to_string())]).await;
    assert_eq!(status, 401, "wrong api key");
    // Credentials that are not UTF-8 (Envoy passes obs-text bytes): refused, not a VM abort
    // (the worker serves the good caller at the end).
    for (name, value) in [
        ("authorization", format!("Bearer {h}.").into_bytes()),
        ("api-key", b"\xff\xfe".to_vec()),
    ] {
        let mut value = value;
        value.extend_from_slice(b"caf\xe9");
        let resp = client()
            .post(envoy.url("/v1/chat/completions"))
            .header(
                name,
                reqwest::header::HeaderValue::from_bytes(&value).unwrap(),
            )
            .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{name} not UTF-8");
    }
    // Authentic but without the required role: 403.
    let no_role = caller_token(&standin, "app-a", json!({"roles": ["Other.Role"]}));
    let (status, _) = chat(&envoy, &[("authorization", format!("Bearer {no_role}"))]).await;
    assert_eq!(status, 403);

    assert_eq!(
        standin.count(EndpointKind::DataPlane),
        0,
        "nothing reached Azure"
    );
    // The filter is still healthy after all that.
    let (status, _) = chat(&envoy, &[("authorization", format!("Bearer {good}"))]).await;
    assert_eq!(status, 200);
    assert!(
        !envoy.logs().contains(&s),
        "a token signature appeared in the logs"
    );
}

#[tokio::test]
async fn one_workload_spends_its_budget_while_another_is_unaffected() {
    let (standin, envoy) = setup(json!({"workloads": {"app-a": {"tokens_per_minute": 40}}})).await;
    let a = caller_token(&standin, "app-a", json!({}));
    let b = caller_token(&standin, "app-b", json!({}));
    let mut refused = None;
    for _ in 0..20 {
        let (status, resp) = chat(&envoy, &[("authorization", format!("Bearer {a}"))]).await;
        if status == 429 {
            refused = Some(resp);
            break;
        }
        assert_eq!(status, 200);
    }
    let refused = refused.expect("app-a ran out of budget");
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("app-a"));
    // app-b has no policy of its own and no default: unaffected.
    for _ in 0..5 {
        let (status, _) = chat(&envoy, &[("authorization", format!("Bearer {b}"))]).await;
        assert_eq!(status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_is_fetched_once_for_all_workers_and_kept_when_its_endpoint_fails() {
    let (standin, envoy) = setup_with(json!({}), json!({"jwks_min_refetch_s": 1}), 2).await;
    // setup() cleared the record after the JWKS was loaded: look at the stand-in's log of
    // fetches through the Envoy log instead of its record.
    let loaded = envoy
        .logs()
        .matches("JWKS of provider entra loaded")
        .count();
    assert_eq!(loaded, 1, "one fetch serves both workers: {}", envoy.logs());

    standin.set_fault(
        EndpointKind::Jwks,
        Some(azure_standin::Fault::Status {
            status: 500,
            body: "{}".into(),
        }),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // An unknown kid makes the filter refetch (rate-limited); the endpoint fails.
    let good = caller_token(&standin, "app-a", json!({}));
    let unknown = with_header(
        &good,
        json!({"alg": "RS256", "typ": "JWT", "kid": "rotated-key"}),
    );
    let (status, _) = chat(&envoy, &[("authorization", format!("Bearer {unknown}"))]).await;
    assert_eq!(status, 401);
    let deadline = Instant::now() + Duration::from_secs(5);
    while standin.count(EndpointKind::Jwks) == 0 {
        assert!(
            Instant::now() < deadline,
            "no refetch on unknown kid: {}",
            envoy.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        envoy
            .logs()
            .contains("JWKS fetch for provider entra failed"),
        "{}",
        envoy.logs()
    );
    // The last good keys are still used: fresh tokens (not in any cache) verify.
    for app in ["app-x", "app-y", "app-z"] {
        let t = caller_token(&standin, app, json!({}));
        let (status, _) = chat(&envoy, &[("authorization", format!("Bearer {t}"))]).await;
        assert_eq!(status, 200, "{app}");
    }
    // Unknown kids do not turn into a fetch per request.
    for _ in 0..10 {
        let (status, _) = chat(&envoy, &[("authorization", format!("Bearer {unknown}"))]).await;
        assert_eq!(status, 401);
    }
    assert!(
        standin.count(EndpointKind::Jwks) <= 2,
        "{}",
        standin.count(EndpointKind::Jwks)
    );
}

/// Issue 22, ready when it says so: right after Envoy starts, one worker fetches the JWKS
/// (holding the lease) while the other ticks again only half a second later. The other worker
/// answered 503 jwks_unavailable meanwhile although the keys were in shared data; it now looks
/// there before refusing anyone. Two workers, requests at once on both: once any request has
/// passed, every request on either worker passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_uses_keys_another_worker_fetched_right_after_start() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    // The first fetch answers after Envoy is ready, while requests already arrive.
    standin.push_fault(
        EndpointKind::Jwks,
        azure_standin::Fault::Delay(Duration::from_millis(1500)),
        1,
    );
    let mut o = EnvoyOptions::new(plugin_config(&standin, json!({})));
    o.concurrency = 2;
    o.clusters = vec![
        Cluster::new("entra", standin.port()),
        Cluster::new("aoai", standin.port()),
    ];
    o.backend_routes = vec!["aoai".into()];
    let envoy = Envoy::start(o).await;
    let token = caller_token(&standin, "early-app", json!({}));
    // A request every 10 ms, each on a connection of its own (Envoy spreads connections over
    // the workers): (sent, answered, status, body) of each.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let url = envoy.url("/v1/chat/completions");
    let start = Instant::now();
    let mut first_pass: Option<Instant> = None;
    let mut answers = Vec::new();
    loop {
        let (tx, url, token) = (tx.clone(), url.clone(), token.clone());
        tokio::spawn(async move {
            let sent = Instant::now();
            let resp = common::client()
                .post(url)
                .bearer_auth(token)
                .header("connection", "close")
                .json(&json!({"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap_or_default();
            let _ = tx.send((sent, Instant::now(), status, body));
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        while let Ok(a) = rx.try_recv() {
            if a.2 == 200 && first_pass.is_none_or(|t| a.1 < t) {
                first_pass = Some(a.1);
            }
            answers.push(a);
        }
        // Keep sending for a second after the first request passed (two idle ticks).
        if first_pass.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the keys never loaded: {}",
            envoy.logs()
        );
    }
    drop(tx);
    while let Some(a) = rx.recv().await {
        answers.push(a);
    }
    let first_pass = answers
        .iter()
        .filter(|a| a.2 == 200)
        .map(|a| a.1)
        .min()
        .unwrap();
    for (_, _, status, body) in &answers {
        assert!(
            *status == 200 || (*status == 503 && body.contains("jwks_unavailable")),
            "{status} {body}"
        );
    }
    let late: Vec<u64> = answers
        .iter()
        .filter(|a| a.0 > first_pass && a.2 != 200)
        .map(|a| (a.0 - first_pass).as_millis() as u64)
        .collect();
    let after = answers.iter().filter(|a| a.0 > first_pass).count();
    assert!(after >= 20, "{after} requests after the first pass");
    assert!(
        late.is_empty(),
        "{} of {after} requests sent after one had passed were refused (sent that many ms after): {late:?}",
        late.len()
    );
    let served = |w: u32| {
        let name = format!(
            "listener.127.0.0.1_{}.worker_{w}.downstream_cx_total",
            envoy.listener_port
        );
        let envoy = &envoy;
        async move { envoy.stat(&name).await.unwrap_or(0) }
    };
    let (w0, w1) = (served(0).await, served(1).await);
    assert!(w0 > 0 && w1 > 0, "both workers served: {w0} {w1}");
    assert_eq!(
        envoy
            .logs()
            .matches("JWKS of provider entra loaded")
            .count(),
        1,
        "one fetch for both workers"
    );
}
