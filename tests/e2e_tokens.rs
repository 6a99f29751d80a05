//! Issue 3, the token cache end to end: one fetch for a burst on two workers, refresh under
//! traffic with short-lived tokens, Entra outages, malformed and slow token answers.

mod common;

use azure_standin::{EndpointKind, Fault, StandIn, StandInConfig};
use common::{client, Cluster, Envoy, EnvoyOptions};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn plugin_config(standin: &StandIn, extra: Value) -> Value {
    let mut v = json!({
        "credentials": common::standin_credentials(&standin.tenant_id()),
        "backends": {"aoai": {"kind": "azure_openai", "host": "myresource.openai.azure.com", "api_version": "2024-10-21", "credential": "main"}},
        "models": {"gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod"}}
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in e {
            o.insert(k.clone(), val.clone());
        }
    }
    v
}

async fn start(cfg: StandInConfig, extra: Value, concurrency: u32) -> (StandIn, Envoy) {
    let standin = StandIn::start(cfg).await.unwrap();
    let mut o = EnvoyOptions::new(plugin_config(&standin, extra));
    o.clusters = vec![
        Cluster::new("entra", standin.port()),
        Cluster::new("aoai", standin.port()),
    ];
    o.backend_routes = vec!["aoai".into()];
    o.concurrency = concurrency;
    let envoy = Envoy::start(o).await;
    (standin, envoy)
}

async fn chat(http: &reqwest::Client, envoy: &Envoy) -> (u16, Value) {
    let resp = http
        .post(envoy.url("/v1/chat/completions"))
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("Envoy answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn burst_of_200_on_two_workers_fetches_one_token() {
    let cfg = StandInConfig::default();
    let (standin, envoy) = start(cfg, json!({}), 2).await;
    // Slow the token endpoint so every request of the burst arrives before the token.
    standin.push_fault(
        EndpointKind::Token,
        Fault::Delay(Duration::from_millis(300)),
        1,
    );
    let http = client();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let http = http.clone();
        let url = envoy.url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .json(
                    &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "burst"}]}),
                )
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 200, "{}", envoy.logs());
    assert_eq!(
        standin.count(EndpointKind::Token),
        1,
        "one fetch for the whole burst"
    );
    assert_eq!(standin.count(EndpointKind::DataPlane), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_refresh_under_traffic_without_a_failure() {
    let cfg = StandInConfig {
        token_lifetime_secs: 4,
        ..StandInConfig::default()
    };
    let (standin, envoy) = start(cfg, json!({}), 2).await;
    let http = client();
    let until = Instant::now() + Duration::from_secs(11);
    let mut served = 0;
    while Instant::now() < until {
        let (status, body) = chat(&http, &envoy).await;
        assert_eq!(status, 200, "{body} {}", envoy.logs());
        served += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fetches = standin.count(EndpointKind::Token);
    assert!(fetches >= 3, "tokens were refreshed ({fetches} fetches)");
    assert!(
        fetches <= 8,
        "refreshes are not per request ({fetches} fetches)"
    );
    assert!(
        standin
            .requests_of(EndpointKind::DataPlane)
            .iter()
            .all(|r| r.outcome_status == 200),
        "no expired token was sent to Azure"
    );
    assert!(served > 100);
}

#[tokio::test]
async fn entra_outage_serves_from_cache_then_clean_503s_then_recovers() {
    let cfg = StandInConfig {
        token_lifetime_secs: 4,
        ..StandInConfig::default()
    };
    let (standin, envoy) = start(cfg, json!({}), 1).await;
    let http = client();
    assert_eq!(chat(&http, &envoy).await.0, 200);
    standin.set_fault(
        EndpointKind::Token,
        Some(Fault::Status {
            status: 500,
            body: r#"{"error":"server_error","error_description":"AADSTS50000: There was an error issuing a token."}"#.into(),
        }),
    );
    // Still valid: served from the cache although refreshes fail.
    let (status, _) = chat(&http, &envoy).await;
    assert_eq!(status, 200);
    // Once the cached token is past use, callers get a clean 503 with Retry-After.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let resp = http
        .post(envoy.url("/v1/chat/completions"))
        .json(&json!({"model": "gpt-4o", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503, "{}", envoy.logs());
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"]["code"]
        .as_str()
        .unwrap()
        .starts_with("backend_token"));
    assert!(envoy.logs().contains("AADSTS50000"));
    // Entra is back: requests succeed again within the back-off.
    standin.set_fault(EndpointKind::Token, None);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _) = chat(&http, &envoy).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {}", envoy.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(standin
        .requests_of(EndpointKind::DataPlane)
        .iter()
        .all(|r| r.outcome_status == 200));
}

/// Issue 17: during an Entra outage the cached token is served until its expiry minus the 1 s
/// skew (its lifetime counted from when the filter asked for it), one refresh is tried at
/// half-life and no second one within 30 s while the token lasts; once it has run out callers
/// get a clean 503 at once, and the token never reaches Azure after its real expiry.
#[tokio::test]
async fn entra_outage_serves_the_token_to_its_end_and_spaces_refreshes() {
    const LIFETIME: Duration = Duration::from_secs(20);
    let cfg = StandInConfig {
        token_lifetime_secs: LIFETIME.as_secs(),
        ..StandInConfig::default()
    };
    let (standin, envoy) = start(cfg, json!({}), 1).await;
    let http = client();
    let asked = Instant::now();
    assert_eq!(chat(&http, &envoy).await.0, 200);
    let issued = standin.requests_of(EndpointKind::Token)[0].received_at;
    standin.set_fault(
        EndpointKind::Token,
        Some(Fault::Status {
            status: 500,
            body: r#"{"error":"server_error","error_description":"AADSTS50000: There was an error issuing a token."}"#.into(),
        }),
    );
    let mut last_ok = asked;
    let refused = loop {
        let sent = Instant::now();
        let resp = http
            .post(envoy.url("/v1/chat/completions"))
            .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        if resp.status() != 200 {
            break resp;
        }
        last_ok = sent;
        assert!(
            sent < issued + LIFETIME + Duration::from_secs(2),
            "{}",
            envoy.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Served until 1 s before expiry (the loop looks every ~100 ms).
    let served = last_ok - asked;
    assert!(
        served >= LIFETIME - Duration::from_millis(1400),
        "token dropped early: last served {served:?} after it was asked for"
    );
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "backend_token_unavailable");
    // Attempts: the first fetch, one refresh at half-life, then only the cold attempt at
    // expiry (no retry crammed in before it).
    let attempts: Vec<Duration> = standin
        .requests_of(EndpointKind::Token)
        .iter()
        .map(|r| r.received_at.saturating_duration_since(issued))
        .collect();
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    assert!(
        attempts[1] >= Duration::from_millis(9_500) && attempts[1] <= Duration::from_millis(11_000),
        "refresh at half-life: {attempts:?}"
    );
    assert!(
        attempts[2] >= LIFETIME - Duration::from_millis(1_500),
        "no second refresh within 30 s: {attempts:?}"
    );
    // Azure never saw the token after its real expiry.
    let token = standin.requests_of(EndpointKind::DataPlane)[0]
        .header("authorization")
        .unwrap()
        .to_string();
    assert!(standin
        .requests_of(EndpointKind::DataPlane)
        .iter()
        .filter(|r| r.header("authorization") == Some(token.as_str()))
        .all(|r| r.received_at < issued + LIFETIME));
    // Entra is back: the next attempt (after the cold back-off) recovers.
    standin.set_fault(EndpointKind::Token, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while chat(&http, &envoy).await.0 != 200 {
        assert!(Instant::now() < deadline, "no recovery: {}", envoy.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn malformed_token_answer_is_a_503_and_the_next_fetch_recovers() {
    let (standin, envoy) = start(StandInConfig::default(), json!({}), 1).await;
    standin.push_fault(EndpointKind::Token, Fault::GarbageBody, 1);
    let http = client();
    let (status, body) = chat(&http, &envoy).await;
    assert_eq!(status, 503, "{body}");
    assert!(envoy.logs().contains("malformed_token_response"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while chat(&http, &envoy).await.0 != 200 {
        assert!(Instant::now() < deadline, "{}", envoy.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn slow_token_endpoint_waits_within_the_bound_and_fails_past_it() {
    let (standin, envoy) = start(
        StandInConfig::default(),
        json!({"token_wait_timeout_ms": 1500}),
        1,
    )
    .await;
    let http = client();
    // Slower than the bound: a clean 503, not a hang.
    standin.push_fault(
        EndpointKind::Token,
        Fault::Delay(Duration::from_millis(3000)),
        1,
    );
    let started = Instant::now();
    let (status, body) = chat(&http, &envoy).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "backend_token_timeout");
    assert!(started.elapsed() < Duration::from_millis(2900));
    // Slow but within the bound: the request waits and goes through (the first, slow fetch
    // finishes in the meantime and its token is used).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let (status, _) = chat(&http, &envoy).await;
    assert_eq!(status, 200, "{}", envoy.logs());
    assert_eq!(standin.count(EndpointKind::Token), 1);
}

#[tokio::test]
async fn token_endpoint_dropping_the_connection_is_survived() {
    let (standin, envoy) = start(StandInConfig::default(), json!({}), 1).await;
    standin.push_fault(EndpointKind::Token, Fault::DropConnection, 1);
    let http = client();
    let (status, _) = chat(&http, &envoy).await;
    assert_eq!(status, 503);
    let deadline = Instant::now() + Duration::from_secs(10);
    while chat(&http, &envoy).await.0 != 200 {
        assert!(Instant::now() < deadline, "{}", envoy.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(standin.count(EndpointKind::Token) >= 2);
}
